"""Getting the pinned `uv` onto a node that may have nothing: one shell function for the boot script.

`uv` gives every node the driver's exact Python and Ray, so it is the first thing a node needs,
and cloud images differ in what they offer to get it: the AWS Deep Learning AMI documents
`python3` but not pip; Vast.ai's `ubuntu:22.04` has neither python3 nor curl. So, in order:

1. a `uv` already on PATH (an image with uv; a machine that booted before);
2. `python3 -m pip`, where it works (an image with pip; PEP 668 images need
   `--break-system-packages`);
3. the uv wheel itself from PyPI (`files.pythonhosted.org`), pinned by URL *and* sha256 (taken from
   https://pypi.org/pypi/uv/json for `UV_VERSION`), checked with `sha256sum` before anything in it
   runs, downloaded with curl or python3's urllib and unpacked with unzip or `python3 -m zipfile`;
   where the image has no way to download or unpack, `curl ca-certificates unzip` come from apt
   first (`skyward_ray.node.apt`).

The binary lands in `$HOME/.local/bin` (on the script's PATH), as pip's `--user` install would.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from skyward_ray.node import apt

UV_VERSION = "0.13.9"  # pinned: the tool that gives every node the driver's exact Python and Ray
FUNCTION = "skyward_install_uv"  # the shell function `function_lines` defines
BIN_DIR = "$HOME/.local/bin"


@dataclass(frozen=True)
class Wheel:
    """One platform's uv wheel on PyPI: where it is and the sha256 PyPI publishes for it."""

    url: str
    sha256: str


_FILES = "https://files.pythonhosted.org/packages"
# `uname -m` → the manylinux wheel of UV_VERSION for it (glibc >= 2.17: every Ubuntu a cloud offers)
WHEELS: Mapping[str, Wheel] = {
    "x86_64": Wheel(f"{_FILES}/3d/aa/26d64642d808de4a652579ef950d7cd2d37f080a8babf9c67c6b75fc4c3f/"
                    f"uv-{UV_VERSION}-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                    "d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19"),
    "aarch64": Wheel(f"{_FILES}/57/15/94b6cd62ac3ff6550288328e8035288875197cbc183f51554b266a69877b/"
                     f"uv-{UV_VERSION}-py3-none-manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64.whl",
                     "5435c5ce14a56431208ca0996416d310f1598e8c2c8ba707688985a16bb82dbe"),
}
_ALIASES = {"x86_64": "x86_64|amd64", "aarch64": "aarch64|arm64"}
_DOWNLOAD_PY = "import sys, urllib.request as u; u.urlretrieve(sys.argv[1], sys.argv[2])"


def function_lines(version: str = UV_VERSION, wheels: Mapping[str, Wheel] = WHEELS) -> list[str]:
    """The shell function `skyward_install_uv` (status 0: `uv` is on PATH afterwards). Safe under
    `set -u`; every name it sets starts with `_sk_uv`. It calls `skyward_ray.node.apt`'s function,
    which the script defines too. `wheels` is for tests (a wheel of their own)."""
    pip_spec = shlex.quote(f"uv=={version}")
    member = f"uv-{version}.data/scripts/uv"
    arches = [f"    {_ALIASES.get(arch, arch)}) _sk_uv_url={shlex.quote(w.url)}; _sk_uv_sum={w.sha256} ;;"
              for arch, w in wheels.items()]
    have = "command -v {} >/dev/null 2>&1".format
    return [
        f"{FUNCTION}() {{",
        f"  {have('uv')} && return 0",
        f'  mkdir -p "{BIN_DIR}"',
        "  if python3 -m pip --version >/dev/null 2>&1; then",
        f"    python3 -m pip install -q --user {pip_spec} || python3 -m pip install -q --user --break-system-packages {pip_spec}",
        f"    {have('uv')} && return 0",
        "  fi",
        '  case "$(uname -m)" in',
        *arches,
        "    *) echo \"skyward: no pinned uv wheel for $(uname -m)\"; return 1 ;;",
        "  esac",
        f"  if ! {{ {have('curl')} || {have('python3')}; }} || ! {{ {have('unzip')} || {have('python3')}; }}; then",
        "    " + apt.install_command(["curl", "ca-certificates", "unzip"]) + " || return 1",
        "  fi",
        '  _sk_uv_dir="$(mktemp -d)" || return 1',
        f"  if {have('curl')}; then",
        '    curl -fsSL --retry 5 --connect-timeout 20 -m 900 -o "$_sk_uv_dir/uv.whl" "$_sk_uv_url" || return 1',
        f'  else python3 -c {shlex.quote(_DOWNLOAD_PY)} "$_sk_uv_url" "$_sk_uv_dir/uv.whl" || return 1',
        "  fi",
        '  echo "$_sk_uv_sum  $_sk_uv_dir/uv.whl" | sha256sum -c --status || '
        '{ echo "skyward: the uv wheel from $_sk_uv_url does not have the pinned sha256; not used"; return 1; }',
        f"  if {have('unzip')}; then unzip -q -o \"$_sk_uv_dir/uv.whl\" {shlex.quote(member)} -d \"$_sk_uv_dir\" || return 1",
        '  else python3 -m zipfile -e "$_sk_uv_dir/uv.whl" "$_sk_uv_dir" || return 1',
        "  fi",
        f'  install -m 755 "$_sk_uv_dir/{member}" "{BIN_DIR}/uv" && rm -rf "$_sk_uv_dir"',
        "}",
    ]


__all__ = ["BIN_DIR", "FUNCTION", "UV_VERSION", "WHEELS", "Wheel", "function_lines"]
