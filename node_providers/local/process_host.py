"""Run a node's startup script as a local process group, and end it completely.

This is the "machine" behind the local provider, and the same runner lets the simulated clouds in
`tests/` boot the instances they create from their own startup scripts. A machine is:

- a `bash` process running the startup script in its own session/process group (`setsid`), so a
  terminal's SIGINT/SIGHUP never reaches it and the whole group can be signalled at once;
- an environment marker `SKYWARD_INSTANCE_ID=<id>` inherited by everything it starts (raylet,
  Ray workers, agents), so even a process that left the group is still found;
- a directory of its own (HOME and `SKYWARD_MACHINE_DIR`, Ray temp dir, log), removed when the
  machine ends. Ending a machine ends the processes whose machine directory is its own: an
  instance id alone is not unique on this host (every simulated Vast.ai account numbers its
  instances from the same first id, and tests run several accounts at once), a directory is.

Machine records live in a JSON file guarded by an `fcntl` lock, so several `ProcessHost` objects
(one per provider instance, in several threads or processes) see the same machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from skyward_ray import names

INSTANCE_MARKER = names.ENV_INSTANCE_ID


@dataclass
class Machine:
    """What the host remembers about one machine (a process group started from a script)."""

    instance_id: str
    pid: int
    create_time: float
    ip: str
    directory: str
    log_path: str
    tags: dict[str, str] = field(default_factory=dict)
    terminated: bool = False


def machine_identity(proc: psutil.Process, variable: str = INSTANCE_MARKER) -> str | None:
    """The instance id a process belongs to: its marker variable, or else the machine directory
    its HOME points to (named after the instance). Ray starts some helpers (its agents) with an
    environment of its own making, which may drop the marker but keeps HOME."""
    env = proc.environ()
    value = env.get(variable)
    if value is None and env.get("HOME"):
        value = os.path.basename(env["HOME"].rstrip("/"))
    return value


def machine_directory(proc: psutil.Process) -> str | None:
    """The machine directory a process belongs to: its `SKYWARD_MACHINE_DIR`, or else its HOME (Ray
    starts some helpers with an environment of its own making, which keeps HOME); unique on this
    host, where an instance id need not be."""
    env = proc.environ()
    directory = env.get(names.ENV_MACHINE_DIR) or env.get("HOME")
    return os.path.normpath(directory) if directory else None


def identified_processes(variable: str = INSTANCE_MARKER) -> Iterator[tuple[psutil.Process, str | None]]:
    """Every live (not zombie) process here, with the machine it belongs to, if any: read once, when
    the process is listed (one that ends meanwhile is left out, never an error)."""
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue  # already dead; its parent (or init) reaps it
            yield proc, machine_identity(proc, variable)
        except (psutil.Error, OSError):
            continue


def processes_with_marker(marker_value: str, variable: str = INSTANCE_MARKER) -> list[psutil.Process]:
    """Every live process of the machine `marker_value` (a prefix match when it ends with '*')."""
    wanted = marker_value.rstrip("*")
    if marker_value.endswith("*"):
        return [proc for proc, value in identified_processes(variable) if value and value.startswith(wanted)]
    return [proc for proc, value in identified_processes(variable) if value == wanted]


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def end_processes(processes: list[psutil.Process], grace: float) -> None:
    """SIGTERM all, wait up to `grace` seconds, then SIGKILL whatever is left; with no grace,
    SIGKILL all at once (a machine powered off: nothing of it needs to wind down).

    A zombie counts as ended: it is dead, only not yet reaped by its parent (or by init once the
    parent is gone), and waiting for it would stall teardown.
    """
    alive = processes
    if grace > 0:
        for proc in processes:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                proc.send_signal(signal.SIGTERM)
        alive = _wait_until_gone(processes, grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            proc.kill()
    _wait_until_gone(alive, 5)


def _wait_until_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if not _gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if not _gone(p)]
    return alive


def _private_file(path: Path, flags: int) -> int:
    """Open `path` as a file only its owner can read (0600 from its creation); returns the descriptor."""
    return os.open(path, flags | os.O_NOFOLLOW, 0o600)


class ProcessHost:
    """Starts, lists and ends script-booted machines; state shared through `state_dir/machines.json`."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._state_file = self.state_dir / "machines.json"
        self._lock_file = self.state_dir / "machines.lock"

    # -- state -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked_state(self) -> Iterator[dict[str, Machine]]:
        with open(_private_file(self._lock_file, os.O_RDWR | os.O_CREAT), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                machines = self._read()
                yield machines
                tmp = self._state_file.with_suffix(".tmp")
                with open(_private_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as out:
                    out.write(json.dumps({k: asdict(v) for k, v in machines.items()}, indent=1))
                tmp.replace(self._state_file)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Machine]:
        if not self._state_file.exists():
            return {}
        raw = json.loads(self._state_file.read_text() or "{}")
        return {k: Machine(**v) for k, v in raw.items()}

    def machines(self) -> dict[str, Machine]:
        with self._locked_state() as machines:
            return dict(machines)

    def update_tags(self, instance_id: str, tags: dict[str, str]) -> None:
        with self._locked_state() as machines:
            machines[instance_id].tags.update(tags)

    # -- lifecycle ---------------------------------------------------------------------------
    def boot(
        self,
        instance_id: str,
        script: str,
        ip: str,
        env: dict[str, str] | None = None,
        tags: dict[str, str] | None = None,
        wrapper: list[str] | None = None,
        inherit_path: bool = True,
    ) -> Machine:
        """Start `script` as a new machine. Returns at once; the script boots in the background.

        `wrapper` is an argv prefix that execs the script somewhere else (e.g. `ip netns exec NS`:
        the same process, in a network namespace). With `inherit_path=False` the machine's PATH is
        only what `env` gives it.
        """
        directory = self.state_dir / instance_id
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        script_path = directory / "startup.sh"
        with open(_private_file(script_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as out:
            out.write(script)
        log_path = directory / "node.log"
        child_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin") if inherit_path else "/usr/bin:/bin",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": str(directory),
            "TMPDIR": str(directory),
            **(env or {}),
            INSTANCE_MARKER: instance_id,
            "SKYWARD_NODE_IP": ip,
            names.ENV_MACHINE_DIR: str(directory),
        }
        with open(_private_file(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as log:
            proc = subprocess.Popen(
                [*(wrapper or []), "bash", str(script_path)],
                cwd=directory,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                umask=0o077,  # what the machine writes is its owner's only
            )
        machine = Machine(
            instance_id=instance_id,
            pid=proc.pid,
            create_time=psutil.Process(proc.pid).create_time(),
            ip=ip,
            directory=str(directory),
            log_path=str(log_path),
            tags=dict(tags or {}),
        )
        with self._locked_state() as machines:
            machines[instance_id] = machine
        return machine

    def is_running(self, instance_id: str) -> bool:
        machine = self.machines().get(instance_id)
        return machine is not None and not machine.terminated and self.root_alive(machine)

    @staticmethod
    def root_alive(machine: Machine) -> bool:
        try:
            proc = psutil.Process(machine.pid)
            if abs(proc.create_time() - machine.create_time) > 0.05:
                return False
            if proc.status() == psutil.STATUS_ZOMBIE:
                proc.wait(0)  # reap our own child so it does not linger
                return False
            return True
        except (psutil.NoSuchProcess, psutil.TimeoutExpired, ChildProcessError):
            return False

    def terminate(self, instance_ids: list[str], grace: float = 1.0, keep_directory: bool = False) -> None:
        """End each machine: every process of its group and every process carrying its marker
        (`grace`: seconds between SIGTERM and SIGKILL; 0 kills at once, see `end_processes`)."""
        with self._locked_state() as machines:
            targets = [machines[i] for i in instance_ids if i in machines]
            for machine in targets:
                machine.terminated = True
        # A node still booting may spawn a process (e.g. Ray's agents) after a scan has been taken;
        # scan again until a pass finds nothing, so nothing is orphaned.
        deadline = time.monotonic() + 15
        found = self._processes_of(targets)
        while found and time.monotonic() < deadline:
            end_processes(found, grace)
            time.sleep(0.1)
            found = self._processes_of(targets)
        for machine in targets:
            with contextlib.suppress(ChildProcessError, psutil.NoSuchProcess, psutil.TimeoutExpired):
                psutil.Process(machine.pid).wait(0)
            if not (keep_directory or os.environ.get(names.ENV_KEEP_NODE_LOGS)):
                shutil.rmtree(machine.directory, ignore_errors=True)

    def _processes_of(self, targets: list[Machine]) -> list[psutil.Process]:
        """One pass over the process table: each live machine's process group, and every process
        whose machine directory is one of theirs (`machine_directory`).

        Not the instance id alone: another host's machine may carry the same one (two simulated
        Vast.ai accounts in two test workers both number from 7001; ending one account's 7001 used
        to end the other's head mid-boot). The group is used only while its leader is the
        machine's own root (same pid and start time): pids wrap around (32768 here), and a dead
        machine's group id may by now belong to someone else, such as the test runner itself.
        """
        groups = {m.pid for m in targets if self.root_alive(m)}
        directories = {os.path.normpath(m.directory) for m in targets}
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if machine_directory(proc) in directories or os.getpgid(proc.pid) in groups:
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    def log_tail(self, instance_id: str, lines: int = 30) -> str:
        machine = self.machines().get(instance_id)
        if machine is None or not Path(machine.log_path).exists():
            return "(no log)"
        text = Path(machine.log_path).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

