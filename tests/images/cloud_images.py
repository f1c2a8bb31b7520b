"""The clouds' machine images, as root filesystems built from Debian packages (`rootfs.py`), each
holding what its cloud documents for the image the provider boots:

- `VAST`: Vast.ai's default `ubuntu:22.04`: the distro's minimal base (bash, apt, coreutils) and
  nothing else of note: no python3, no curl, no ca-certificates, no sshd;
- `AWS`: the Deep Learning AMI as far as the boot touches it: python3 without pip, curl,
  ca-certificates, openssh-server;
- `RUNPOD`: RunPod's base images: bash, curl, python3 with pip, openssh-server, ca-certificates.

Debian bookworm stands in for Ubuntu (no Ubuntu archive is reachable here; the boot uses nothing
that differs). On top of the packages, each image is prepared as the simulated internet needs
(`tests.siminternet`): its CA in /usr/local/share/ca-certificates/ and, where ca-certificates is
installed, `update-ca-certificates` run at build (as the distro does; an image without it trusts
the CA once the boot installs ca-certificates, whose postinst runs the same), and apt's sources
naming the simulated Debian archive (`[trusted=yes]`). The names resolve through /etc/hosts,
which the machine's runtime writes per machine as a container runtime does (the stand-in for DNS:
`tests.simnet.rootfs_machine`). `CloudImage.env` is the image's ENV lines.

Each is unpacked once per machine into the cache (SKYWARD_TEST_CACHE/images/), shared read-only as
the lower layer of every machine's overlay.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.images.rootfs import CACHE, RootfsRecipe, built_once, rootfs_tarball
from tests.siminternet import APT_SOURCE, CA_PATH_IN_IMAGE, IMAGE_ENV

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DPKG_SPEEDUP = "# For most Docker users, package installs happen during image build\nforce-unsafe-io\n"


@dataclass(frozen=True)
class CloudImage:
    """One cloud's image: its packages (`recipe`) and its environment (`env`, ENV lines)."""

    name: str
    recipe: RootfsRecipe
    env: Mapping[str, str] = field(default_factory=dict)
    container: bool = False  # a Docker image: dpkg configured as Docker's official images are (below)

    def environment(self) -> dict[str, str]:
        """What a process of the image starts with: PATH and the image's ENV lines."""
        return {"PATH": _PATH, **IMAGE_ENV, **self.env}


VAST = CloudImage("vast-ubuntu2204", RootfsRecipe(), container=True)
AWS = CloudImage("aws-dlami", RootfsRecipe(include=("python3", "curl", "ca-certificates", "openssh-server")))
RUNPOD = CloudImage("runpod-base", RootfsRecipe(include=("curl", "ca-certificates", "python3", "python3-pip",
                                                         "openssh-server")), env={"LANG": "C.UTF-8"},
                    container=True)


def unpacked(image: CloudImage, ca_cert: Path) -> Path:
    """The image's root directory, trusting `ca_cert`, unpacked and prepared once per machine."""
    digest = hashlib.sha256(image.recipe.content_hash.encode() + ca_cert.read_bytes() + APT_SOURCE.encode()
                            + (DPKG_SPEEDUP.encode() if image.container else b"")).hexdigest()[:16]

    def build(partial: Path) -> None:
        subprocess.run(["tar", "-xf", str(rootfs_tarball(image.recipe)), "-C", str(partial), "--exclude=./dev/*"],
                       check=True, capture_output=True, timeout=600)
        _prepare(partial, ca_cert, image.container)
    return built_once(CACHE / "images" / f"{image.name}-{digest}", build)


def _prepare(root: Path, ca_cert: Path, container: bool) -> None:
    """The simulated internet's CA and apt source, as an image build step would add them; in a
    container image, dpkg without fsync, as Docker's official Debian images configure it
    (debuerreotype's minimizing config: /etc/dpkg/dpkg.cfg.d/docker-apt-speedup)."""
    if container:
        speedup = root / "etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
        speedup.parent.mkdir(parents=True, exist_ok=True)
        speedup.write_text(DPKG_SPEEDUP)
    ca = root / CA_PATH_IN_IMAGE.lstrip("/")
    ca.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ca_cert, ca)
    ca.chmod(0o644)
    if (root / "usr/sbin/update-ca-certificates").exists():
        subprocess.run(["chroot", str(root), "/usr/sbin/update-ca-certificates"], check=True, capture_output=True,
                       timeout=120, env={"PATH": _PATH})
    for listing in (root / "etc/apt/sources.list.d").glob("*"):
        listing.unlink()
    (root / "etc/apt/sources.list").write_text(APT_SOURCE + "\n")
    for name in ("hosts", "hostname", "resolv.conf"):  # the runtime's, per machine
        (root / "etc" / name).unlink(missing_ok=True)
