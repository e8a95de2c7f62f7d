"""Thin iproute2 wrappers for the lab. Every call names its namespace; none touches the root
namespace's routes, rules, addresses or links (veths are created directly inside namespaces).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")


class NetnsError(Exception):
    """An iproute2 command failed; the message is its one-line stderr."""


def run(
    argv: Sequence[str], *, stdin: str | None = None, check: bool = True, timeout_s: float = 30.0
) -> subprocess.CompletedProcess:
    """Run `argv`; raise NetnsError with the command and its stderr when it fails and `check`."""
    proc = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, timeout=timeout_s
    )
    if check and proc.returncode != 0:
        err = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        errors = [line for line in err if "Error" in line] or err[-1:] or ["failed"]
        raise NetnsError(f"{' '.join(argv[:6])}: {errors[0].strip()}")
    return proc


def list_namespaces(prefix: str) -> list[str]:
    """Names of the namespaces whose name starts with `prefix`."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def add_namespace(name: str) -> None:
    run(["ip", "netns", "add", name])


def delete_namespace(name: str) -> None:
    """Delete namespace `name` (its veths go with it); no error when it is already gone."""
    run(["ip", "netns", "del", name], check=False)


def batch(namespace: str | None, commands: Sequence[str], *, force: bool = False) -> None:
    """Run iproute2 `commands` (one per line, without the leading `ip`) in one process."""
    if not commands:
        return
    argv = ["ip"] + (["-n", namespace] if namespace else []) + (["-force"] if force else [])
    run([*argv, "-batch", "-"], stdin="\n".join(commands) + "\n")


def exec_argv(namespace: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv]


def link_state(namespace: str) -> list[dict]:
    """`ip -j link` of `namespace` (empty when the namespace is gone)."""
    import json

    proc = run(["ip", "-n", namespace, "-j", "link", "show"], check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    return json.loads(proc.stdout)
