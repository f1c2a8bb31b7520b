"""A python-build-standalone-shaped `install_only` tarball of the driver's own CPython.

GitHub (where uv downloads CPython from: python-build-standalone's releases) is unreachable from
this workplace, and a node needs the exact X.Y.Z the driver runs (Ray refuses a mismatch), so the
stand-in is made from the driver's interpreter, in the layout uv unpacks: `python/bin/python3.X`,
`python/lib/libpython3.X.so*`, `python/lib/python3.X/` (the standard library, no site-packages).
Like python-build-standalone's builds it is self-contained: the shared libraries its extension
modules link beyond glibc (OpenSSL, libffi, sqlite, zlib, ...) are copied into `python/lib`, and
every ELF file's RUNPATH is made `$ORIGIN`-relative with `patchelf`, so it runs on an image that
has none of them (a bare `ubuntu:22.04`-like one). Its release tag (`PBS_TAG`) is made up.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

from tests.siminternet import PBS_TAG

_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "__pycache__", "site-packages", "ensurepip"}
_SYSTEM_LIBS = ("libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "ld-linux", "linux-vdso",
                "libutil.so", "libcrypt.so")


def version() -> str:
    return "%d.%d.%d" % sys.version_info[:3]


def archive_name() -> str:
    return f"cpython-{version()}+{PBS_TAG}-x86_64-unknown-linux-gnu-install_only.tar.gz"


def build(target: Path) -> str:
    """Write the tarball to `target`; returns its sha256 (what the download list pins)."""
    prefix = Path(sys.base_prefix)
    short = "python%d.%d" % sys.version_info[:2]
    stdlib = Path(sysconfig.get_paths(vars={"base": str(prefix), "platbase": str(prefix)})["stdlib"])
    with tempfile.TemporaryDirectory(prefix="pbs-") as scratch:
        root = Path(scratch) / "python"
        (root / "bin").mkdir(parents=True)
        shutil.copy2(prefix / "bin" / short, root / "bin" / short)
        for link in ("python3", "python"):
            (root / "bin" / link).symlink_to(short)
        (root / "lib").mkdir()
        for library in prefix.joinpath("lib").glob("libpython*.so*"):
            shutil.copy2(library, root / "lib" / library.name, follow_symlinks=False)
        shutil.copytree(stdlib, root / "lib" / short, symlinks=True,
                        ignore=lambda d, names: [n for n in names if n in _SKIP or n.startswith("config-")])
        (root / "lib" / short / "site-packages").mkdir()
        _bundle_libraries(root, short)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=3) as archive:
            archive.add(root, arcname="python")
    data = buffer.getvalue()
    target.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _needed(elf: Path) -> list[Path]:
    """The shared libraries `elf` resolves on the driver beyond glibc's own."""
    done = subprocess.run(["ldd", str(elf)], capture_output=True, text=True, timeout=30)
    found = []
    for line in done.stdout.splitlines():
        parts = line.split("=>")
        if len(parts) == 2 and parts[1].strip().startswith("/"):
            name, path = parts[0].strip(), Path(parts[1].split()[0])
            if not name.startswith(_SYSTEM_LIBS) and "libpython" not in name:
                found.append(path)
    return found


def _bundle_libraries(root: Path, short: str) -> None:
    """Copy each extension module's libraries into python/lib and point RUNPATHs there."""
    lib = root / "lib"
    modules = sorted((lib / short / "lib-dynload").glob("*.so"))
    pending = [*modules]
    copied: set[str] = set()
    while pending:
        for dependency in _needed(pending.pop()):
            if dependency.name not in copied:
                copied.add(dependency.name)
                shutil.copy2(dependency, lib / dependency.name)
                pending.append(lib / dependency.name)
    patch = [(root / "bin" / short, "$ORIGIN/../lib"), *((m, "$ORIGIN/../..") for m in modules),
             *((lib / name, "$ORIGIN") for name in copied),
             *((p, "$ORIGIN") for p in lib.glob("libpython*.so*") if not p.is_symlink())]
    for path, runpath in patch:
        path.chmod(path.stat().st_mode | 0o200)
        subprocess.run(["patchelf", "--set-rpath", runpath, str(path)], check=True, capture_output=True, timeout=60)
