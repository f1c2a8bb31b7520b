"""The node image: a base image plus Ray, skyward_ray's dependencies and the Image's packages, built once.

A container node boots with the same script as a cloud machine, and that script installs what the
node lacks. A container pool has no internet (its network is the pool's own), so the node image
holds it all beforehand: the first pool for a given (base image, Python, Ray, Image) builds it,
later pools start from it in seconds.

- **Resolved on the driver.** Every wheel is downloaded here by pip for the engine's platform
  (its CPU architecture, the base image's glibc and Python), then copied into the build; the build
  itself installs offline. A package with no wheel for that platform fails here, naming it, before
  any container starts. Only the apt step (sshd, `Image.apt`) reaches the network, from the build
  container, with the engine host's network.
- **Checked first.** The base image must have bash and the driver's exact Python (Ray checks
  versions between nodes, Ray Client the driver's): a mismatch names both versions and the fix.
- **Never stale, never half-built.** The tag carries a hash of everything that went in; the image
  is committed only after every step succeeded, with the full hash as a label, and an image whose
  label does not match its tag is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from node_providers.container.engine import engine_errors
from skyward_ray.errors import ProvisioningError, SpecError
from skyward_ray.node.startup_script import UV_VERSION, node_requirements
from skyward_ray.planning.image_resolve import culprit, manylinux_tags, pip_reason

if TYPE_CHECKING:
    import docker

REPOSITORY = "skyward-node"
HASH_LABEL = "skyward.node-image"  # the full content hash, written only by a completed build
ENV_DIR = "/opt/skyward/env"  # the boot script's default node environment (NodeBoot.env_dir_shell)
WHEELS_DIR = "/tmp/skyward-wheels"
BUILD_TIMEOUT_S = 1800
RECIPE_VERSION = 4  # bump when the build steps change: every node image is rebuilt
# Always installed in the node image: the head's sshd (the driver's only way in) and the shells'
# tools the boot script uses.
SYSTEM_PACKAGES = ("openssh-server", "procps")
_ARCHES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}

_PROBE = ("import platform, sys; print(__import__('json').dumps({'python': '%d.%d.%d' % sys.version_info[:3], "
          "'glibc': platform.libc_ver()[1], 'machine': platform.machine()}))")


@dataclass(frozen=True)
class BaseFacts:
    """What the base image has: its Python's version, its glibc and its CPU architecture."""

    python: str
    glibc: str
    machine: str


@dataclass(frozen=True)
class NodeImageRecipe:
    """Everything a node image is made of; its hash names the image."""

    base: str
    base_id: str
    python: str
    ray: str
    requirements: tuple[str, ...]
    pip: tuple[str, ...]
    apt: tuple[str, ...]

    @property
    def content_hash(self) -> str:
        body = json.dumps([RECIPE_VERSION, self.base, self.base_id, self.python, self.ray, self.requirements,
                           self.pip, sorted(self.apt)])
        return hashlib.sha256(body.encode()).hexdigest()

    @property
    def tag(self) -> str:
        return f"{REPOSITORY}:{self.content_hash[:20]}"


def ensure_node_image(engine: "docker.DockerClient", base: str, pip: Sequence[str], apt: Sequence[str],
                      say: Any = print) -> str:
    """The node image for `base` with this Image's packages: found by its hash, else built (`say`
    reports the build). Returns its tag."""
    base_image = base_image_present(engine, base, say)
    # The driver's Python: a base image with another one is refused (probe_base) before any build,
    # so a complete node image of this recipe was made from a base that has it.
    recipe = NodeImageRecipe(base=base, base_id=base_image.id, python="%d.%d.%d" % sys.version_info[:3],
                             ray=ray.__version__, pip=tuple(pip), apt=tuple(apt),
                             requirements=(f"ray[default]=={ray.__version__}", *node_requirements(), f"uv=={UV_VERSION}"))
    if is_complete(engine, recipe):
        return recipe.tag
    with _build_lock(recipe):
        if is_complete(engine, recipe):  # another pool built it while this one waited
            return recipe.tag
        facts = probe_base(engine, base)
        say(f"building the node image {recipe.tag} (Ray {recipe.ray}, Python {recipe.python}"
            f"{', ' + str(len(recipe.pip)) + ' Image.pip package(s)' if recipe.pip else ''}); later pools reuse it")
        with tempfile.TemporaryDirectory(prefix="skyward-wheels-") as wheels:
            download_wheels(recipe, facts, Path(wheels))
            build(engine, recipe, Path(wheels))
    return recipe.tag


