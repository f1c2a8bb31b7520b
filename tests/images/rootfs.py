"""Root filesystems built from Debian packages with `mmdebstrap`, cached by what went into them.

A recipe is a suite, a variant and a package list; its tarball lands in the cache named by the
recipe's hash, so a second run (or a second test worker) reuses it. The cache survives between
runs on one machine (`SKYWARD_TEST_CACHE`, default ~/.cache/skyward-tests); a fresh machine builds
each recipe once (~20-40 s each).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("SKYWARD_TEST_CACHE", Path.home() / ".cache" / "skyward-tests"))


@dataclass(frozen=True)
class RootfsRecipe:
    """What `mmdebstrap` makes: `suite` (e.g. bookworm), `variant` (minbase: bash, apt, coreutils and
    little else) and the packages added on top."""

    suite: str = "bookworm"
    variant: str = "minbase"
    include: tuple[str, ...] = ()

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps([self.suite, self.variant, sorted(self.include)]).encode()).hexdigest()[:16]


def unavailable() -> str | None:
    """Why no root filesystem can be built here, or None."""
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (bash tests/system-packages.sh installs it as root)"
    if os.geteuid() != 0:
        return "building a root filesystem needs root"
    return None


def rootfs_tarball(recipe: RootfsRecipe) -> Path:
    """The recipe's root filesystem as a tarball, built once per machine."""
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / f"rootfs-{recipe.suite}-{recipe.variant}-{recipe.content_hash}.tar"
    with open(CACHE / f"{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        partial = target.with_suffix(".partial.tar")
        argv = ["mmdebstrap", "--quiet", f"--variant={recipe.variant}", recipe.suite, str(partial)]
        if recipe.include:
            argv.insert(2, "--include=" + ",".join(recipe.include))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"mmdebstrap {recipe} failed: {done.stderr.strip()[-2000:]}")
        partial.rename(target)  # only a finished build carries the final name
        return target


def built_once(target: Path, build: Callable[[Path], None]) -> Path:
    """The directory `target`, made by `build(partial_directory)` once per machine: under a lock (test
    workers share the cache), renamed into place only when finished (a failed build leaves nothing)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            partial = target.with_name(f"{target.name}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            build(partial)
            partial.rename(target)
    return target
