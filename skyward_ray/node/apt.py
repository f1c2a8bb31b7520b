"""Debian packages on a node, as one shell command that is safe on a cloud's first boot.

Why not a plain `apt-get update && apt-get install`:

- On a fresh Ubuntu machine (the AWS Deep Learning AMIs among them) unattended-upgrades and
  apt-daily hold the dpkg and package-list locks for minutes after the first boot; a plain apt-get
  fails at once with "Could not get lock". So every apt-get waits for the dpkg lock
  (`-o DPkg::Lock::Timeout=...`, apt >= 1.9.11), and an `apt-get update` refused for a lock (the
  package lists' lock, which that option does not cover on every apt) is retried until the same
  deadline; any other failure is reported at once.
- A machine whose image already holds the packages (a baked image; the Container provider's
  nodes, which have no Internet) must not touch the network at all: packages `dpkg-query` reports
  installed are skipped, and with none missing apt-get never runs.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

LOCK_TIMEOUT_S = 300  # how long apt waits for unattended-upgrades to release its locks
FUNCTION = "skyward_apt_install"  # the shell function `function_lines` defines
_APT = f"apt-get -o DPkg::Lock::Timeout={LOCK_TIMEOUT_S} -qq"


def function_lines() -> list[str]:
    """The shell function `skyward_apt_install PACKAGE...` (bash; safe under `set -u`): installs the
    packages that are not installed yet; status 0 when all are installed afterwards. Every name it
    sets starts with `_sk_apt`. Defined once per script; `install_command` calls it."""
    return [
        f"{FUNCTION}() {{",
        "  local _sk_apt_p _sk_apt_out _sk_apt_end _sk_apt_missing=()",
        '  for _sk_apt_p in "$@"; do',
        "    [ \"$(dpkg-query -W -f='${Status}' \"$_sk_apt_p\" 2>/dev/null)\" = 'install ok installed' ] || "
        '_sk_apt_missing+=("$_sk_apt_p")',
        "  done",
        '  [ "${#_sk_apt_missing[@]}" -eq 0 ] && return 0',
        f"  _sk_apt_end=$((SECONDS + {LOCK_TIMEOUT_S}))",
        f'  until _sk_apt_out="$({_APT} update 2>&1)"; do',
        '    case "$_sk_apt_out" in *lock*) [ "$SECONDS" -lt "$_sk_apt_end" ] || break ;; *) break ;; esac',
        "    echo 'skyward: the package lists are locked (unattended-upgrades on a first boot?); waiting'; sleep 5",
        "  done",
        '  [ -z "$_sk_apt_out" ] || printf "%s\\n" "$_sk_apt_out"',
        f'  DEBIAN_FRONTEND=noninteractive {_APT} install -y "${{_sk_apt_missing[@]}}"',
        "}",
    ]


def install_command(packages: Sequence[str]) -> str:
    """The call installing `packages` (shell-quoted) through the function `function_lines` defines."""
    return " ".join([FUNCTION, *(shlex.quote(p) for p in packages)])


__all__ = ["FUNCTION", "LOCK_TIMEOUT_S", "function_lines", "install_command"]