def base_image_present(engine: "docker.DockerClient", base: str, say: Any) -> Any:
    """The base image, pulled when the engine does not have it (a failed pull says the registry's reason)."""
    import docker

    with contextlib.suppress(docker.errors.ImageNotFound):
        return engine.images.get(base)
    repository, _, tag = base.rpartition(":") if ":" in base.rsplit("/", 1)[-1] else (base, "", "latest")
    say(f"pulling {base}")
    try:
        return engine.images.pull(repository, tag=tag or "latest")
    except docker.errors.APIError as error:
        raise SpecError(f"sky.Container(image={base!r}): the pull failed: {getattr(error, 'explanation', error)}. "
                        "Fix: check the image's name and tag, `docker login` for a private registry, or "
                        "build it here (`docker build -t NAME .`)") from None


def probe_base(engine: "docker.DockerClient", base: str) -> BaseFacts:
    """Run the base image once: it must have bash and the driver's exact Python."""
    import docker

    driver = "%d.%d.%d" % sys.version_info[:3]
    no_bash = SpecError(f"sky.Container(image={base!r}) has no bash; every node runs its boot script with bash. "
                        "Fix: use an image with bash, e.g. a Debian or Ubuntu based one")
    script = f"command -v python3 >/dev/null || exit 42; python3 -c {shlex.quote(_PROBE)}"
    with engine_errors(f"probing the image {base}"):
        box = engine.containers.create(base, ["-c", script], entrypoint=["bash"], network_mode="none")
    try:
        try:
            box.start()
        except docker.errors.APIError as error:
            if "executable file not found" in str(error) or "no such file" in str(error).lower():
                raise no_bash from None
            raise ProvisioningError(f"sky.Container(image={base!r}): probing the image failed: {error}") from None
        status = box.wait(timeout=120)["StatusCode"]
        output = box.logs(stdout=True, stderr=True)
    finally:
        with contextlib.suppress(docker.errors.APIError):
            box.remove(force=True)
    if status == 127:
        raise no_bash
    if status == 42:
        raise SpecError(f"sky.Container(image={base!r}) has no python3; nodes need the driver's Python {driver}. "
                        f"Fix: use python:{driver}-slim (the default), or an image with Python {driver}")
    if status != 0:
        raise ProvisioningError(f"sky.Container(image={base!r}): probing the image failed (exit {status}): "
                                f"{output.decode(errors='replace')[-500:]}")
    facts = BaseFacts(**json.loads(output.decode().strip().splitlines()[-1]))
    if facts.python != driver:
        raise SpecError(f"sky.Container(image={base!r}) has Python {facts.python}; this driver runs Python {driver}, "
                        "and Ray needs the same version on both sides. Fix: sky.Container(image="
                        f"'python:{driver}-slim') (the default), or run the driver with Python {facts.python}")
    if _ARCHES.get(facts.machine) is None:
        raise SpecError(f"sky.Container(image={base!r}) is for {facts.machine}; Ray's wheels exist for x86_64 and "
                        "aarch64 Linux only. Fix: use an amd64 or arm64 image")
    return facts


def is_complete(engine: "docker.DockerClient", recipe: NodeImageRecipe) -> bool:
    """A node image exists under the recipe's tag and its build finished (its label is the full hash)."""
    import docker

    try:
        image = engine.images.get(recipe.tag)
    except docker.errors.ImageNotFound:
        return False
    return (image.labels or {}).get(HASH_LABEL) == recipe.content_hash


def platform_tags(facts: BaseFacts) -> list[str]:
    """pip's --platform tags the base image accepts: manylinux up to its glibc, for its CPU."""
    return manylinux_tags(_ARCHES[facts.machine], facts.glibc)


