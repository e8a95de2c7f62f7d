"""Command groups of the `netwatch` CLI, one module each, and what they share."""

from __future__ import annotations

from pathlib import Path

from netwatch import exitcodes
from netwatch.config import ConfigError, Site, load_site


class CommandError(Exception):
    """A problem the user can fix: `netwatch.cli.main` prints the message (one or more lines)
    on stderr and exits with `exit_code`, a netwatch.exitcodes value. No traceback."""

    def __init__(self, message: str, exit_code: int = exitcodes.FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


def site_or_fail(path: str | Path, needs: str | None = None) -> Site:
    """The validated site file at `path`, with section `needs` ("agent", "controller") present.

    Raises CommandError listing every problem (exit 65, or 66 when the file is missing).
    """
    try:
        site = load_site(path)
    except ConfigError as exc:
        missing = all(p.message == "no such file" for p in exc.problems)
        raise CommandError(
            "\n".join(exc.errors), exitcodes.NOINPUT if missing else exitcodes.DATAERR
        ) from None
    if needs is not None and getattr(site, needs) is None:
        raise CommandError(f"{path}: no `{needs}` section", exitcodes.DATAERR)
    return site
