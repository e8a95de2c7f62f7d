"""A device's output judged by regex or TextFSM-parsed fields. No network I/O.

`judge(check, output, device_type)` answers a device check (`netwatch.playbook.plan.
CheckDevice`) on the output its command gave: `(ok, findings)`, the findings being the lines
the trail and the operator see ("row neighbor=100.64.97.2: state_pfxrcd 'Idle (Admin)'
matches /Idle\\ \\(Admin\\)/").

TextFSM templates come from the playbook (a file beside it) or from ntc-templates, looked up
by device type and command the way netmiko's `use_textfsm` does. Field names are compared
case-insensitively: ntc-templates' `parse_output` lower-cases them, a template file's
are as written.
"""

from __future__ import annotations

import io
import re
from typing import Any

from netwatch.playbook.plan import CheckDevice, TextFsmCheck


def parse(output: str, device_type: str, command: str, template: str | None) -> list[dict]:
    """The rows TextFSM parses out of `output` (keys lower-cased). Raises ValueError when no
    template fits or the template rejects the output."""
    import textfsm  # netmiko's dependency, imported only for a textfsm check

    try:
        if template is not None:
            with open(template, encoding="utf-8") as handle:
                fsm = textfsm.TextFSM(io.StringIO(handle.read()))
            rows = fsm.ParseTextToDicts(output)
        else:
            from ntc_templates.parse import parse_output

            rows = parse_output(platform=device_type, command=command, data=output)
    except OSError as exc:
        raise ValueError(f"TextFSM template {template}: {exc.strerror or exc}") from None
    except Exception as exc:  # textfsm and ntc-templates raise their own error classes
        raise ValueError(f"TextFSM could not parse the output: {exc}") from None
    return [{str(k).lower(): v for k, v in row.items()} for row in rows]


def _field(row: dict, name: str) -> Any:
    return row.get(name.lower())


def judge(check: CheckDevice, output: str, device_type: str) -> tuple[bool, list[str]]:
    """Whether `output` passes `check`'s match, no_match and textfsm tests, and why."""
    ok, findings = True, []
    if check.match is not None:
        hit = re.search(check.match, output, re.MULTILINE)
        ok = ok and hit is not None
        findings.append(f"/{check.match}/ " + (f"matched {hit.group(0)!r}" if hit else
                                              "did not match"))
    if check.no_match is not None:
        hit = re.search(check.no_match, output, re.MULTILINE)
        ok = ok and hit is None
        findings.append(f"/{check.no_match}/ " + (f"matched {hit.group(0)!r} (must not)" if hit
                                                 else "absent, as it must be"))
    if check.textfsm is not None:
        fsm_ok, fsm_findings = _judge_rows(check.textfsm, output, device_type, check.command)
        ok = ok and fsm_ok
        findings += fsm_findings
    return ok, findings


def _judge_rows(t: TextFsmCheck, output: str, device_type: str,
                command: str) -> tuple[bool, list[str]]:
    try:
        rows = parse(output, device_type, command, t.template)
    except ValueError as exc:
        return False, [str(exc)]
    chosen = [r for r in rows if all(str(_field(r, k)) == v for k, v in t.where.items())]
    where = " ".join(f"{k}={v}" for k, v in t.where.items())
    findings = [f"TextFSM: {len(rows)} row(s), {len(chosen)} where {where or '(any)'}"]
    ok = len(chosen) >= t.min_rows
    if not ok:
        findings.append(f"want at least {t.min_rows} such row(s)")
    for row in chosen:
        label = " ".join(f"{k}={_field(row, k)}" for k in t.where) or "row"
        for name, pattern in t.expect.items():
            value = _field(row, name)
            good = value is not None and re.search(pattern, str(value)) is not None
            ok = ok and good
            findings.append(f"{label}: {name} {value!r} "
                            + ("matches" if good else "does not match") + f" /{pattern}/")
    return ok, findings
