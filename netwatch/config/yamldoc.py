"""YAML with positions: the line of every key, duplicate keys found. Pure but for the read.

`read_yaml(path, shown)` parses one file with PyYAML's safe loader and records where each key
and list item starts, so every later error can name its line.

Hostile files get a ConfigError within a second, never a traceback: a file over MAX_BYTES, an
alias that refers to the node it is inside (recursive: PyYAML builds a cycle that everything
walking the data would follow forever), a document that aliases expand beyond MAX_NODES nodes
(a 389-byte "billion laughs" expands to 10^9: the line index and the schema walk every copy),
and a value PyYAML cannot build (an integer of more than 4,300 digits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from netwatch.config.errors import ConfigError, Loc, Problem, dotted

MAX_BYTES = 1024 * 1024  # a site file is a few kB; targets catalogues a few hundred
MAX_NODES = 100_000  # nodes after alias expansion; the largest shipped file has ~300


class _Refused(Exception):
    def __init__(self, line: int | None, message: str):
        self.line, self.message = line, message


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses an alias to a node still being composed (an
    ancestor: a recursive structure)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._open: set[str] = set()

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if event.anchor in self._open:
                raise _Refused(event.start_mark.line + 1,
                               f"alias *{event.anchor} refers to a node it is inside (recursive)")
        return super().compose_node(parent, index)

    def compose_sequence_node(self, anchor):
        return self._composing(anchor, super().compose_sequence_node)

    def compose_mapping_node(self, anchor):
        return self._composing(anchor, super().compose_mapping_node)

    def _composing(self, anchor, compose):
        if anchor is None:
            return compose(anchor)
        self._open.add(anchor)
        try:
            return compose(anchor)
        finally:
            self._open.discard(anchor)


def _expanded_size(root: yaml.Node) -> int:
    """Nodes in the document once every alias is expanded (each shared node counted as often
    as it is reached), computed once per distinct node."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(item) for item in node.value)
        else:
            total = 1
        sizes[id(node)] = total
        return total

    return size(root)


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
        with open(path, "rb") as handle:  # at most MAX_BYTES + 1: a FIFO or /dev/zero too
            raw = handle.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise ConfigError([Problem(shown, None, "", f"larger than {MAX_BYTES} bytes")])
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(shown, None, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError([Problem(shown, None, "", f"cannot read: {reason}")]) from None
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is not None and _expanded_size(node) > MAX_NODES:
                raise _Refused(None, f"aliases expand the document beyond {MAX_NODES} nodes")
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except _Refused as exc:
        raise ConfigError([Problem(shown, exc.line, "", exc.message)]) from None
    except (ValueError, OverflowError, RecursionError) as exc:  # a value PyYAML cannot build
        raise ConfigError([Problem(shown, None, "", f"a value cannot be read: {exc}")]) from None
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
