"""`Image.pip` resolved on the driver, for the nodes' Python and platform, before anything starts.

Why: a requirement no node can install (a package that does not exist, a version that does not,
two pins that conflict) otherwise fails on every node after minutes of provisioning and boot, as
Ray's `RuntimeEnvSetupError` or a node that ends itself, with pip's reason buried in a log. pip's
resolver answers the same question here in about a second (`pip install --dry-run` reads only the
index's metadata), so a bad Image is a `SpecError` naming the field, the package and pip's reason.

- **The nodes' target.** Nodes on this machine (the local provider) install with this Python's pip
  and platform. Every other node runs the driver's Python on Linux (x86_64, glibc up to
  `CLOUD_GLIBC`): resolved wheels-only for those tags (pip needs that to resolve for another
  platform); a package pip finds no wheel for is then looked up once more without its
  dependencies, sdists allowed, so a package the nodes build from source is not refused.
- **The same index.** pip runs with the user's own configuration (pip.conf, `PIP_INDEX_URL`, ...).
- **Cached.** A requirement set that resolved is remembered for `CACHE_TTL_S` in a small file under
  the user's cache directory, keyed by the requirements, the target and the index settings: a pool
  entry does not pay a resolve each time. Failures are not cached (the user fixes and retries).
- **Offline-friendly.** When the index cannot be reached (or pip is missing), this warns and goes
  on: the nodes may have a route to an index this machine lacks.

`manylinux_tags`, `pip_reason` and `culprit` are shared with the Container provider's node image,
which downloads the wheels themselves for the engine's platform.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from skyward_ray.errors import SpecError
from skyward_ray.planning.providers import ProviderConfig

CLOUD_MACHINE = "x86_64"
CLOUD_GLIBC = "2.35"  # Ubuntu 22.04, the cloud images' base (the AWS DLAMIs, RunPod's and Vast.ai's images)
CACHE_TTL_S = 7 * 24 * 3600.0
RESOLVE_TIMEOUT_S = 120.0
_PIP_SETTINGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CONFIG_FILE",
                 "PIP_CONSTRAINT")
# What pip says when the index did not answer, as opposed to answering "no such thing".
_UNREACHABLE = ("connection broken by", "NewConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                "Max retries exceeded", "ProxyError", "SSLError", "Could not fetch URL", "No module named pip",
                "Temporary failure in name resolution")


@dataclass(frozen=True)
class NodePlatform:
    """Where the nodes install `Image.pip`: their Python (X.Y) and pip `--platform` tags (none: this
    machine's own platform, where sdists are allowed too)."""

    python: str
    tags: tuple[str, ...] = ()

    @classmethod
    def this_machine(cls) -> "NodePlatform":
        return cls("%d.%d" % sys.version_info[:2])

    @classmethod
    def linux(cls, machine: str = CLOUD_MACHINE, glibc: str = CLOUD_GLIBC) -> "NodePlatform":
        """Linux nodes that run the driver's Python (Ray needs the same version on both sides)."""
        return cls("%d.%d" % sys.version_info[:2], tuple(manylinux_tags(machine, glibc)))

    @property
    def words(self) -> str:
        if not self.tags:
            return f"this machine's Python {self.python}"
        machine = next((m for m in ("x86_64", "aarch64") if self.tags[0].endswith(m)), self.tags[0])
        return f"Linux {machine}, Python {self.python}"

    def pip_options(self, wheels_only: bool = True) -> list[str]:
        """pip's options selecting this target (`--target` too: pip resolves for another platform
        only into a directory, never into this Python's environment)."""
        if not self.tags:
            return []
        options = ["--implementation", "cp", "--python-version", self.python]
        for tag in self.tags:
            options += ["--platform", tag]
        return options + (["--only-binary=:all:"] if wheels_only else ["--no-deps"])


def manylinux_tags(machine: str, glibc: str) -> list[str]:
    """pip's `--platform` tags a Linux with this glibc accepts: manylinux up to its glibc, for its CPU."""
    major, _, minor = glibc.partition(".")
    newest = int(minor) if major == "2" and minor.isdigit() else 17
    tags = [f"manylinux_2_{n}_{machine}" for n in range(newest, 16, -1)] + [f"manylinux2014_{machine}"]
    if machine == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    return tags


def pip_reason(stderr: str, limit: int = 1500) -> str:
    """pip's own reason, without its warnings (ignored locations, retries), trimmed to `limit`."""
    return "\n".join(line for line in stderr.strip().splitlines() if "WARNING" not in line)[-limit:]


def culprit(requirements: Sequence[str], reason: str) -> str | None:
    """The requirement pip's reason names (the first one whose project name it mentions)."""
    for requirement in requirements:
        try:
            name = Requirement(requirement).name
        except InvalidRequirement:
            name = requirement
        if name.lower() in reason.lower() or name.lower().replace("-", "_") in reason.lower():
            return requirement
    return None


def cache_dir() -> Path:
    """This user's cache for resolutions: `$XDG_CACHE_HOME/skyward/image-resolve` (~/.cache)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "skyward" / "image-resolve"


def _cache_file(requirements: Sequence[str], platform: NodePlatform) -> Path:
    settings = {name: os.environ.get(name, "") for name in _PIP_SETTINGS}
    body = json.dumps([sorted(requirements), platform.python, platform.tags, settings, sys.executable])
    return cache_dir() / f"{hashlib.sha256(body.encode()).hexdigest()[:32]}.json"


def _cached(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime < CACHE_TTL_S
    except OSError:
        return False


def _remember(path: Path, requirements: Sequence[str], platform: NodePlatform) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"requirements": list(requirements), "python": platform.python,
                                    "platform": list(platform.tags)}))
    except OSError:  # a cache that cannot be written costs a resolve next time, nothing more
        pass


def _dry_run(requirements: Sequence[str], platform: NodePlatform, wheels_only: bool) -> tuple[int, str]:
    """pip's resolver over `requirements` for `platform`, installing nothing: (exit status, stderr)."""
    with tempfile.TemporaryDirectory(prefix="skyward-resolve-") as target:
        argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                "--disable-pip-version-check", "--retries", "1", "--timeout", "15",
                *(["--target", target] if platform.tags else []), *platform.pip_options(wheels_only), *requirements]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return 1, f"Could not fetch URL: pip did not answer within {RESOLVE_TIMEOUT_S:g}s"
        except OSError as error:
            return 1, f"No module named pip ({error})"
        return done.returncode, done.stderr


