"""Detached pools: a pool that exists between commands, owned by a keeper process, never forgotten.

`skyward-ray up` and `sky.Compute(...).up(name=...)` call `start`: it checks the name and the plan
here (bad input is refused before anything is provisioned), then starts the keeper
(`skyward_ray.api.keeper`, its own session, its own 0600 log in the runtime root), hands it the
pool's arguments through a pipe (secrets never touch a file), and waits until the pool's state file
says the keeper is ready, or the keeper exits (then its error and log tail are raised, and the
keeper has already ended whatever it started).

`attach(name)` is how any process (a notebook, a second script) uses a pool it did not create:
an `AttachedPool` joins it as a Ray driver on first use, through the keeper's addresses (the SSH
tunnel's local ends on clouds), with the same operators as `sky.Compute`, and leaves it without
ending it. `environment(record)` is what plain Ray code needs (`skyward-ray env NAME`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from skyward_ray import errors, names
from skyward_ray.api.keeper_watch import KeeperWatch
from skyward_ray.api.operations import PoolOperations
from skyward_ray.api.request import PoolRequest
from skyward_ray.api.staging import StagedCode, job_runtime_env
from skyward_ray.cluster import activity, launcher, pool_admin, pool_state
from skyward_ray.cluster.driver import DriverConnection
from skyward_ray.console import console
from skyward_ray.errors import PoolClosedError, ProvisioningError, SpecError
from skyward_ray.planning.detached import DetachedSpec
from skyward_ray.planning.image import Image
from skyward_ray.planning.nodes import NodeInfo
from skyward_ray.planning.offers import Offer
from skyward_ray.planning.providers import provider_class

FAILED_MARK = "skyward keeper failed: "  # the keeper's last line when the pool could not be brought up
_TYPES = {name: getattr(errors, name) for name in dir(errors) if isinstance(getattr(errors, name), type)}


def keeper_log(name: str) -> Path:
    """The keeper's log: 0600 in a 0700 directory of the runtime root (it may name addresses)."""
    directory = pool_state.runtime_root() / "keepers"
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    return directory / f"{name}.log"


def check_name_free(name: str) -> None:
    """A name in use by a live pool, or by one whose leftovers were not collected, is refused."""
    record = pool_state.read_record(name)
    if record is None:
        return
    if record.owner.alive() is False:
        raise SpecError(f"name={name!r}: a pool of that name was left behind by a process that is gone. Fix: "
                        f"`skyward-ray gc` (or `skyward-ray down {name}`) ends it; then bring this one up")
    raise SpecError(f"name={name!r} is already used by a live pool (owner pid {record.owner.pid}). Fix: pick "
                    f"another name, or end that pool first with `skyward-ray down {name}`")


def start(request: PoolRequest, name: str | None, *, idle_timeout: Any, max_lifetime: Any, dashboard: bool,
          ready_timeout: float | None = None) -> pool_state.PoolRecord:
    """Start a keeper for the pool `request` asks for (a `sky.Compute`'s) and wait until it is
    ready. Returns the pool's record."""
    spec = DetachedSpec(name=name or launcher.new_cluster_name(), idle_timeout=idle_timeout,
                        max_lifetime=max_lifetime, dashboard=dashboard)
    check_name_free(spec.name)
    request.check_cost(request.plan().chosen)  # NoOffersError, or the cost guard's refusal, here, not in the keeper
    log = keeper_log(spec.name)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    root = str(Path(__file__).resolve().parents[2])  # skyward_ray and node_providers live side by side
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])]),
           "PYTHONUNBUFFERED": "1"}
    with os.fdopen(fd, "w") as out:
        keeper = subprocess.Popen([sys.executable, "-m", "skyward_ray.api.keeper"], stdin=subprocess.PIPE,
                                  stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                  close_fds=True)
    assert keeper.stdin is not None
    payload = {"specs": request.specs, "arguments": request.arguments, "detached": spec.model_dump(),
               "log": str(log)}
    try:
        keeper.stdin.write(pickle.dumps(payload))
        keeper.stdin.close()
        return _wait_ready(keeper, spec.name, log, ready_timeout)
    except BaseException:  # Ctrl-C while it boots, or a timeout: the keeper ends what it started
        _stop(keeper)
        raise


