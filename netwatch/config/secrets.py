"""The TCP-MD5 passwords a site file points at (`upstreams[].md5_password_file`).

The site file holds only the path; the secret is read here, when the ExaBGP configuration is
rendered (`netwatch exabgp-config`, the lab), and nowhere else. The only I/O is opening and
reading the files it checks (like the loader's), and `write_private` for a file that will
hold a secret (ExaBGP's rendered config, the lab's password files). Rules, each refused with
`FILE:LINE: controller.upstreams[N].md5_password_file: 'PATH' ...` and never with the secret:

* the path is relative to the site file's directory (or absolute);
* the file is a regular file owned by root or by the user rendering the config, with no
  permission for group or others (`chmod 600`): the secret ends up in ExaBGP's config, which
  is written 0600 too;
* its content is the password, one trailing newline allowed; 1 to 80 characters of printable
  ASCII without space, quote or backslash. ExaBGP 5.0.15 has no password file and no include:
  the password goes into its config between double quotes, where a quote ends or switches
  the string, a backslash starts an escape and the key is sent as ASCII; Linux and ExaBGP
  take at most 80 bytes (TCP_MD5SIG_MAXKEYLEN).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from netwatch.config.errors import ConfigError, Problem, dotted
from netwatch.config.schema import Site
from netwatch.config.yamldoc import read_yaml

MAX_PASSWORD_CHARS = 80
MAX_FILE_BYTES = 4096  # a password file is one short line; anything bigger is a wrong path
# `\Z`, not `$`: `$` also matches before a final newline.
_PASSWORD = re.compile(r"\A[!#-&(-\[\]-~]{1,80}\Z")  # 0x21-0x7e without " ' \


def check_md5_password(value: str) -> str:
    """`value` if it can go into ExaBGP's config (and BIRD's) as a quoted password.

    Raises ValueError with a message that never contains the password."""
    if not value:
        raise ValueError("the password is empty")
    if len(value) > MAX_PASSWORD_CHARS:
        raise ValueError(
            f"the password is longer than {MAX_PASSWORD_CHARS} characters (the most ExaBGP "
            "and Linux TCP-MD5 take)"
        )
    if not _PASSWORD.match(value):
        raise ValueError(
            "the password has a character the ExaBGP config cannot carry (a space, a quote, "
            "a backslash, a control or a non-ASCII character): use printable ASCII without those"
        )
    return value


def password_path(site_file: str | Path, configured: str) -> Path:
    """Where `md5_password_file: configured` of the site file `site_file` points."""
    return Path(site_file).parent / configured


def read_password(path: Path) -> str:
    """The password in `path`, checked. Raises ValueError (a message naming `path`, never the
    secret)."""
    shown = f"'{path}'"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ValueError(f"{shown} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{shown} cannot be opened: {exc.strerror}") from None
    try:
        # Checked on the open file, not the name: no swap between the check and the read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{shown} is not a regular file")
        if info.st_uid not in (0, os.geteuid()):
            raise ValueError(
                f"{shown} is owned by uid {info.st_uid}: it must be owned by root (or by the "
                "user rendering the config)"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ValueError(
                f"{shown} has mode {mode:04o}: group and others must have no access to a "
                f"password (chmod 600 {path})"
            )
        raw = os.read(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(f"{shown} is not a password file (over {MAX_FILE_BYTES} bytes)")
    text = raw.decode("latin-1")
    text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    try:
        return check_md5_password(text)
    except ValueError as exc:
        raise ValueError(f"{shown}: {exc}") from None


def read_md5_passwords(site_file: str | Path, site: Site) -> dict[str, str]:
    """{upstream name: password} for every upstream of `site` (loaded from `site_file`) that
    has `md5_password_file`. Raises ConfigError listing every unusable file."""
    if site.controller is None:
        return {}
    wanted = [
        (i, u) for i, u in enumerate(site.controller.upstreams) if u.md5_password_file is not None
    ]
    if not wanted:
        return {}
    doc = read_yaml(Path(site_file), str(site_file))
    passwords, problems = {}, []
    for i, upstream in wanted:
        loc = ("controller", "upstreams", i, "md5_password_file")
        try:
            passwords[upstream.name] = read_password(
                password_path(site_file, upstream.md5_password_file)
            )
        except ValueError as exc:
            problems.append(Problem(doc.file, doc.line(loc), dotted(loc), str(exc)))
    if problems:
        raise ConfigError(problems)
    return passwords


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only: a new file created 0600 beside it
    (the mode is never loosened or tightened after the fact, so no moment exists where the
    secret is readable by others), fsynced, renamed over `path`. Raises OSError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
