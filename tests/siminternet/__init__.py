"""A simulated internet for the simulated machines: the hosts a node's boot downloads from.

A real node (`skyward_ray/node/startup_script.py`, `uv_bootstrap.py`, `apt.py`) reaches out to:

- `deb.debian.org` (the image's apt source; Ubuntu's archive on a real `ubuntu:22.04`) for curl,
  ca-certificates, unzip and openssh-server where the image lacks them;
- `files.pythonhosted.org` for the pinned uv wheel (checked by sha256), and `pypi.org` +
  `files.pythonhosted.org` for Ray, its dependencies and the Image's packages;
- `github.com` (python-build-standalone's releases) for the CPython `uv venv --python X.Y.Z` fetches.

One host on the simulated network (`SimInternet`, `host.py`) answers for all of these names, over
HTTPS with a CA of its own (`tls.py`) and plain HTTP for apt, serving a tree built once on the
driver's side and cached under SKYWARD_TEST_CACHE (`content.py`). Machines find it through an
/etc/hosts entry their runtime writes (the stand-in for DNS: the names resolve to that host only).

What is real and what stands in (and why):

- the uv wheel: the real bytes from files.pythonhosted.org, at the URL and sha256 the product pins;
- Ray and every wheel: the real wheels from PyPI (`pip download` on the driver, for the nodes'
  platform, which is the driver's), served as a PEP 503 simple index at pypi.org/simple;
- the Debian packages: the real .debs of bookworm, downloaded on the driver (by an `mmdebstrap`
  run that keeps its package cache), indexed with `dpkg-scanpackages`. The repository is
  `[trusted=yes]` in the images' apt sources: Debian's archive key signs the whole archive's index,
  and a subset cannot carry that signature (serving the full signed index, ~45 MB, to every boot
  would be the alternative);
- CPython: GitHub is unreachable from this workplace, so a python-build-standalone-shaped
  `install_only` tarball is made from the driver's own Python (`cpython.py`; the exact X.Y.Z that
  Ray demands on both sides), and uv is told of it the way uv documents custom downloads:
  `UV_PYTHON_DOWNLOADS_JSON_URL` in the image's environment (an image's ENV line, never product code);
- the CA: no public CA will sign for pypi.org here, so the images trust this one CA (as a distro's
  trust store would hold the public ones), and uv, whose default trust is its bundled Mozilla roots,
  is told to use the system's store (`UV_NATIVE_TLS=1`, also an image ENV line).
"""

from __future__ import annotations

NAMES = ("deb.debian.org", "pypi.org", "files.pythonhosted.org", "github.com")
PBS_TAG = "99990101"  # the release tag of the stand-in CPython (python-build-standalone's tags are dates)
PYTHON_DOWNLOADS_JSON_URL = ("https://github.com/astral-sh/python-build-standalone/releases/download/"
                             f"{PBS_TAG}/skyward-sim-download-metadata.json")
APT_SOURCE = "deb [trusted=yes] http://deb.debian.org/debian bookworm main"
CA_PATH_IN_IMAGE = "/usr/local/share/ca-certificates/skyward-siminternet.crt"
# What every image's environment gets, like ENV lines of its Dockerfile (see the docstring).
IMAGE_ENV = {"UV_PYTHON_DOWNLOADS_JSON_URL": PYTHON_DOWNLOADS_JSON_URL, "UV_NATIVE_TLS": "1"}
