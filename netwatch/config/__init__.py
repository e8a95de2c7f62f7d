"""The site file: a strict, typed schema with errors that name file, line and field. Pure.

`load_site(path)` returns a validated, immutable `Site` or raises `ConfigError` with every
problem found, each as `FILE:LINE: dotted.path: message`. Modules: `schema` (the models),
`yamldoc` (YAML with the line of every key), `errors` (problems and their messages), `checks`
(rules across fields), `loader` (the entry points).
"""

from netwatch.config.errors import ConfigError, Problem
from netwatch.config.loader import load_site, load_targets
from netwatch.config.schema import AgentSection, ControllerSection, Site, Target

__all__ = [
    "AgentSection",
    "ConfigError",
    "ControllerSection",
    "Problem",
    "Site",
    "Target",
    "load_site",
    "load_targets",
]