def _wait_ready(keeper: subprocess.Popen[bytes], name: str, log: Path, timeout: float | None) -> pool_state.PoolRecord:
    deadline = None if timeout is None else time.monotonic() + timeout
    with console.status(f"bringing pool {name} up (keeper pid {keeper.pid}, log {log})"):
        while True:
            record = pool_state.read_record(name)
            if record is not None and record.owner.pid == keeper.pid and (record.detached or {}).get("status") == "ready":
                return record
            if keeper.poll() is not None:
                raise _keeper_error(name, log, keeper.returncode)
            if deadline is not None and time.monotonic() > deadline:
                raise errors.BootTimeoutError(f"pool {name} was not ready within {timeout:g}s; it is being ended. "
                                              f"Last lines of the keeper's log ({log}):\n{_tail(log)}")
            time.sleep(0.2)


def _keeper_error(name: str, log: Path, returncode: int) -> BaseException:
    """The keeper's own error (its type and message), with the tail of its log."""
    text = log.read_text(errors="replace") if log.exists() else ""
    failed = [line[len(FAILED_MARK):] for line in text.splitlines() if line.startswith(FAILED_MARK)]
    kind, _, message = (failed[-1] if failed else "").partition(": ")
    cls = _TYPES.get(kind, ProvisioningError)
    if not issubclass(cls, errors.SkywardError):
        cls = ProvisioningError
    why = f"{kind}: {message}" if failed else f"the keeper exited with status {returncode}"
    return cls(f"pool {name} could not be brought up ({why}); nothing of it is left running.\n"
               f"Last lines of the keeper's log ({log}):\n{_tail(log)}")


def _tail(log: Path, lines: int = 25) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def _stop(keeper: subprocess.Popen[bytes], timeout: float = 240.0) -> None:
    """SIGTERM the keeper (it tears its pool down) and wait for it; SIGKILL only past `timeout`."""
    if keeper.poll() is None:
        keeper.send_signal(signal.SIGTERM)
        try:
            keeper.wait(timeout)
        except subprocess.TimeoutExpired:
            keeper.kill()
            keeper.wait(10)


# -- what plain Ray code needs ----------------------------------------------------------------------
def environment(record: pool_state.PoolRecord) -> dict[str, str]:
    """RAY_ADDRESS, the token settings and (with a dashboard) the job API's address, for `eval`."""
    state = record.detached or {}
    env = {"RAY_ADDRESS": state["ray_address"], "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": state["auth_token"]}
    if state.get("dashboard_address"):
        env["RAY_API_SERVER_ADDRESS"] = state["dashboard_address"]
    return env


def ready_record(name: str) -> pool_state.PoolRecord:
    """The record of a detached pool that is up now, or an error saying why there is none."""
    record = pool_state.read_record(name)
    if record is None or record.kind != "keeper":
        raise PoolClosedError(f"no detached pool named {name!r} is up (it has ended, or never came up; "
                              f"`skyward-ray status` lists pools; "
                              f"`skyward-ray up {name}` brings one up)")
    if record.owner.alive() is False:
        raise PoolClosedError(f"pool {name!r}'s keeper (pid {record.owner.pid}) is gone, so the pool is ending "
                              f"itself; `skyward-ray gc` ends what is left now")
    if (record.detached or {}).get("status") == "ending":
        raise PoolClosedError(f"pool {name!r} is ending (`skyward-ray down`, its idle timeout or its max lifetime), "
                              f"so calls to it cannot finish; bring a new one up with `skyward-ray up`")
    if (record.detached or {}).get("status") != "ready":
        raise PoolClosedError(f"pool {name!r} is {(record.detached or {}).get('status', 'starting')}, not ready yet")
    return record


def attach(name: str) -> "AttachedPool":
    """A handle on the detached pool `name`: the operators work on it; closing it leaves the pool up."""
    return AttachedPool(ready_record(name))


