"""The machine side every simulated cloud shares: hosts that boot themselves, as isolated as real ones.

A simulated cloud (AWS, RunPod, Vast.ai) decides *when* a machine exists and what it runs; this
base is what a machine then is, the same for all of them:

- a host on the simulated network (`tests.simnet`): its own network namespace, a public address,
  and whatever private side the cloud gives it;
- its script run as the machine's root process group inside that namespace (`ProcessHost`), with
  what the cloud's boot runner sets (`unset` takes out what it does not: skyward's own id and
  address variables, and HOME where the runner leaves it unset) and nothing of the driver's
  environment: no virtualenv, no PYTHONPATH, not the driver's working directory. Its PATH holds the cloud's shims, the base Python interpreter (an
  image's system Python) and `uv` (an image with uv installed); the node makes its own Python
  environment with the driver's exact versions from a package cache that is warmed once
  (`node_package_cache`) and read offline, since a namespace reaches no index;
- or, for a cloud with an `image`, a *bare* machine, the default on AWS, RunPod and Vast.ai
  (`bare=False`, or SKYWARD_SIM_BARE_AWS=0 / _RUNPOD=0 / _VAST=0, gives the process-only machine
  above, a quicker stand-in for debugging): its own root
  filesystem from the cloud's image, PID, mount and UTS namespaces (`tests.simnet.rootfs_machine`),
  the image's PATH and ENV lines, and a simulated internet on the network (`tests.siminternet`)
  from which the boot downloads what it installs: nothing of the driver's disk is reachable;
- ended (processes and namespace) when the cloud says it ended.

Two ways to learn about machines: a cloud whose API is a real service (moto, the Vast fake) is
*watched* — a background thread polls its listing, like a hypervisor watching its placement queue
(`poll_interval`, `listing`, `is_running`, `boot_listed`); a fake that is ours calls `boot_later`/`end`
itself when its API places or ends a machine.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import ray

from node_providers.local.process_host import ProcessHost
from skyward_ray import names
from skyward_ray.node.startup_script import node_requirements
from tests.images.cloud_images import CloudImage, unpacked
from tests.siminternet.host import SimInternet
from tests.siminternet.tls import tls_files
from tests.simnet import SimHost, SimNetwork
from tests.simnet.cleanup import NETNS_ETC
from tests.simnet.network import IP, SYSTEM_PATH
from tests.simnet.rootfs_machine import RootfsMachine

# Packages a simulated node may install: the driver's Ray, and what the tests put in Image.pip.
NODE_PACKAGES = (f"ray[default]=={ray.__version__}", *node_requirements(), "tabulate==0.9.0")
UV_CACHE = Path(os.environ.get("SKYWARD_SIM_UV_CACHE", Path.home() / ".cache" / "skyward-simaws-uv"))
SHUTDOWN_NAMES = ("shutdown", "poweroff", "halt", "reboot")
ENV = shutil.which("env", path=SYSTEM_PATH) or "/usr/bin/env"
_warm_lock = threading.Lock()
_warmed = False


def uv_binary() -> str:
    """The driver's `uv` (beside its interpreter): the simulated images' uv, and the cache filler."""
    return str(Path(sys.executable).with_name("uv"))


def node_package_cache() -> Path:
    """A uv cache holding the driver's Python's Ray and the tests' packages (filled once, from the
    package index, on the driver's side): the simulated machines install from it offline."""
    global _warmed
    with _warm_lock:
        if not _warmed:
            python = "%d.%d.%d" % sys.version_info[:3]
            env = {**os.environ, "UV_CACHE_DIR": str(UV_CACHE), "UV_PYTHON_DOWNLOADS": "never"}
            with tempfile.TemporaryDirectory(prefix="uvwarm-") as scratch:
                venv = Path(scratch) / "v"
                for argv in ([uv_binary(), "venv", "-q", "--python", python, str(venv)],
                             [uv_binary(), "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                              *NODE_PACKAGES]):
                    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
                    if done.returncode != 0:
                        raise RuntimeError(f"could not fill the simulated nodes' package cache: {done.stderr}")
            _warmed = True
    return UV_CACHE


def nft(host: SimHost, ruleset: str) -> None:
    """Load an nftables ruleset inside a host's namespace (a cloud's port mapping or isolation)."""
    done = subprocess.run([IP, "netns", "exec", host.namespace, "nft", "-f", "-"], input=ruleset, text=True,
                          capture_output=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"nft in {host.namespace} failed: {done.stderr.strip()}")


class SimulatedHosts:
    """Boots and ends the simulated machines of one simulated cloud account (or region).

    A cloud's subclass names its shims and temp-dir prefix, says how it learns of machines, and
    builds each machine's host and environment; keys of the records are the cloud's machine ids."""

    prefix: ClassVar[str] = "sh-"  # of the temp root: short, Ray's unix sockets live below it
    shims: ClassVar[Mapping[str, str]] = {}  # command name → shell script standing in for it
    thread_name: ClassVar[str] = "simhosts"
    idle_timeout: ClassVar[float] = 15.0
    # What a cloud's boot runner does not set, taken out of the machine's environment: no cloud tells
    # a machine its id or address through skyward's own variables (the process host sets them for
    # the local provider's machines); a cloud's subclass adds what its runner leaves unset (HOME).
    unset: ClassVar[tuple[str, ...]] = (names.ENV_INSTANCE_ID, names.ENV_NODE_IP)
    # The cloud's image: with one, a machine can be bare (`bare`): its own root filesystem from the
    # image (`tests.simnet.rootfs_machine`), its software from the simulated internet (`tests.siminternet`).
    # On unless `bare=False` or the cloud's switch (`bare_switch`, e.g.
    # SKYWARD_SIM_BARE_AWS) is "0": what the tests prove then holds on a machine that has only its
    # cloud's image and what it downloads.
    image: ClassVar[CloudImage | None] = None
    bare_switch: ClassVar[str] = ""
    machine_files: ClassVar[Mapping[str, str]] = {}  # a bare machine's shims: path in the machine → script

    def __init__(self, sim: Any, boot_delay: float = 0.0, poll_interval: float | None = None,
                 private_net: str | None = None, bare: bool | None = None) -> None:
        self.sim = sim
        if bare is None:
            bare = self.image is not None and bool(self.bare_switch) and os.environ.get(
                self.bare_switch, "1") != "0"
        self.bare = bare
        self.internet: SimInternet | None = None
        self.image_root: Path | None = None
        self.boot_delay = boot_delay
        self.poll_interval = poll_interval  # None: the cloud's fake calls boot_later/end itself
        self.root = Path(tempfile.mkdtemp(prefix=self.prefix, dir="/tmp"))
        self.shim_dir = self.root / "bin"
        self.host = ProcessHost(self.root / "m")
        self.network = SimNetwork(private_net=private_net)
        self.sim_hosts: dict[Any, SimHost] = {}  # machine id → its host on the simulated network
        self.booted: dict[Any, float] = {}  # machine id → when its machine was started (monotonic)
        self.booted_at: dict[Any, float] = {}  # machine id → wall-clock time its machine was started
        self.boot_seconds: dict[Any, float] = {}  # machine id → seconds from first seen to boot
        self.ended: set[Any] = set()
        self.errors: list[str] = []
        self.ignore: set[Any] = set()  # machines that are not this simulator's to boot
        self.first_seen: dict[Any, float] = {}
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.shim_dir.mkdir(parents=True)
        for name, script in self.shims.items():
            path = self.shim_dir / name
            path.write_text(script)
            path.chmod(0o755)
        (self.shim_dir / "uv").symlink_to(uv_binary())  # an image with uv installed

    @property
    def path(self) -> str:
        """A machine's PATH: shims, the base interpreter (the image's system Python), the system."""
        return os.pathsep.join([str(self.shim_dir), os.path.join(sys.base_prefix, "bin"), SYSTEM_PATH])

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> "SimulatedHosts":
        if self.bare:
            assert self.image is not None, f"{type(self).__name__} has no image to boot bare machines from"
            self.network.open()
            # the image and the internet's content are built once per machine (minutes on a fresh
            # one, both mostly downloads): at once
            with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="image") as pool:
                image_root = pool.submit(unpacked, self.image, tls_files().ca_cert)
                self.internet = SimInternet(self.network, NODE_PACKAGES).start()
                self.image_root = image_root.result()
        else:
            self.uv_cache = node_package_cache()
            self.network.open()
        self.attach()
        if self.poll_interval is not None:
            self._spawn(self._watch, self.thread_name)
        return self

    def stop(self) -> list[str]:
        """Stop watching and end every machine still running; returns their ids (a test may assert none)."""
        if self.stopping.is_set():
            return []
        self.stopping.set()
        # a step under way may still start threads (a machine's end): wait for those as well
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            alive = [t for t in list(self.threads) if t.is_alive() and t is not threading.current_thread()]
            if not alive:
                break
            alive[0].join(timeout=max(0.0, deadline - time.monotonic()))
        self.detach()
        left = self.running()
        try:
            if left:
                self.host.terminate(left)
            self.network.close()  # every host's processes (sshd too), then the namespaces
        finally:
            self.release()
            shutil.rmtree(self.root, ignore_errors=True)
        return left

    def attach(self) -> None:
        """Hook: connect to the cloud's fake (its addresses, logs, callbacks) once the network is open."""

    def detach(self) -> None:
        """Hook: disconnect from the cloud's fake before the machines go."""

    def release(self) -> None:
        """Hook: remove what the cloud made outside the temp root (its machines' /etc/netns files go
        with the network: `tests.simnet.cleanup`)."""

    def running(self) -> list[str]:
        return [i for i in self.host.machines() if self.host.is_running(i)]

    def wait_idle(self, timeout: float | None = None, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Wait until no machine except `keep` runs; returns those still running after `timeout`."""
        deadline = time.monotonic() + (self.idle_timeout if timeout is None else timeout)
        left = [i for i in self.running() if i not in keep]
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = [i for i in self.running() if i not in keep]
        if left:  # why the simulator may not have ended them
            print(f"{type(self).__name__}: {left} still run; {self.diagnosis()}", file=sys.stderr)
        return left

    def diagnosis(self) -> str:
        """The simulator's last errors and where its watch thread is now (a machine the cloud ended
        that still runs means the watch did not get to it)."""
        frames = sys._current_frames()
        stacks = [f"{t.name}:\n" + "".join(traceback.format_stack(frames[t.ident])[-6:])
                  for t in self.threads if t.is_alive() and t.ident in frames and t.name == self.thread_name]
        dead = [t.name for t in self.threads if not t.is_alive() and t.name == self.thread_name]
        return f"errors: {self.errors[-5:]}; watch threads ended: {dead}; now at: {''.join(stacks) or 'none'}"

    def log(self, machine_id: Hashable, lines: int = 40) -> str:
        return self.host.log_tail(str(machine_id), lines)

    # -- a machine's life -----------------------------------------------------------------------------
    def add_host(self, machine_id: Hashable, letter: str, **addresses: Any) -> SimHost:
        """The machine's host on the simulated network (named `<letter><n>`), remembered by its id."""
        with self.lock:
            host = self.network.add_host(f"{letter}{len(self.sim_hosts)}", **addresses)
            self.sim_hosts[machine_id] = host
        return host

    def machine_env(self, machine_id: Hashable) -> dict[str, str]:
        """What every simulated image sets up: on a bare machine, root's HOME (its container
        runtime's; `unset` takes it out where the runner leaves it unset); else the offline package
        mirror and the node's env directory."""
        if self.bare:
            return {"HOME": "/root"}
        # The machine's /tmp, short as a real machine's: Ray's unix sockets live below it (at most
        # 107 bytes; the dashboard's `<session>/sockets/dash_MetricsHead` is among the longest)
        tmp = self.root / "t" / hashlib.sha1(str(machine_id).encode()).hexdigest()[:8]
        tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        return {
            "TMPDIR": str(tmp),
            "UV_CACHE_DIR": str(self.uv_cache),
            "UV_OFFLINE": "1",  # a namespace reaches no package index: the cache is this cloud's mirror
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_LINK_MODE": "hardlink",
            "SKYWARD_ENV_DIR": str(self.host.state_dir / str(machine_id) / "env"),
        }

    def mark_booted(self, machine_id: Hashable, waited: float) -> None:
        self.booted[machine_id] = time.monotonic()
        self.booted_at[machine_id] = time.time()
        self.boot_seconds[machine_id] = waited

    def run_machine(self, machine_id: Hashable, host: SimHost, script: str, private_ip: str,
                    env: Mapping[str, str]) -> None:
        """Start the machine's script as its root process group inside its namespace (on a bare
        machine: as the first process of its own root, with the image's PATH and ENV lines)."""
        if self.bare:
            assert self.image is not None and self.image_root is not None and self.internet is not None
            machine_env = {**self.image.environment(), **{k: v for k, v in env.items() if k != "PATH"}}
            for name in self.unset:
                machine_env.pop(name, None)
            machine = self.rootfs(machine_id, machine_env)
            self.host.boot(str(machine_id), script, private_ip, wrapper=machine.wrapper(host.namespace),
                           inherit_path=False)
            return
        unset = [arg for name in self.unset for arg in ("-u", name)]
        self.host.boot(str(machine_id), script, private_ip, env=dict(env),
                       wrapper=[IP, "netns", "exec", host.namespace, ENV, *unset], inherit_path=False)

    def rootfs(self, machine_id: Hashable, env: Mapping[str, str] | None = None) -> RootfsMachine:
        """A bare machine's root (its files on the driver's side: `RootfsMachine.written`)."""
        assert self.image_root is not None and self.internet is not None, "a bare machine needs start() first"
        return RootfsMachine(self.image_root, self.host.state_dir / str(machine_id) / "fs",
                             f"{self.prefix.strip('-')}{machine_id}", self.internet.hosts_lines(), dict(env or {}),
                             files=self.machine_files)

    def end(self, machine_id: Hashable) -> None:
        """The cloud says this machine ended: its processes and everything in its namespace go
        (its directory stays: its console output is still readable)."""
        with self.lock:
            self.ended.add(machine_id)
            host = self.sim_hosts.get(machine_id)
        if host is None:
            return
        self.host.terminate([str(machine_id)], keep_directory=True)
        host.stop(grace=1.0)  # sshd and anything else in its namespace
        shutil.rmtree(NETNS_ETC / host.namespace, ignore_errors=True)  # its own /etc files (any left go with the network)
        if self.bare:  # its disk (~0.8 GB once Ray is installed) goes, in the background; its console log stays
            disk = self.host.state_dir / str(machine_id) / "fs"
            self._spawn(lambda: shutil.rmtree(disk, ignore_errors=True), f"disk-{machine_id}")

    def _end_recorded(self, machine_id: Hashable) -> None:
        try:
            self.end(machine_id)
        except Exception as error:
            self.errors.append(f"end {machine_id}: {type(error).__name__}: {error}")

    def boot_later(self, machine_id: Hashable, boot: Callable[[float], None]) -> None:
        """The fake placed a machine: `boot(placed)` runs in the background after `boot_delay`
        (the API call returns at once); an error is recorded, not raised."""
        placed = time.monotonic()

        def delayed() -> None:
            try:
                if self.boot_delay:
                    time.sleep(self.boot_delay)
                boot(placed)
            except Exception as error:
                self.errors.append(f"boot {machine_id}: {type(error).__name__}: {error}")

        self._spawn(delayed, f"boot-{machine_id}")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        with self.lock:
            self.threads.append(thread)
        thread.start()

    # -- watching a cloud's listing ---------------------------------------------------------------------
    def listing(self) -> Mapping[Any, Any]:
        """A watched cloud's machines now, by id (its records as the cloud lists them)."""
        raise NotImplementedError

    def is_running(self, record: Any) -> bool:
        raise NotImplementedError

    def boot_listed(self, machine_id: Any, record: Any, waited: float) -> None:
        """Boot watched machine `machine_id` (its `record` as listed), which the cloud says runs,
        `waited` seconds after it was first seen so."""
        raise NotImplementedError

    def before_step(self) -> None:
        """Hook: work a watched cloud does on every poll before its listing is read."""

    def _watch(self) -> None:
        while not self.stopping.wait(self.poll_interval):
            try:
                self._step()
            except Exception as error:  # the cloud may be shutting down; keep the loop alive
                self.errors.append(f"{type(error).__name__}: {error}")

    def _step(self) -> None:
        self.before_step()
        now = time.monotonic()
        live = self.listing()
        for machine_id, record in live.items():
            if machine_id in self.ignore or machine_id in self.booted or not self.is_running(record):
                continue
            first = self.first_seen.setdefault(machine_id, now)
            if now - first >= self.boot_delay:
                self.boot_listed(machine_id, record, now - first)
        for machine_id in list(self.booted):
            if machine_id not in self.ended and (machine_id not in live or not self.is_running(live[machine_id])):
                with self.lock:
                    self.ended.add(machine_id)
                # each in its own thread: ending one machine (its processes, its namespace) takes seconds
                # on a loaded box, and the machines a teardown ends together end together, as on the cloud
                self._spawn(lambda m=machine_id: self._end_recorded(m), f"end-{machine_id}")
