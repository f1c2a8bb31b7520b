"""A node's `ray start`, run by its boot script as `python -c <this> head|worker start ARGS...`.

Why not `ray start --block`: its Python parent (Ray's CLI imported, ~200 MB resident) stays on every
node only to wait for Ray's processes. Here `ray start` runs without --block, and once Ray's
processes are up this process becomes (exec, so it keeps the pid the boot script and the head's
watchdog know as RAY_PID) `WATCH`, a bash loop over the processes `ray start` started. As with
--block: when one of them exits the others are ended and it exits 1; SIGTERM ends them all (SIGKILL
after 5 s). They are its children, and bash reaps any child that exits, so a dead one never passes
for alive. Until the exec, a SIGTERM ends what Ray started so far (Ray's processes outlive a
`ray start` that ends).

A worker first waits for the head's port (the head answering calls the boot deadline off), then for
the GCS to list the head node alive: Ray's worker start needs that too, but while it is not listed
Ray retries only every 2 s, so a worker that reached the GCS before the head's raylet registered
joined up to 2 s late. It imports Ray's CLI before waiting: that CPU is spent while the head boots.

Ray's CLI module also loads its `serve`, `job` and state (`list`, `get`, ...) command groups, each
optional to it (a failed import leaves that group out, nothing else): `ray start` needs none, and
they are over half the CLI's import (~0.6 s of CPU per node, where every node of a local pool boots
at once on the same cores). A None in sys.modules makes their import fail at once.

With SKYWARD_NO_RAY_CLIENT_SERVER=1 (a local pool's head: its drivers join the GCS directly) the
head runs no Ray Client server. Ray's CLI starts one on every head where grpc imports (no flag turns
it off; a port below 1024 is refused), ~90 MB and ~0.6 s of CPU at boot; with no port Ray starts
none, as `ray.init()` and Ray's own `Cluster` do. The CLI is told Ray Client is not installed, the
one test it makes before it picks its default port.

With SKYWARD_HEAD_TEMP_DIR set (a worker on its head's own host: a local pool's), the worker runs no
log monitor, and its session's `logs` directory is a link to the head's: the head's one log monitor
then streams every node's task output to the driver, as in Ray's own `cluster_utils.Cluster`, whose
nodes share one session directory (Ray's advice is one log monitor per host, "to avoid log
duplication"; each is a Python process with Ray imported, ~80 MB). Only the logs are shared: sockets
and runtime environments stay in the worker's own session directory, since Ray names them by
looking for a free name (which races between workers that start at once) and two agents would build
and delete the same environments. The session's name comes from the head's GCS (Ray's worker start
reads it there too), so the link is made once the head answers, before `ray start` makes the dir.

Ray's `ray start` gives the node's raylet 30 s to register with the GCS (a constant inside Ray 2.60's
`Node.__init__`, no setting) and then fails the node. On a starved machine that is too short: a
local pool's head booting beside three busy test workers on two cores took longer in CI, and the
whole pool was lost for it. Ray's wait asks `services.get_node` in a loop; here that lookup itself
keeps asking while the raylet Ray started is alive, up to RAYLET_REGISTER_WAIT_S, so a slow raylet
is waited for; a dead one is started again (below) or fails the node at once. The driver's boot
timeout bounds it too.

The raylet itself gives the dashboard agent it starts 15 s to write its port files (another
constant, in Ray's C++; fixing the ports on the command line does not skip that wait, nor does
RAY_agent_register_timeout_ms) and aborts past it, before it registers with the GCS. The agent
imports half of Ray's Python dependencies first: on a starved or cold machine (a pool's node beside
busy test workers in CI, at load 15 on two cores; a cloud disk restored from a snapshot reads each
block slowly the first time) it misses that. So when the raylet exits before it registered, this
process ends what that raylet started (its agents, orphaned by its death: this process is their
subreaper until Ray is up), removes the port files they wrote and the sockets the raylet bound, and
starts the raylet again, up to RAYLET_ATTEMPTS times in all: the
next time the agent's files are in the page cache, and the load that starved it may have passed.
Only the raylet is started again, inside the same `ray start`: the node keeps its id and session,
and a head keeps its GCS, whose cluster id the driver's GCS client, the head's watchdog and a keeper
already hold (a GCS started again has a new one, and refuses them: "WrongClusterID").

A head's Ray Client server (the way every cloud pool's driver reaches the cluster) starts before the
raylet and, when the runtime env agent's port is left to Ray to pick, looks the node up in the GCS
to learn it, for 30 s (another constant: `get_node_with_retry`'s default) before it exits; a raylet
that is slow or started again misses that, and the head came up without Ray Client. So a head that
runs one gets a fixed runtime env agent port, a free one below Linux's ephemeral range, unless its
command line gives one; the server then has nothing to look up.

Its notes say "skyward ray start: ...", not "skyward: ...": they are not boot steps (the launcher
reports a failed node's last "skyward: " line as the step it failed at).

This file runs standalone on the node (packed into the boot script), so it imports nothing from
skyward_ray.
"""

import contextlib
import functools
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

