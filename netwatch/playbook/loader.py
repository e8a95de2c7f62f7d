"""Playbook and inventory files: read, validated, every problem as `FILE:LINE: path: message`;
and where the shipped playbooks are.

`load_playbook(path)` returns a `PlaybookFile` or raises `netwatch.config.ConfigError` with
every problem found (the schema's, and the checks across fields: each placeholder names a
declared parameter, `on_failure: rollback` has rollback steps to run, a rollback step does not
roll back, the name is the file's, a TextFSM template file exists). `load_inventory(path)`
does the same for an inventory, with its file paths made absolute.

The shipped playbooks (`playbooks/` in the repository) are found by `shipped_dir()`: beside
the code in a checkout, else where the wheel installed them (`share/netwatch/playbooks`, see
pyproject.toml). The only I/O is reading the files.
"""

from __future__ import annotations

import difflib
import importlib.metadata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from netwatch.config.errors import ConfigError, Loc, Problem, dotted
from netwatch.config.messages import problems_from
from netwatch.config.yamldoc import Document, read_yaml
from netwatch.playbook import template
from netwatch.playbook.inventory import Inventory, resolve_paths
from netwatch.playbook.schema import Playbook

_NOT_TEMPLATED = ("name", "description", "params", "alerts")
SHARE = "share/netwatch/playbooks"  # where a wheel installs them, under its data prefix


@dataclass(frozen=True)
class PlaybookFile:
    """A valid playbook and the file it came from (TextFSM templates are relative to it)."""

    path: Path
    playbook: Playbook
    lines: Mapping[Loc, int] = field(default_factory=dict)  # the line of each key in the file

    @property
    def name(self) -> str:
        return self.playbook.name

    def where(self, loc: Loc) -> str:
        """`FILE:LINE` of `loc` (or of its nearest ancestor in the file), for messages."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return f"{self.path}:{self.lines[loc[:end]]}"
        return str(self.path)


def load_playbook(path: str | Path) -> PlaybookFile:
    """The playbook in `path`. Raises ConfigError listing every problem."""
    path = Path(path)
    doc = read_yaml(path, str(path))
    problems = list(doc.duplicates) + _placeholder_problems(doc) + _shape_problems(doc, path)
    try:
        playbook = Playbook.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(problems + problems_from(exc, doc, Playbook)) from None
    problems += _template_file_problems(playbook, doc, path)
    if problems:
        raise ConfigError(problems)
    return PlaybookFile(path, playbook, doc.lines)


def _problem(doc: Document, loc: Loc, message: str) -> Problem:
    return Problem(doc.file, doc.line(loc), dotted(loc), message)


def _strings(data: Any, loc: Loc):
    """(loc, text) for every string value under `data`."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _strings(value, (*loc, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _strings(value, (*loc, index))
    elif isinstance(data, str):
        yield loc, data


def _placeholder_problems(doc: Document) -> list[Problem]:
    params = doc.data.get("params")
    declared = list(params) if isinstance(params, dict) else []
    problems = []
    for key, value in doc.data.items():
        if key in _NOT_TEMPLATED:
            continue
        for loc, text in _strings(value, (key,)):
            try:
                names = template.references(text)
            except ValueError:
                continue  # the schema reports a malformed placeholder
            for name in names:
                if name in declared:
                    continue
                hint = difflib.get_close_matches(name, declared, n=1, cutoff=0.6)
                known = f"did you mean {hint[0]}?" if hint else (
                    f"declared: {', '.join(declared)}" if declared else "no params declared")
                message = f"{{{{ {name} }}}}: no such parameter ({known})"
                problems.append(_problem(doc, loc, message))
    return problems


