"""The head's end of the call channel: an actor of the pool that submits the driver's calls as Ray tasks.

Why on the head: a call the driver sends through Ray Client costs two round trips or more (see
`channel_wire`); this actor runs in the cluster, as a Ray driver would, so it submits a task and
awaits its result at in-cluster speed, and the driver pays one round trip per call. Ray still
schedules, retries and places every call: the actor only submits `ray.remote(fn).options(...)`
tasks, in the pool's job (the actor is the job's, so its tasks get the job's runtime env and
the modules it ships).

It listens on 127.0.0.1 of the head only (an ephemeral port, `start()`'s answer): the driver
reaches it through its pinned SSH session (`ssh -W`), nothing else from outside can. The
first frame must carry the pool's token (compared in constant time) before anything is unpickled.

A session outlives its connection: outcomes are kept until the driver acknowledges them, so a
driver whose SSH connection dropped reconnects, names its session, and gets the outcomes it
missed; a session with no connection for `ORPHAN_S` is dropped and its running calls cancelled.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from typing import Any

import ray

from skyward_ray.api import channel_wire as wire

ORPHAN_S = 120.0  # a session without a connection this long has lost its driver


def _pickled(value: Any) -> bytes:
    from ray import cloudpickle

    return cloudpickle.dumps(value)


def outcome_of(error: BaseException) -> tuple[str, bytes]:
    """A failed call's (kind, payload): the user's exception and its remote traceback for a task
    error, else Ray's error itself; what cannot be pickled travels as its text."""
    from ray.exceptions import RayTaskError

    if isinstance(error, RayTaskError):
        cause = error.cause
        if isinstance(cause, BaseException) and not isinstance(cause, RayTaskError):
            try:
                return "task_error", _pickled((cause, str(error)))
            except Exception:  # noqa: BLE001 - an unpicklable exception: its text still says what happened
                pass
        return "task_error", _pickled((RuntimeError(f"{type(cause).__name__}: {cause}"), str(error)))
    try:
        return "error", _pickled(error)
    except Exception:  # noqa: BLE001
        return "error", _pickled(RuntimeError(f"{type(error).__name__}: {error}"))


class _Session:
    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.unacked: dict[int, bytes] = {}  # call id -> its encoded "done" frame, until acknowledged
        self.running: dict[int, ray.ObjectRef | None] = {}  # None: received, its task not submitted yet
        self.idle_since: float | None = None
        self.cancelled: dict[int, bool] = {}  # call id -> force, for a cancel that came before its task

    def send(self, call_id: int, frame: bytes) -> None:
        self.unacked[call_id] = frame
        if self.writer is not None:
            self.writer.write(frame)


class CallServer:
    """The actor (async: every call is a coroutine awaiting its task). `start()` binds and
    answers the port; the driver then connects with `ssh -W 127.0.0.1:<port>`."""

    def __init__(self, token_digest: str) -> None:
        self._token_digest = bytes.fromhex(token_digest)
        self._functions: dict[str, Any] = {}
        self._sessions: dict[str, _Session] = {}
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            asyncio.get_running_loop().create_task(self._reap_orphans())
        return int(self._server.sockets[0].getsockname()[1])

    async def _reap_orphans(self) -> None:
        while True:
            await asyncio.sleep(10)
            now = time.monotonic()
            for key, session in list(self._sessions.items()):
                if session.writer is None and session.idle_since is not None and now - session.idle_since > ORPHAN_S:
                    del self._sessions[key]
                    for ref in session.running.values():
                        if ref is not None:
                            ray.cancel(ref, force=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session: _Session | None = None
        try:
            hello = await asyncio.wait_for(wire.read_hello_async(reader), timeout=30)
            token = str(hello.get("token", "")).encode()
            if not hmac.compare_digest(hashlib.sha256(token).digest(), self._token_digest):
                writer.write(wire.encode_hello({"ok": False, "detail": "wrong token"}))
                await writer.drain()
                return
            key = str(hello.get("session", ""))
            session = self._sessions.setdefault(key, _Session())
            if session.writer is not None:
                session.writer.close()  # a reconnect replaces a connection the driver gave up on
            session.writer, session.idle_since = writer, None
            writer.write(wire.encode_hello({"ok": True, "detail": ""}))
            for frame in list(session.unacked.values()):  # what the last connection may not have delivered
                writer.write(frame)
            await writer.drain()
            while True:
                message = await wire.read_frame_async(reader)
                kind = message[0]
                if kind in ("call", "calls"):
                    for call in ([message[1:]] if kind == "call" else message[1]):
                        session.running.setdefault(call[0], None)  # received: a resume must not call it unreceived
                        asyncio.get_running_loop().create_task(self._run(session, *call))
                elif kind == "resume":  # the driver's waiting calls after a reconnect: which never arrived?
                    lost = [i for i in message[1] if i not in session.running and i not in session.unacked]
                    if lost:
                        writer.write(wire.encode(("unreceived", lost)))
                elif kind == "cancel":
                    ref = session.running.get(message[1])
                    if ref is not None:
                        ray.cancel(ref, force=bool(message[2]))
                    elif message[1] in session.running:  # its task is not submitted yet: cancelled when it is
                        session.cancelled[message[1]] = bool(message[2])
                elif kind == "ack":
                    for call_id in message[1]:
                        session.unacked.pop(call_id, None)
                await writer.drain()
        except (wire.ChannelClosed, ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            if session is not None and session.writer is writer:
                session.writer, session.idle_since = None, time.monotonic()
            writer.close()

    async def _run(self, session: _Session, call_id: int, function_key: str, function_bytes: bytes | None,
                   payload: bytes) -> None:
        from ray import cloudpickle

        try:
            remote = self._functions.get(function_key)
            if remote is None:
                if function_bytes is None:
                    raise RuntimeError("the call channel got a call of a function it was never sent")
                fn, ray_options = cloudpickle.loads(function_bytes)
                remote = self._functions[function_key] = ray.remote(**ray_options)(fn)
            args, kwargs, options = cloudpickle.loads(payload)
            ref = (remote.options(**options) if options else remote).remote(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - the caller gets it, as a call's failure
            session.running.pop(call_id, None)
            session.send(call_id, wire.encode(("done", call_id, *outcome_of(error))))
            return
        session.running[call_id] = ref
        if call_id in session.cancelled:
            ray.cancel(ref, force=session.cancelled.pop(call_id))
        try:
            value = await ref
            try:
                frame = wire.encode(("done", call_id, "value", _pickled(value)))
            except Exception as error:  # noqa: BLE001 - a result that cannot travel
                frame = wire.encode(("done", call_id, *outcome_of(error)))
        except BaseException as error:  # noqa: BLE001 - a task's error, a cancel, a lost worker
            frame = wire.encode(("done", call_id, *outcome_of(error)))
        finally:
            session.running.pop(call_id, None)
        session.send(call_id, frame)
        writer = session.writer
        if writer is not None:
            try:
                await writer.drain()
            except ConnectionError:
                pass  # the driver reconnects and gets it from `unacked`