def _unreachable(reason: str) -> bool:
    return any(marker.lower() in reason.lower() for marker in _UNREACHABLE)


def _only_sdists(requirement: str, platform: NodePlatform) -> bool:
    """Whether `requirement` exists for `platform` as a source distribution (no wheel): the nodes build it."""
    status, _ = _dry_run([requirement], platform, wheels_only=False)
    return status == 0


def check_requirements(requirements: Sequence[str], platform: NodePlatform, field: str = "Image.pip") -> None:
    """`SpecError` naming `field`, the package and pip's reason when `requirements` cannot be
    installed on `platform`; a warning (and nothing refused) when the index cannot be asked."""
    if not requirements:
        return
    cached = _cache_file(requirements, platform)
    if _cached(cached):
        return
    status, stderr = _dry_run(requirements, platform, wheels_only=True)
    reason = pip_reason(stderr)
    if status != 0 and _unreachable(stderr):
        warnings.warn(f"{field} could not be checked before provisioning (the package index did not answer "
                      f"here: {reason.splitlines()[-1] if reason else 'no reason given'}); the nodes will try "
                      "to install it themselves", UserWarning, stacklevel=3)
        return
    if status != 0:
        named = [requirement for requirement in requirements if culprit([requirement], reason)]
        if platform.tags and len(named) == 1 and "(from versions: none)" in reason and _only_sdists(named[0], platform):
            warnings.warn(f"{field}: {named[0]!r} has no wheel for {platform.words}; the nodes will build it "
                          "from source (its dependencies were not checked here)", UserWarning, stacklevel=3)
            return
        what = " and ".join(repr(r) for r in named) if named else repr(list(requirements))
        raise SpecError(f"{field}: {what} cannot be installed on the nodes ({platform.words}); pip says:\n"
                        f"{_short(reason)}\nFix: correct or drop {what} in sky.Image(pip=[...]) "
                        "(check the name and version on the package index)")
    _remember(cached, requirements, platform)


def check_for_providers(requirements: Sequence[str], providers: Iterable[ProviderConfig]) -> None:
    """`check_requirements` once per distinct platform the providers' nodes install on."""
    platforms = {NodePlatform.this_machine() if provider.nodes_share_driver_python else NodePlatform.linux()
                 for provider in providers}
    for platform in sorted(platforms, key=lambda p: p.tags):
        check_requirements(requirements, platform)


def _short(reason: str, lines: int = 4) -> str:
    """The resolver's reason in a few lines: its ERROR lines first, else its last lines."""
    errors = [line for line in reason.splitlines() if line.startswith("ERROR")]
    return "\n".join(re.sub(r"\(from versions: ((?:[^,)]+, ){3,})([^)]*)\)", _fewer_versions, line)
                     for line in (errors or reason.splitlines())[-lines:])


def _fewer_versions(match: re.Match[str]) -> str:
    """pip's "(from versions: ...)" list cut to its newest few: the reader wants to see what exists."""
    versions = (match.group(1) + match.group(2)).split(", ")
    return f"(from versions: ..., {', '.join(versions[-6:])})"


__all__ = ["CACHE_TTL_S", "CLOUD_GLIBC", "NodePlatform", "cache_dir", "check_for_providers", "check_requirements", "culprit",
           "manylinux_tags", "pip_reason"]