NO_RAY_CLIENT_SERVER_ENV = "SKYWARD_NO_RAY_CLIENT_SERVER"
HEAD_TEMP_DIR_ENV = "SKYWARD_HEAD_TEMP_DIR"
RAYLET_REGISTER_WAIT_S = 300.0
RAYLET_ATTEMPTS = 4
# above Ray's worker ports, below Linux's ephemeral range (the local provider's PORT_RANGE; this
# file cannot import it)
RUNTIME_ENV_AGENT_PORTS = (20000, 32768)
PR_SET_CHILD_SUBREAPER = 36  # prctl(2)
WATCH = """\
stop() { kill -TERM "$@" 2>/dev/null; for _ in $(seq 50); do up=; for p; do kill -0 "$p" 2>/dev/null && up=1; done
  [ -n "$up" ] || return 0; sleep 0.1; done; kill -KILL "$@" 2>/dev/null; }
trap 'stop "$@"; exit 143' TERM INT HUP
while :; do
  for p; do kill -0 "$p" 2>/dev/null || { echo "ray watch: Ray's process $p exited; stopping the others"; stop "$@"; exit 1; }; done
  sleep 1 & wait $!
done
"""


def started() -> list[str]:
    """The live processes this one started (Ray's GCS, raylet, log monitor, ...): its children."""
    me, found = str(os.getpid()), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                state, parent = stat.read().rsplit(")", 1)[1].split()[:2]
            if parent == me and state != "Z":  # a child already dead is not one to watch
                found.append(pid)
        except (OSError, ValueError):
            pass
    return found


def _stop(*_: object) -> None:
    for pid in started():
        try:
            os.kill(int(pid), signal.SIGTERM)
        except OSError:
            pass
    os._exit(143)


def _subreaper(on: bool) -> None:
    """Whether Ray's processes orphaned by a dead parent (the raylet's agents) become this one's children."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def _end_started(keep: set[str], grace_s: float = 10.0) -> None:
    """End every process this one started or adopted but those in `keep`, and reap them: SIGTERM, then
    SIGKILL past `grace_s`."""
    deadline = time.monotonic() + grace_s
    while True:
        live = [pid for pid in started() if pid not in keep]
        if not live:
            break
        for pid in live:
            try:
                os.kill(int(pid), signal.SIGTERM if time.monotonic() < deadline else signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)
        _reap_ended_children()


def _reap_ended_children() -> None:
    with contextlib.suppress(ChildProcessError):  # none left
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _raylet_alive() -> bool:
    """Whether a raylet this process started is still running (a dead one is a zombie child, left out)."""
    for pid in started():
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip() == "raylet":
                    return True
        except OSError:
            pass
    return False


class _Raylet:
    """This node's raylet, as Ray's `Node.start_raylet` started it, so that it can be started again."""

    def __init__(self) -> None:
        self.node: Any = None  # Ray's Node, once it started its raylet
        self.attempt = 1
        self._start: Callable[[], None] = lambda: None
        self._kept: set[str] = set()  # processes started before the raylet (GCS, log monitor, ...)
        self._ports_kept: set[Path] = set()  # port files written before it (a head's GCS port)

    def restartable(self, node_class: type) -> None:
        """Wrap Ray's `Node.start_raylet` so that what it does can be done again."""
        start_raylet = node_class.start_raylet

        def start(node: Any, *args: object, **kwargs: object) -> None:
            self.node, self._start = node, functools.partial(start_raylet, node, *args, **kwargs)
            self._kept, self._ports_kept = set(started()), self._port_files()
            self._start()

        node_class.start_raylet = start

    def start_over(self) -> bool:
        """Start the raylet again if attempts are left (False: none are, or none was started)."""
        if self.node is None or self.attempt >= RAYLET_ATTEMPTS:
            return False
        self.attempt += 1
        print(f"skyward ray start: the raylet exited before it registered with the GCS"
              f"{_why_raylet_exited(self.node.get_logs_dir_path())}; "
              f"starting it again (attempt {self.attempt} of {RAYLET_ATTEMPTS})", flush=True)
        _end_started(keep=self._kept)
        self.node.all_processes.pop("raylet", None)  # Ray asserts it starts the raylet once
        # The ended agents' port files (the next raylet would read a dead agent's port from them: for
        # the runtime env agent it then exits 30 s after it registered) and the sockets the dead
        # raylet left bound.
        sockets = (Path(self.node.plasma_store_socket_name), Path(self.node.raylet_socket_name))
        for path in (*(self._port_files() - self._ports_kept), *sockets):
            path.unlink(missing_ok=True)
        self._start()
        return True

    def _port_files(self) -> set[Path]:
        """Ray's port files of this node (`<port name>_<node id>` in its session dir)."""
        return set(Path(self.node.get_session_dir_path()).glob(f"*_{self.node.node_id}"))