def _shape_problems(doc: Document, path: Path) -> list[Problem]:
    data = doc.data
    problems = []
    name = data.get("name")
    if isinstance(name, str) and name != path.stem:
        problems.append(_problem(doc, ("name",), f"{name!r} differs from the file's name "
                                                 f"{path.stem!r} (playbooks are found by it)"))
    rollback = data.get("rollback")
    has_rollback = isinstance(rollback, list) and bool(rollback)
    for section in ("steps", "rollback"):
        steps = data.get(section)
        if not isinstance(steps, list):
            continue
        for index, step in enumerate(steps):
            if not isinstance(step, dict) or step.get("on_failure") != "rollback":
                continue
            loc = (section, index, "on_failure")
            if section == "rollback":
                problems.append(_problem(doc, loc, "a rollback step cannot roll back: "
                                                   "abort or continue"))
            elif not has_rollback:
                problems.append(_problem(doc, loc, "rollback, but the playbook has no "
                                                   "rollback steps"))
    return problems


def _template_file_problems(playbook: Playbook, doc: Document, path: Path) -> list[Problem]:
    problems = []
    for section in ("steps", "rollback"):
        for index, step in enumerate(getattr(playbook, section)):
            fsm = step.check.textfsm if step.check is not None else None
            if fsm is None or fsm.template is None or "{{" in fsm.template:
                continue
            if not (path.parent / fsm.template).is_file():
                loc = (section, index, "check", "textfsm", "template")
                problems.append(_problem(doc, loc, f"{fsm.template!r}: no such file "
                                                   f"(relative to {path.parent})"))
    return problems


def load_inventory(path: str | Path) -> Inventory:
    """The inventory in `path`, with relative file paths made absolute against its
    directory. Raises ConfigError listing every problem."""
    path = Path(path)
    doc = read_yaml(path, str(path))
    try:
        inventory = Inventory.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(doc.duplicates + problems_from(exc, doc, Inventory)) from None
    if doc.duplicates:
        raise ConfigError(doc.duplicates)
    base = path.resolve().parent
    devices = {name: resolve_paths(d, base) for name, d in inventory.devices.items()}
    return inventory.model_copy(update={"devices": devices})


# --- finding playbooks ------------------------------------------------------------------------


def shipped_dir() -> Path | None:
    """The shipped playbooks: the checkout's `playbooks/` when netwatch runs from one, else
    the copy a wheel installed; None when neither exists."""
    checkout = Path(__file__).resolve().parents[2] / "playbooks"
    if (checkout / "drain-upstream.yaml").is_file():
        return checkout
    try:
        files = importlib.metadata.distribution("netwatch").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return installed_dir(files)


def installed_dir(files: Iterable[Any]) -> Path | None:
    """Where a wheel put the playbooks, from its installed files (importlib.metadata's
    PackagePath entries: `as_posix()` relative to site-packages, `locate()` absolute)."""
    for entry in files:
        if entry.as_posix().endswith(f"{SHARE}/drain-upstream.yaml"):
            return Path(entry.locate()).resolve().parent
    return None


def playbook_files(directory: Path) -> list[Path]:
    """Every playbook file under `directory` (recursively; `inventory*.yaml` are not)."""
    return sorted(
        p for p in directory.rglob("*.yaml")
        if p.is_file() and not p.name.startswith("inventory")
    )


def find_playbook(name: str, directory: Path | None) -> Path:
    """The file of playbook `name` in `directory`, or `name` itself when it is a path to a
    file. Raises LookupError listing close names."""
    as_path = Path(name)
    if name.endswith((".yaml", ".yml")) or "/" in name:
        if as_path.is_file():
            return as_path
        raise LookupError(f"{name}: no such file")
    if directory is None:
        raise LookupError(f"no playbook directory (give --playbooks DIR) to find {name!r} in")
    files = {p.stem: p for p in playbook_files(directory)}
    if name in files:
        return files[name]
    hint = difflib.get_close_matches(name, list(files), n=3, cutoff=0.5)
    more = f" (did you mean: {', '.join(hint)}?)" if hint else ""
    raise LookupError(f"no playbook {name!r} in {directory}{more}")
