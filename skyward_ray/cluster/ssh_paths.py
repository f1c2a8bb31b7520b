"""Paths as the ssh client is given them: quoted ssh_config values, and the private directory of a
tunnel's Unix sockets.

Why: ssh reads `-o Option=value` like a line of ssh_config, where a space splits the value, `%`
starts a token (`%h` is the host) and `${NAME}` an environment variable. A key directory with a
space or a `%` in its path (macOS's "Application Support", a user's choice) would silently point
host-key pinning at another file. Quoting covers spaces and `%`; what cannot be quoted is refused.
"""

from __future__ import annotations

import re
import shutil
import stat
import tempfile
import weakref
from pathlib import Path

__all__ = ["config_path", "is_socket", "private_socket_dir"]

_UNQUOTABLE = re.compile(r'["\\\x00-\x1f\x7f]|\$\{')
_PLAIN_DIR = re.compile(r"/[A-Za-z0-9/._-]{0,80}")  # nothing ssh would expand, short enough for a socket path


def config_path(path: str | Path) -> str:
    """`path` as an ssh_config value: `%` doubled (a literal %), in double quotes (spaces kept).
    A double quote, backslash, control character or `${` cannot be written safely: ValueError."""
    text = str(path)
    if _UNQUOTABLE.search(text):
        raise ValueError(f"SSH tunnel path {text!r} holds a character ssh cannot be given safely"
                         ' (a double quote, a backslash, a control character or "${")')
    return '"' + text.replace("%", "%%") + '"'


def private_socket_dir(owner: object) -> Path:
    """A new 0700 directory for `owner`'s Unix sockets, removed when `owner` is collected (or by
    the caller). In the temp dir when its path is plain and short (a Unix socket's path has room
    for ~107 bytes, and ssh expands `%` in socket paths), else in /tmp."""
    base = tempfile.gettempdir()
    directory = Path(tempfile.mkdtemp(prefix="skyward-ssh-", dir=base if _PLAIN_DIR.fullmatch(base) else "/tmp"))
    weakref.finalize(owner, shutil.rmtree, directory, ignore_errors=True)
    return directory


def is_socket(path: Path) -> bool:
    """Whether `path` exists and is a Unix socket."""
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False
