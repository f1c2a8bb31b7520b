"""A stand-in for the official `python:<X.Y.Z>-slim` image, under that same name, holding this
driver's Python: `sky.Container()`'s default image, with no registry to pull it from.

What the official image is, and this copy too: Debian bookworm (minbase here, as `-slim` is: bash,
apt, coreutils, no compiler, no curl), the runtime libraries CPython links (ssl, ffi, sqlite,
bz2, lzma, readline, uuid), CA certificates, and one CPython built into the `/usr/local` prefix
with pip and setuptools (Dockerfile of docker-library/python, "slim-bookworm"). The CPython here
is the driver's own (a from-source build, moved from its prefix to /usr/local; its shared library
found through ldconfig): the exact X.Y.Z that Ray demands on both sides. The image carries
`STANDIN_LABEL`, so nobody mistakes it for the real one.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import sys
import sysconfig
import tarfile
from pathlib import Path

from tests.images import STANDIN_LABEL
from tests.images.rootfs import CACHE, RootfsRecipe, rootfs_tarball

# The runtime packages of the official slim-bookworm image (docker-library/python's Dockerfile).
SLIM = RootfsRecipe(include=("ca-certificates", "netbase", "tzdata", "libssl3", "libffi8", "zlib1g", "libbz2-1.0",
                             "liblzma5", "libsqlite3-0", "libreadline8", "libncursesw6", "libuuid1", "libexpat1",
                             "libgdbm6", "libdb5.3"))
_SKIP_DIRS = {"test", "idlelib", "tkinter", "turtledemo", "__pycache__", "site-packages", "config-%d.%d-x86_64-linux-gnu"}
_KEEP_SITE = ("pip", "setuptools", "_distutils_hack", "distutils-precedence.pth")


def tag() -> str:
    return "python:%d.%d.%d-slim" % sys.version_info[:3]


def _python_tar() -> bytes:
    """This interpreter's prefix as /usr/local: the binary, libpython, the standard library, pip."""
    prefix = Path(sys.base_prefix)
    version = "python%d.%d" % sys.version_info[:2]
    stdlib = Path(sysconfig.get_paths(vars={"base": str(prefix), "platbase": str(prefix)})["stdlib"])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        def add(path: Path, name: str) -> None:
            archive.add(path, arcname=f"usr/local/{name}", recursive=False)

        add(prefix / "bin" / version, f"bin/{version}")
        for link in ("python3", "python"):
            info = tarfile.TarInfo(f"usr/local/bin/{link}")
            info.type, info.linkname = tarfile.SYMTYPE, version
            archive.addfile(info)
        for library in prefix.joinpath("lib").glob("libpython*.so*"):
            add(library, f"lib/{library.name}")
        for path in sorted(stdlib.rglob("*")):
            relative = path.relative_to(stdlib)
            parts = relative.parts
            if parts[0] == "site-packages":
                if len(parts) < 2 or not parts[1].startswith(_KEEP_SITE) or "__pycache__" in parts:
                    if len(parts) > 1:
                        continue
            elif any(part in _SKIP_DIRS for part in parts) or parts[0].startswith("config-"):
                continue
            add(path, f"lib/{version}/{relative}")
    return buffer.getvalue()


def ensure(engine) -> str:
    """The stand-in's tag, built once per machine (its hash covers the rootfs recipe and this Python)."""
    import docker

    digest = hashlib.sha256(f"{SLIM.content_hash}:{sys.base_prefix}:{sys.version}:1".encode()).hexdigest()[:16]
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "python-slim.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if engine.images.get(tag()).labels.get(STANDIN_LABEL) == digest:
                return tag()
        except docker.errors.ImageNotFound:
            pass
        base_tag = f"skyward-test/slim-rootfs:{SLIM.content_hash}"
        try:
            engine.images.get(base_tag)
        except docker.errors.ImageNotFound:
            with open(rootfs_tarball(SLIM), "rb") as rootfs:
                engine.api.import_image_from_data(rootfs.read(), repository=base_tag.split(":")[0],
                                                  tag=base_tag.split(":")[1])
        box = engine.containers.create(base_tag, ["bash", "-c", "ldconfig && python3 -c 'import ssl, sqlite3, ctypes'"],
                                       network_mode="none")
        try:
            box.put_archive("/", _python_tar())
            box.start()
            if box.wait(timeout=120)["StatusCode"] != 0:
                raise RuntimeError(f"the python stand-in did not run: {box.logs().decode(errors='replace')[-2000:]}")
            box.commit(repository="python", tag=tag().split(":")[1], changes=[
                "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8",
                'CMD ["python3"]', f"LABEL {STANDIN_LABEL}={digest}"])
        finally:
            box.remove(force=True)
    return tag()