class AttachedPool(PoolOperations):
    """A detached pool seen from a process that did not create it (or that let a keeper own it).

    It joins the pool as a Ray driver on first use (or on entering `with`), ships this process's
    own modules the way `sky.Compute` does, and leaves on `close()`/`detach()` or at the end of the
    `with` block: the pool stays up for others, until `down()` or its own clocks end it.
    """

    def __init__(self, record: pool_state.PoolRecord) -> None:
        super().__init__()
        self._record = record
        self._connection: DriverConnection | None = None
        self._code = StagedCode.nothing()
        self._closed = False
        self._keeper_watch: KeeperWatch | None = None  # while joined: raises in our waits when the pool ends

    # -- facts ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._record.name

    @property
    def ray_address(self) -> str:
        return str((self._record.detached or {})["ray_address"])

    @property
    def env(self) -> dict[str, str]:
        """What plain Ray code needs to reach this pool (RAY_ADDRESS and the token)."""
        return environment(self._record)

    @property
    def offer(self) -> Offer:
        return Offer.model_validate((self._record.detached or {})["offer"])

    @property
    def cost(self) -> float:
        """USD spent so far, as the keeper last counted it (every few seconds)."""
        record = pool_state.read_record(self.name) or self._record
        return float((record.detached or {}).get("cost") or 0.0)

    @property
    def nodes(self) -> list[NodeInfo]:
        """The pool's live nodes, head first, from the head's GCS node table."""
        self.ensure_open()
        assert self._connection is not None
        offer = self.offer
        found = [NodeInfo(index=int(info.labels.get(names.NODE_INDEX, 0)), instance_id=instance_id,
                          ray_node_id=info.node_id.hex(), ip=info.node_manager_address, provider=offer.provider,
                          accelerator=offer.accelerator, accelerator_count=offer.count,
                          spot=info.labels.get("ray.io/market-type") == "spot")
                 for instance_id, info in launcher.alive_nodes(self._connection.gcs_client()).items()]
        return sorted(found, key=lambda n: n.index)

    # -- joining and leaving -------------------------------------------------------------------
    def ensure_open(self) -> None:
        """Join the pool as its Ray driver unless joined already; `PoolClosedError` once closed,
        or when the pool is not up any more."""
        if self._closed:
            raise PoolClosedError(f"this handle on pool {self.name} was closed; `sky.attach({self.name!r})` again")
        if self._keeper_watch is not None and self._keeper_watch.ended is not None:
            raise self._keeper_watch.ended
        if self._connection is not None and self._connection.connected:
            return
        import ray

        if ray.is_initialized():
            raise SpecError("this process is already a Ray driver (ray.init was called, or a pool is open); call "
                            f"ray.shutdown() or leave the other pool before using pool {self.name}")
        self._record = ready_record(self.name)  # the pool may have ended since
        state = self._record.detached or {}
        connection = DriverConnection(state["gcs_address"], state["ray_address"], state["auth_token"], None,
                                      node_ip=state.get("node_ip"))
        try:
            self._join(connection)
        except BaseException:
            connection.disconnect()  # gives back this process's Ray settings (the token) as they were
            raise
        self._connection = connection
        self._keeper_watch = KeeperWatch(self.name, lambda: ready_record(self.name),
                                         self.dispatcher.watch.interrupt_waits)
        self._keeper_watch.start()

    def _join(self, connection: DriverConnection) -> None:
        assert self._record is not None
        gcs = connection.gcs_client()  # made before joining, as the launcher does: `nodes` reads the GCS's table
        # Before anything slow (staging the code, `ray.init`): the keeper's idle clock must not run out mid-join.
        joining = activity.announce_joining(gcs)
        try:
            image = Image(pip=list((self._record.detached or {}).get("image_pip") or []))
            self._code = StagedCode.find(image)
            modules = self._code.stage()
            self.dispatcher.shipped = self._code.shipped
            shares_python = provider_class(self._record.provider).nodes_share_driver_python
            connection.runtime_env = job_runtime_env(image, shares_python, modules)
            connection.connect(heartbeat=False)  # the keeper beats; a client that leaves must not end the pool
        except BaseException:
            self._forget_code()
            raise
        finally:
            activity.withdraw_joining(gcs, joining)

    def connect(self) -> "AttachedPool":
        self.ensure_open()
        return self

    def close(self) -> None:
        """Leave the pool (this process stops being its Ray driver); the pool stays up."""
        self._closed = True
        if self._keeper_watch is not None:
            self._keeper_watch.stop()
        if self._connection is not None:
            self.dispatcher.before_disconnect()
            self._connection.disconnect()
            self._connection = None
        self._forget_code()

    detach = close

    def down(self) -> None:
        """End the pool for everyone: its keeper tears it down (as `skyward-ray down NAME` does)."""
        self.close()
        record = pool_state.read_record(self.name)
        if record is not None and not pool_admin.end_keeper(record):
            survey = pool_admin.survey(providers=[record.provider])
            for pool in survey.pools:
                if pool.name == self.name:
                    pool_admin.end(pool)

    def _forget_code(self) -> None:
        self.dispatcher.shipped = frozenset()
        self._code.release()

    def __enter__(self) -> "AttachedPool":
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        joined = "joined" if self._connection is not None else ("closed" if self._closed else "not joined")
        return f"<sky.attach {self.name} {joined}, {self.ray_address}>"


__all__ = ["AttachedPool", "FAILED_MARK", "attach", "check_name_free", "environment", "keeper_log", "ready_record",
           "start"]