def download_wheels(recipe: NodeImageRecipe, facts: BaseFacts, into: Path) -> None:
    """Every wheel the node image needs, for its platform, downloaded here by pip (binary only)."""
    major_minor = ".".join(recipe.python.split(".")[:2])
    argv = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary=:all:",
            "--implementation", "cp", "--python-version", major_minor, "-d", str(into)]
    for tag in platform_tags(facts):
        argv += ["--platform", tag]
    argv += [*recipe.requirements, *recipe.pip]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except FileNotFoundError:
        raise ProvisioningError("the node image's packages are resolved with this Python's pip, which is missing. "
                                f"Fix: {sys.executable} -m ensurepip") from None
    if done.returncode != 0:
        reason = pip_reason(done.stderr)
        if "No module named pip" in reason:
            raise ProvisioningError("the node image's packages are resolved with this Python's pip, which is "
                                    f"missing. Fix: {sys.executable} -m ensurepip")
        package = culprit(recipe.pip, reason)
        what = f"Image.pip package {package!r}" if package else "the node's packages"
        raise SpecError(f"sky.Container: {what} could not be resolved for Linux {_ARCHES[facts.machine]}, "
                        f"Python {major_minor} (wheels only, the nodes have no compiler or internet):\n{reason}")


def _install_script(recipe: NodeImageRecipe) -> str:
    apt = sorted({*SYSTEM_PACKAGES, *recipe.apt})
    packages = " ".join(shlex.quote(p) for p in apt)
    requirements = " ".join(shlex.quote(r) for r in (*recipe.requirements, *recipe.pip))
    uv_wheel = f"{WHEELS_DIR}/uv-{UV_VERSION}-*.whl"
    return "\n".join([
        "set -eu",
        "export DEBIAN_FRONTEND=noninteractive",
        f"if ! dpkg-query -W {packages} >/dev/null 2>&1; then",
        "  command -v apt-get >/dev/null || { echo 'skyward: the image has no apt-get to install sshd with' >&2; exit 3; }",
        "  apt-get update -qq",
        f"  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 {packages}",
        "  apt-get clean; rm -rf /var/lib/apt/lists/*",
        "fi",
        # uv from its wheel (a zip: Python's zipfile opens it), then the node's environment with it
        f"python3 -m zipfile -e $(ls {uv_wheel} | head -n 1) /tmp/skyward-uv",
        "install -m 0755 /tmp/skyward-uv/uv-*.data/scripts/uv /usr/local/bin/uv && rm -rf /tmp/skyward-uv",
        f"uv venv -q --python \"$(command -v python3)\" {ENV_DIR}",
        # compiled now, once: uv leaves .py files uncompiled, and every node then compiled Ray's imports at
        # each boot, its processes at once (the dashboard agent's took 33 s instead of 6-9 s at load 15,
        # past the 15 s the raylet gives it)
        f"uv pip install -q --compile-bytecode --offline --no-index --find-links {WHEELS_DIR} "
        f"--python {ENV_DIR}/bin/python {requirements}",
        f"rm -rf {WHEELS_DIR} /root/.cache",
    ])


def build(engine: "docker.DockerClient", recipe: NodeImageRecipe, wheels: Path) -> None:
    """Install into a container of the base image, then commit it under the recipe's tag. Any
    failure removes the container and leaves no image: a half-built image is never tagged."""
    with engine_errors(f"building the node image from {recipe.base}"):
        container = engine.containers.create(recipe.base, entrypoint=["sleep"], command=[str(BUILD_TIMEOUT_S)],
                                             network_mode="host", labels={"skyward.build": recipe.content_hash})
    try:
        with engine_errors("starting the node image build"):
            container.start()
            container.exec_run(["mkdir", "-p", WHEELS_DIR])
            if not container.put_archive(WHEELS_DIR, _tar_of(wheels)):
                raise ProvisioningError("Docker: copying the wheels into the node image build failed")
            result = container.exec_run(["bash", "-c", _install_script(recipe)], demux=False)
        if result.exit_code != 0:
            tail = "\n".join((result.output or b"").decode(errors="replace").strip().splitlines()[-25:])
            raise ProvisioningError(f"building the node image from {recipe.base} failed (exit {result.exit_code}):\n{tail}")
        with engine_errors("committing the node image"):
            container.commit(repository=REPOSITORY, tag=recipe.tag.split(":", 1)[1],
                             changes=[f"LABEL {HASH_LABEL}={recipe.content_hash}", 'ENTRYPOINT ["/usr/bin/env"]', 'CMD ["bash"]',
                                      "WORKDIR /root"])
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


def _tar_of(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(directory.iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


@contextlib.contextmanager
def _build_lock(recipe: NodeImageRecipe) -> Iterator[None]:
    """One build per recipe at a time on this machine (two pools starting at once share it)."""
    import fcntl

    path = Path(tempfile.gettempdir()) / f"skyward-node-image-{recipe.content_hash[:20]}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
