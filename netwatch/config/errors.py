"""Config errors: every problem as `FILE:LINE: dotted.path: message`. Pure.

`Problem` is one finding, `ConfigError` carries all of a file's; `Loc` is a key's path in
the document and `dotted` prints it the way the messages do (`controller.upstreams[2].asn`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """A site file (or a file it refers to) is unusable. `problems` lists every one found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    @property
    def errors(self) -> list[str]:
        return [str(p) for p in self.problems]

    @property
    def missing(self) -> bool:
        """Every problem is a file that does not exist (exit 66, not 65)."""
        return all(p.message == "no such file" for p in self.problems)


Loc = tuple[str | int, ...]


def dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


