"""YAML with positions: the line of every key, duplicate keys found. Pure but for the read.

`read_yaml(path, shown)` parses one file with PyYAML's safe loader and records where each key
and list item starts, so every later error can name its line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from netwatch.config.errors import ConfigError, Loc, Problem, dotted


@dataclass
class Document:
    file: str
    data: Any
    lines: dict[Loc, int]  # where each key (or list item) starts, 1-based
    duplicates: list[Problem]

    def line(self, loc: Loc) -> int | None:
        """The line of `loc`, or of its nearest ancestor that the file has."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


def read_yaml(path: Path, shown: str) -> Document:
    """Parse one YAML file, recording the line of every key. Raises ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(shown, None, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError([Problem(shown, None, "", f"cannot read: {reason}")]) from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        message = f"YAML syntax error: {exc.problem or exc.context}"
        raise ConfigError([Problem(shown, line, "", message)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(shown, None, "", f"YAML error: {exc}")]) from None
    if data is None:
        raise ConfigError([Problem(shown, None, "", "the file is empty")])
    if not isinstance(data, dict):
        line = node.start_mark.line + 1
        kind = type(data).__name__
        raise ConfigError([Problem(shown, line, "", f"expected a mapping of keys, got a {kind}")])
    lines: dict[Loc, int] = {}
    duplicates: list[Problem] = []
    _index_lines(node, (), lines, duplicates, shown)
    return Document(shown, data, lines, duplicates)


def _index_lines(node: yaml.Node, loc: Loc, lines: dict, duplicates: list, shown: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            key = key_node.value
            here = (*loc, key)
            if key in seen:
                duplicates.append(
                    Problem(shown, key_node.start_mark.line + 1, dotted(here), "duplicate key")
                )
            seen.add(key)
            lines[here] = key_node.start_mark.line + 1
            _index_lines(value_node, here, lines, duplicates, shown)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*loc, index)] = item.start_mark.line + 1
            _index_lines(item, (*loc, index), lines, duplicates, shown)
