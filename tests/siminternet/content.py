"""What the simulated internet serves, built once on the driver's side and cached.

The tree is `<cache>/www/<host name>/<path>` (see `server.py`):

- `files.pythonhosted.org/packages/...`: the uv wheel at the exact path and bytes the product pins
  (`skyward_ray.node.uv_bootstrap.WHEELS`), and every wheel of `NODE_PACKAGES` with its
  dependencies, downloaded with `pip download` for this platform (the nodes run the driver's);
- `pypi.org/simple/<project>/`: a PEP 503 index of them, each link carrying its sha256;
- `deb.debian.org/debian/`: `pool/` with the real bookworm .debs a boot may install and their
  dependencies (an `mmdebstrap` run that keeps its download cache), `Packages` from
  `dpkg-scanpackages` and an unsigned `Release` (the sources are `[trusted=yes]`: see the package);
- `github.com/astral-sh/python-build-standalone/releases/download/<tag>/`: the CPython stand-in
  (`cpython.py`) and the download list uv reads through `UV_PYTHON_DOWNLOADS_JSON_URL`.

Each part lives in its own cache directory keyed by what went into it, so a change of Ray's
version downloads wheels again but not the .debs.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import gzip
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from skyward_ray.node.uv_bootstrap import WHEELS
from tests.images.rootfs import CACHE, built_once
from tests.siminternet import PBS_TAG, PYTHON_DOWNLOADS_JSON_URL, cpython

ROOT = CACHE / "siminternet"
# The Debian packages a boot may install: uv's fetchers (curl, ca-certificates, unzip), the head's
# sshd, and python3 with pip (an Image's apt=, and the AWS/RunPod-like images' own).
BOOT_DEBS = ("ca-certificates", "curl", "openssh-server", "python3", "python3-pip", "unzip")
_FILES = "https://files.pythonhosted.org"


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    """ROOT/name, made by `build(partial_dir)` once per machine."""
    return built_once(ROOT / name, build)


def wheels(packages: Sequence[str]) -> Path:
    """The wheels of `packages` and their dependencies for this platform (pip download, PyPI)."""
    def build(out: Path) -> None:
        done = subprocess.run([os.path.join(sys.base_prefix, "bin", "python3"), "-m", "pip", "download", "-q",
                               "--only-binary=:all:", "-d", str(out), *packages],
                              capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"pip download for the simulated PyPI failed: {done.stderr[-2000:]}")
    return _cached(f"wheels-{_key(sys.version, *packages)}", build)


def uv_wheel() -> Path:
    """The uv wheel the product pins for x86_64, the real bytes from files.pythonhosted.org."""
    wheel = WHEELS["x86_64"]

    def build(out: Path) -> None:
        data = urllib.request.urlopen(wheel.url, timeout=300).read()
        if hashlib.sha256(data).hexdigest() != wheel.sha256:
            raise RuntimeError(f"{wheel.url} does not have the sha256 the product pins")
        (out / wheel.url.rsplit("/", 1)[1]).write_bytes(data)
    return next(_cached(f"uv-{wheel.sha256[:16]}", build).iterdir())


def debs(packages: Sequence[str] = BOOT_DEBS) -> Path:
    """Real bookworm .debs: `packages`, their dependencies and the minbase they install onto."""
    def build(out: Path) -> None:
        done = subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "--include=" + ",".join(packages),
                               "--skip=download/empty", f"--customize-hook=sync-out /var/cache/apt/archives {out}",
                               "bookworm", "/dev/null"], capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"mmdebstrap (the simulated Debian archive) failed: {done.stderr[-2000:]}")
    return _cached(f"debs-{_key(*sorted(packages))}", build)


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _pypi(www: Path, files: Sequence[Path], pinned: Path) -> None:
    """files.pythonhosted.org and pypi.org/simple (PEP 503) for `files`; `pinned` at its pinned URL."""
    projects: dict[str, list[str]] = {}
    for path in [*files, pinned]:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        url = WHEELS["x86_64"].url if path == pinned else \
            f"{_FILES}/packages/{digest[:2]}/{digest[2:4]}/{digest[4:]}/{path.name}"
        _link(path, www / "files.pythonhosted.org" / url.split(f"{_FILES}/", 1)[1])
        project = re.sub(r"[-_.]+", "-", path.name.split("-")[0]).lower()
        projects.setdefault(project, []).append(f'<a href="{html.escape(url)}#sha256={digest}">{path.name}</a><br/>')
    simple = www / "pypi.org" / "simple"
    for project, links in projects.items():
        (simple / project).mkdir(parents=True, exist_ok=True)
        (simple / project / "index.html").write_text("<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n")
    (simple / "index.html").write_text("<!DOCTYPE html><html><body>\n" + "\n".join(
        f'<a href="/simple/{p}/">{p}</a><br/>' for p in sorted(projects)) + "\n</body></html>\n")


def _debian(www: Path, deb_dir: Path) -> None:
    """A one-suite apt repository (bookworm main amd64) of the .debs in `deb_dir`."""
    repo = www / "deb.debian.org" / "debian"
    for deb in deb_dir.glob("*.deb"):
        _link(deb, repo / "pool" / "main" / deb.name)
    index = subprocess.run(["dpkg-scanpackages", "--multiversion", "pool/main", "/dev/null"], cwd=repo,
                           capture_output=True, check=True, timeout=300).stdout
    binary = repo / "dists" / "bookworm" / "main" / "binary-amd64"
    binary.mkdir(parents=True)
    (binary / "Packages").write_bytes(index)
    (binary / "Packages.gz").write_bytes(gzip.compress(index, mtime=0))
    sums = "".join(f" {hashlib.sha256(p.read_bytes()).hexdigest()} {p.stat().st_size} main/binary-amd64/{p.name}\n"
                   for p in sorted(binary.iterdir()))
    (repo / "dists" / "bookworm" / "Release").write_text(
        "Origin: Debian\nLabel: Debian\nSuite: stable\nCodename: bookworm\nArchitectures: amd64\nComponents: main\n"
        f"Date: {email.utils.formatdate(usegmt=True)}\n"
        "Description: skyward simulated internet: a subset of Debian bookworm\nSHA256:\n" + sums)


def _python(www: Path) -> None:
    """The CPython stand-in and uv's download list naming it (python-build-standalone's layout)."""
    release = www / "github.com" / PYTHON_DOWNLOADS_JSON_URL.split("https://github.com/", 1)[1].rsplit("/", 1)[0]
    release.mkdir(parents=True)
    name = cpython.archive_name()
    digest = cpython.build(release / name)
    major, minor, patch = sys.version_info[:3]
    entry = {"name": "cpython", "arch": {"family": "x86_64", "variant": None}, "os": "linux", "libc": "gnu",
             "major": major, "minor": minor, "patch": patch, "prerelease": "", "variant": None, "build": PBS_TAG,
             "url": f"https://github.com/{release.relative_to(www / 'github.com')}/{name}", "sha256": digest}
    (release / PYTHON_DOWNLOADS_JSON_URL.rsplit("/", 1)[1]).write_text(
        json.dumps({f"cpython-{major}.{minor}.{patch}-linux-x86_64-gnu": entry}, indent=1))


def site_tree(packages: Sequence[str]) -> Path:
    """The whole served tree (`www`), assembled from the cached parts (hard links: cheap)."""
    # three downloads (PyPI, PyPI, Debian), each cached under its own lock: on a fresh machine at once
    with concurrent.futures.ThreadPoolExecutor(max_workers=3, thread_name_prefix="siminternet-parts") as pool:
        parts = tuple(f.result() for f in [pool.submit(wheels, packages), pool.submit(uv_wheel), pool.submit(debs)])

    def build(out: Path) -> None:
        www = out / "www"
        _pypi(www, sorted(parts[0].glob("*.whl")), parts[1])
        _debian(www, parts[2])
        _python(www)
    return _cached(f"site-{_key(sys.base_prefix, sys.version, *parts, 3)}", build) / "www"