def _why_raylet_exited(logs_dir: str) -> str:
    """The failed check a raylet aborted on, from its newest log (empty when there is none)."""
    try:
        logs = sorted(Path(logs_dir).glob("raylet*.out"), key=lambda log: log.stat().st_mtime)
        failed = [line for line in logs[-1].read_text(errors="replace").splitlines() if "Check failed" in line]
    except (OSError, IndexError):
        return ""
    if not failed:
        return ""
    check = failed[-1].split("Check failed", 1)[1].lstrip(": ")
    return " (" + re.sub(r"^[\w.]+[(][)] ", "", check) + ")"  # Ray's "statussetor123.has_value() " says nothing


def _patient_node_lookup(services: ModuleType, raylet: _Raylet) -> None:
    """Make Ray's lookup of this node in the GCS wait for a slow raylet instead of failing at 30 s,
    and start a raylet that exited before it registered again."""
    get_node = services.get_node

    def lookup(*args: object, **kwargs: object) -> object:
        began = time.monotonic()
        while True:
            try:
                found = get_node(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() - began > RAYLET_REGISTER_WAIT_S:
                    raise
                if not _raylet_alive() and not raylet.start_over():
                    raise
                time.sleep(0.2)
                continue
            waited = time.monotonic() - began
            if waited > 10:
                print(f"skyward ray start: the raylet registered with the GCS after {waited:.0f}s", flush=True)
            return found

    services.get_node = lookup


def _give_the_runtime_env_agent_a_port() -> None:
    """Fix the runtime env agent's port on the command line (unless given): a free one, 20000-32767."""
    if any(arg.startswith("--runtime-env-agent-port") for arg in sys.argv):
        return
    for port in range(*RUNTIME_ENV_AGENT_PORTS):
        with socket.socket() as probe:
            try:
                probe.bind(("", port))
            except OSError:
                continue
        sys.argv.append(f"--runtime-env-agent-port={port}")
        return


def _wait_for_head(ray: object) -> object | None:
    """Wait for the head's GCS to list the head alive; return a client of it (None: it refused our token)."""
    from ray._raylet import GcsClient

    host, port = os.environ["SKYWARD_HEAD_IP"], int(os.environ["SKYWARD_GCS_PORT"])
    deadline = time.monotonic() + float(os.environ["SKYWARD_HEAD_WAIT"])

    def pause() -> None:
        if time.monotonic() > deadline:
            print("skyward: head never answered", flush=True)
            sys.exit(3)
        time.sleep(0.1)

    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            break
        except OSError:
            pause()
    open(os.environ["SKYWARD_BOOT_DONE"], "a").close()  # the head answers: the boot deadline is off
    client = None
    while True:
        try:
            client = client or GcsClient(address=f"{host}:{port}")
            if any(node.is_head_node and node.state == 0 for node in client.get_all_node_info(timeout=1).values()):
                return client  # 0: ALIVE
        except ray.exceptions.AuthenticationError:
            return None  # a token the head refuses: `ray start` fails at once and says so in its own words
        except Exception:  # the GCS is still starting
            pass
        pause()


def _share_head_logs(client: object, head_temp_dir: str) -> None:
    """Make this worker's session `logs` a link to the head's, and start no log monitor here."""
    session = client.internal_kv_get(b"session_name", b"session", timeout=10).decode()  # type: ignore[attr-defined]
    own_temp_dir = next(arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("--temp-dir="))
    session_dir = os.path.join(own_temp_dir, session)
    os.makedirs(session_dir, exist_ok=True)
    link = os.path.join(session_dir, "logs")
    if not os.path.lexists(link):
        os.symlink(os.path.join(head_temp_dir, session, "logs"), link)
    sys.argv.append("--include-log-monitor=false")


def main() -> None:
    role = sys.argv[1]
    for optional in ("ray.serve.scripts", "ray.dashboard.modules.job.cli", "ray.util.state.state_cli"):
        sys.modules[optional] = None
    import ray._private.node
    import ray._private.services
    import ray.scripts.scripts as ray_cli

    raylet = _Raylet()
    raylet.restartable(ray._private.node.Node)
    _patient_node_lookup(ray._private.services, raylet)
    if role == "worker":
        client = _wait_for_head(ray_cli.ray)
        if client is not None and os.environ.get(HEAD_TEMP_DIR_ENV):
            _share_head_logs(client, os.environ[HEAD_TEMP_DIR_ENV])
    elif os.environ.get(NO_RAY_CLIENT_SERVER_ENV) == "1":
        ray_cli.get_ray_client_dependency_error = lambda: ImportError("no Ray Client server on this head")
    else:
        _give_the_runtime_env_agent_a_port()
    signal.signal(signal.SIGTERM, _stop)
    _subreaper(True)
    sys.argv = ["ray", *sys.argv[2:]]
    try:
        ray_cli.main()
    except SystemExit as done:
        if done.code:
            raise
    _subreaper(False)  # Ray is up: what its processes orphan from now on is not this node's watch's to keep
    sys.stdout.flush()
    sys.stderr.flush()
    watched = started()
    if not watched:  # nothing to watch would be a node that never ends
        sys.exit("ray watch: `ray start` left no process running")
    os.execvp("bash", ["bash", "-c", WATCH, "skyward-ray-watch", *watched])


if __name__ == "__main__":
    main()
