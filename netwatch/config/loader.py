"""Loading a site file: YAML with positions, the schema, the checks across fields.

`load_site(path)` reads one YAML file (and the target catalogue it may point at) and returns
a validated, immutable `Site`, or raises `ConfigError` carrying *every* problem found, each
as `FILE:LINE: dotted.path: message`. The only I/O is reading the files it validates.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from netwatch.config.checks import cross_checks, probe_checks
from netwatch.config.errors import ConfigError, Problem, dotted
from netwatch.config.messages import problems_from
from netwatch.config.schema import Site, Target, TargetCatalogue
from netwatch.config.yamldoc import Document, read_yaml


def load_site(path: str | Path) -> Site:
    """Load and validate a site file. Raises ConfigError listing every problem found."""
    path = Path(path)
    doc = read_yaml(path, str(path))
    problems = list(doc.duplicates)
    try:
        site = Site.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(problems + problems_from(exc, doc, Site)) from None
    problems += [
        Problem(doc.file, doc.line(loc), dotted(loc), msg) for loc, msg in cross_checks(site)
    ]
    if problems:
        raise ConfigError(problems)
    ctl = site.controller
    if ctl is not None and ctl.probe.targets_file is not None:
        targets = _load_targets(
            path.parent / ctl.probe.targets_file, doc, need_port=ctl.probe.method == "tcp"
        )
        probe = ctl.probe.model_copy(update={"targets": targets})
        site = site.model_copy(update={"controller": ctl.model_copy(update={"probe": probe})})
    problems = [
        Problem(doc.file, doc.line(loc), dotted(loc), msg) for loc, msg in probe_checks(site)
    ]
    if problems:
        raise ConfigError(problems)
    return site


def _load_targets(path: Path, site_doc: Document, need_port: bool = False) -> list[Target]:
    loc = ("controller", "probe", "targets_file")
    try:
        doc = read_yaml(path, str(path))
    except ConfigError as exc:
        if exc.problems[0].message == "no such file":
            raise ConfigError(
                [
                    Problem(
                        site_doc.file, site_doc.line(loc), dotted(loc), f"'{path}' does not exist"
                    )
                ]
            ) from None
        raise
    try:
        catalogue = TargetCatalogue.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(doc.duplicates + problems_from(exc, doc, TargetCatalogue)) from None
    if doc.duplicates:
        raise ConfigError(doc.duplicates)
    if not catalogue.targets:
        raise ConfigError(
            [Problem(doc.file, doc.line(("targets",)), "targets", "must not be empty")]
        )
    if need_port:
        missing = [i for i, target in enumerate(catalogue.targets) if target.port is None]
        problems = [
            Problem(
                doc.file,
                doc.line(("targets", i)),
                f"targets[{i}].port",
                "required when controller.probe.method is tcp",
            )
            for i in missing
        ]
        if problems:
            raise ConfigError(problems)
    return catalogue.targets


def load_targets(path: str | Path) -> list[Target]:
    """Load a target catalogue on its own (`netwatch config validate` on probes/targets/*)."""
    return _load_targets(Path(path), Document(str(path), {}, {}, []))
