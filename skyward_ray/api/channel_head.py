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
import itertools
import os
import threading
import time
from typing import Any

import ray
from ray.exceptions import RayError

from skyward_ray.api import channel_wire as wire

ORPHAN_S = 120.0  # a session without a connection this long has lost its driver
GROUP_CALLS = 8  # a frame of this many calls or more is a group: waited for in bulk (`_wait_group`)
GROUP_SLICE_S = 0.1  # a group's wait: the outcomes that end within one slice go to the driver as one frame


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


def _pickled_value(value: Any) -> bytes:
    """A call's value for the driver: plain pickle where it can (a few µs; cloudpickle's pickler
    costs ~15 µs to make, per call), cloudpickle for what only it can (a class made on the driver)."""
    import pickle

    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - pickle refuses what it cannot import by name
        return _pickled(value)


def done_frame(call_id: int, kind: str, payload: bytes) -> tuple[bytes, bytes]:
    """A call's outcome frame: its payload is the frame's trailer, written as it is (not copied)."""
    return wire.encode_with_trailer(("done", call_id, kind), payload)


def dones_frame(outcomes: list[tuple[int, str, bytes]]) -> tuple[bytes, bytes]:
    """Small outcomes (call id, kind, payload) in one frame, their payloads joined as its trailer.
    Why: a group's calls end in bursts of dozens, and a frame each cost both ends a parse and the
    driver a lock and a wake-up per call."""
    return wire.encode_with_trailer(("dones", [(call_id, kind, len(payload)) for call_id, kind, payload in outcomes]),
                                    b"".join(payload for _, _, payload in outcomes))


def _batches(outcomes: list[tuple[int, str, bytes]]) -> list[list[tuple[int, str, bytes]]]:
    """Small outcomes in runs of at most DONES_BYTES of payload each (one `dones_frame` a run): a
    reconnect may send thousands of them at once, and one frame must stay far below the wire's
    limit, nor may the driver wait for all of them to resolve any."""
    batches: list[list[tuple[int, str, bytes]]] = []
    size = 0
    for outcome in outcomes:
        if not batches or size + len(outcome[2]) > DONES_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(outcome)
        size += len(outcome[2])
    return batches


SMALL = 64 * 1024  # parts below this are joined into one write (outcomes: into `dones` frames); larger ones go as they are
DONES_BYTES = 1024 * 1024  # the most payload one `dones` frame carries
STRIPE_MIN = 4 * 1024 * 1024  # an outcome this large is striped over the driver's lanes (where it has some)
STRIPE_PART_MIN = 1024 * 1024  # the smallest part of a striped outcome


def write_frames(writer: asyncio.StreamWriter, frames: list[tuple[bytes, bytes]]) -> None:
    """Frames in as few writes as copying allows: small parts joined, a large payload on its own."""
    small: list[bytes] = []
    for part in (part for frame in frames for part in frame):
        if len(part) < SMALL:
            small.append(part)
            continue
        if small:
            writer.write(b"".join(small))
            small = []
        writer.write(part)
    if small:
        writer.write(b"".join(small))


class _Session:
    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.lanes: dict[int, asyncio.StreamWriter] = {}  # the driver's extra connections (by its number for them)
        self.carried: dict[int, set[int]] = {}  # lane number -> calls with a part on it (until acknowledged)
        self.unacked: dict[int, tuple[str, bytes]] = {}  # call id -> its outcome (kind, payload), until acknowledged
        self.running: dict[int, ray.ObjectRef] = {}  # call id -> its task, until it ended
        self.idle_since: float | None = time.monotonic()  # no connection yet
        self.flush_later: list[int] = []  # calls whose outcomes came in this turn of the event loop
        # each striping told apart from any other, a new server's included (the driver's call ids outlive one)
        self._stripes = itertools.count(int.from_bytes(os.urandom(6), "big"))

    def send(self, call_id: int, kind: str, payload: bytes) -> None:
        """Queue an outcome; the outcomes of one turn of the event loop go out in one write (a group's
        calls finish in bursts: one write, one SSH packet, one wake-up of the driver for many)."""
        self.unacked[call_id] = (kind, payload)
        if self.writer is not None:
            if not self.flush_later:
                asyncio.get_running_loop().call_soon(self._flush)
            self.flush_later.append(call_id)

    def _flush(self) -> None:
        call_ids, self.flush_later = self.flush_later, []
        self.write_outcomes(call_ids)

    def write_outcomes(self, call_ids: list[int], whole: bool = False) -> None:
        """These calls' outcomes to the driver: each whole on the connection, or (unless `whole`) a
        large one striped over the connection and the driver's lanes (`stripe`)."""
        if self.writer is None:
            return
        frames: list[tuple[bytes, bytes]] = []
        small: list[tuple[int, str, bytes]] = []
        for call_id in call_ids:
            outcome = self.unacked.get(call_id)
            if outcome is None:
                continue
            kind, payload = outcome
            if len(payload) < SMALL:
                small.append((call_id, kind, payload))
                continue
            lanes = [] if whole or len(payload) < STRIPE_MIN else [
                (n, lane) for n, lane in self.lanes.items() if not lane.is_closing()]
            frames.append(self.stripe(call_id, kind, payload, lanes) if lanes else done_frame(call_id, kind, payload))
        frames.extend(done_frame(*batch[0]) if len(batch) == 1 else dones_frame(batch) for batch in _batches(small))
        write_frames(self.writer, frames)

    def stripe(self, call_id: int, kind: str, payload: bytes,
               lanes: list[tuple[int, asyncio.StreamWriter]]) -> tuple[bytes, bytes]:
        """Write all but the first part of a large outcome to the lanes, one each; answer the first
        part's frame (for the connection). Why: an SSH channel carries at most its window (OpenSSH:
        2 MiB) per round trip, so at 40 ms one connection brings ~50 MB/s; parts on several
        connections come down side by side."""
        size = -(-len(payload) // min(len(lanes) + 1, -(-len(payload) // STRIPE_PART_MIN)))
        offsets = range(0, len(payload), size)
        stripe_id = next(self._stripes)
        view = memoryview(payload)
        parts = [wire.encode_with_trailer(("part", call_id, stripe_id, kind, len(payload), offset, len(offsets)),
                                          view[offset:offset + size])
                 for offset in offsets]
        for (number, lane), part in zip(lanes, parts[1:]):
            write_frames(lane, [part])
            self.carried.setdefault(number, set()).add(call_id)
        return parts[0]

    def acknowledged(self, call_ids: list[int]) -> None:
        for call_id in call_ids:
            self.unacked.pop(call_id, None)
        for calls in self.carried.values():
            calls.difference_update(call_ids)

    def lane_lost(self, number: int) -> None:
        """Lane `number` is gone (the driver said so, or it closed): no part goes there any more, and
        the outcomes with a part on it that the driver has not acknowledged go again, whole, on the
        connection (or on the next one: a reconnect sends every unacknowledged outcome whole). Once
        per lane, whichever side noticed first."""
        lane = self.lanes.pop(number, None)
        if lane is None:
            return
        lane.transport.abort()  # what it still buffers goes now, not when TCP gives up
        lost = sorted(call_id for call_id in self.carried.pop(number, set()) if call_id in self.unacked)
        for calls in self.carried.values():
            calls.difference_update(lost)
        self.write_outcomes(lost, whole=True)

    def drop_lanes(self) -> None:
        """A new connection of the session: the driver opens new lanes after it (see `_serve`)."""
        for number in list(self.lanes):
            lane = self.lanes.pop(number)
            lane.transport.abort()
        self.carried.clear()


def _value_or_error(ref: ray.ObjectRef) -> Any:
    """A finished task's value, or the Ray error reading it raises (as a completion callback gets it)."""
    try:
        return ray.get(ref)
    except RayError as error:
        return error


class CallServer:
    """The actor (async: its event loop serves the connections and submits the calls as Ray tasks).
    `start()` binds and answers the port; the driver then connects with `ssh -W 127.0.0.1:<port>`."""

    def __init__(self, token_digest: str) -> None:
        # A group's `ray.get` runs in a thread of its own (`_wait_group`), never on the event loop; Ray's
        # warning about a blocking get in an async actor would only alarm the user's console.
        os.environ["RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"] = "0"
        self._token_digest = bytes.fromhex(token_digest)
        self._functions: dict[str, Any] = {}
        self._optioned: dict[tuple[str, frozenset[tuple[str, Any]]], Any] = {}  # (function, plain options) -> remote
        self._sessions: dict[str, _Session] = {}
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: list[tuple[_Session, int, Any]] = []  # outcomes Ray reported, not yet sent
        self._done_lock = threading.Lock()

    async def start(self) -> int:
        if self._server is None:
            self._loop = asyncio.get_running_loop()
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
                    session.drop_lanes()
                    for ref in list(session.running.values()):
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
            if hello.get("lane"):
                lane = int(hello["lane"])
                await self._serve_lane(self._sessions.setdefault(key, _Session()), lane, reader, writer)
                return
            session = self._sessions.setdefault(key, _Session())
            if session.writer is not None:
                session.writer.close()  # a reconnect replaces a connection the driver gave up on
            # The driver ends its lanes and opens new ones once a connection is up: parts that old
            # ones (maybe dead, unnoticed) carried are sent again, whole, with every outcome not
            # acknowledged (what the last connection may not have delivered).
            session.drop_lanes()
            session.flush_later = []  # queued outcomes: the hello sends every unacknowledged one
            session.writer, session.idle_since = writer, None
            writer.write(wire.encode_hello({"ok": True, "detail": ""}))
            session.write_outcomes(list(session.unacked), whole=True)
            await writer.drain()
            while True:
                message = await wire.read_frame_async(reader)
                kind = message[0]
                if kind == "calls":
                    self._submit_all(session, message[1])
                elif kind == "resume":  # the driver's waiting calls after a reconnect: which never arrived?
                    lost = [i for i in message[1] if i not in session.running and i not in session.unacked]
                    if lost:
                        writer.write(wire.encode(("unreceived", lost)))
                elif kind == "cancel":
                    ref = session.running.get(message[1])
                    if ref is not None:
                        ray.cancel(ref, force=bool(message[2]))
                elif kind == "ack":
                    session.acknowledged(message[1])
                elif kind == "lane_lost":
                    session.lane_lost(int(message[1]))
                # No `await writer.drain()` here: a driver that is still sending (a large argument)
                # reads outcomes only as its send allows, so waiting for them to drain before reading
                # on would stall both ends. What waits in the buffer is outcomes already held.
        except (wire.ChannelClosed, ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            if session is not None and session.writer is writer:
                session.writer, session.idle_since = None, time.monotonic()
            writer.close()

    @staticmethod
    async def _serve_lane(session: _Session, lane: int, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        """A lane: this server only writes to it (parts of large outcomes), until the driver closes it."""
        writer.write(wire.encode_hello({"ok": True, "detail": ""}))
        await writer.drain()
        session.lanes[lane] = writer
        try:
            while await reader.read(4096):
                pass
        except ConnectionError:
            pass
        finally:
            if session.lanes.get(lane) is writer:
                session.lane_lost(lane)  # it closed before the driver said so (or could)

    def _submit_all(self, session: _Session, calls: list[tuple[int, str, bytes | None, bytes]]) -> None:
        """Submit a frame's calls as Ray tasks now, in the turn of the event loop that read it. A call
        or a few are told by Ray's completion callback (at once); a group's calls by a thread of
        the group's own, in bulk (`_wait_group`)."""
        submitted = [(call[0], ref) for call in calls if (ref := self._submit(session, *call)) is not None]
        if len(submitted) >= GROUP_CALLS:
            threading.Thread(target=self._wait_group, args=(session, submitted), name="skyward-call-group",
                             daemon=True).start()
            return
        for call_id, ref in submitted:
            ref._on_completed(lambda result, call_id=call_id: self._completed(session, [(call_id, result)]))

    def _wait_group(self, session: _Session, submitted: list[tuple[int, ray.ObjectRef]]) -> None:
        """A group's outcomes, in slices: whatever ended in one `ray.wait` is read in one `ray.get`.
        Why not a completion callback per call: Ray reads each callback's object on its own, and at
        hundreds of calls that was a third more of this server's CPU (micro-benchmark on 2 cores, 500
        tasks: 188 ms with callbacks, 164 ms in slices, 141 ms for one `ray.get` of all). A slice's
        outcomes go to the driver as one frame, so the slice sets how many messages a group costs,
        each one a wake-up of every process relaying it (both SSH ends, the driver's reader): a
        gather of 500 took 48-82 frames at 5 ms slices (on a local Ray), 13-22 at 25 ms, and at
        +40 ms of round trip one pool measured it against the same fan-out from inside the cluster
        (paired blocks, 2026-12-07, two runs) at 1.19x and 1.26x with 25 ms slices, 1.11x and
        1.13x with 100 ms. Progress and a first failure still reach the driver within a tenth of a
        second, and the last outcome waits for no slice: the wait returns once all have ended."""
        call_ids = {ref: call_id for call_id, ref in submitted}
        pending = [ref for _, ref in submitted]
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=GROUP_SLICE_S)
            if not ready:
                continue
            try:
                results = ray.get(ready)
            except RayError:  # one of them failed: each read on its own, the failures as Ray's errors
                results = [_value_or_error(ref) for ref in ready]
            self._completed(session, [(call_ids[ref], result) for ref, result in zip(ready, results)])

    def _submit(self, session: _Session, call_id: int, function_key: str, function_bytes: bytes | None,
                payload: bytes) -> ray.ObjectRef | None:
        """Submit one call as its Ray task; None where it could not be (its failure is sent)."""
        from ray import cloudpickle

        try:
            remote = self._functions.get(function_key)
            if remote is None:
                if function_bytes is None:
                    raise RuntimeError("the call channel got a call of a function it was never sent")
                fn, ray_options = cloudpickle.loads(function_bytes)
                remote = self._functions[function_key] = ray.remote(**ray_options)(fn)
            args, kwargs, options = cloudpickle.loads(payload)
            ref = self._with_options(function_key, remote, options).remote(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - the caller gets it, as a call's failure
            session.send(call_id, *outcome_of(error))
            return None
        session.running[call_id] = ref
        return ref

    def _with_options(self, function_key: str, remote: Any, options: dict[str, Any]) -> Any:
        """`remote.options(**options)`, made once per function and set of plain options (a group's
        calls all carry the same ones: SPREAD), where Ray makes a new wrapper every time (~10 µs)."""
        if not options:
            return remote
        if not all(isinstance(value, (str, int, float, bool, type(None))) for value in options.values()):
            return remote.options(**options)  # an object (a node's scheduling strategy): made per call
        key = (function_key, frozenset(options.items()))
        with_options = self._optioned.get(key)
        if with_options is None:
            with_options = self._optioned[key] = remote.options(**options)
        return with_options

    def _completed(self, session: _Session, results: list[tuple[int, Any]]) -> None:
        """Calls' (id, value or Ray's error), from Ray's completion callback or a group's thread:
        handed to the event loop in batches. Why not `await ref` per call: each awaited ref is an
        asyncio future woken through the loop's self-pipe, and at hundreds of calls those wake-ups
        cost more than submitting the tasks."""
        with self._done_lock:
            first = not self._done
            self._done.extend((session, call_id, result) for call_id, result in results)
        if first and self._loop is not None:  # the loop is there: calls come only after `start`
            self._loop.call_soon_threadsafe(self._send_completed)

    def _send_completed(self) -> None:
        with self._done_lock:
            done, self._done = self._done, []
        for session, call_id, result in done:
            session.running.pop(call_id, None)
            if isinstance(result, RayError):  # how Ray's own `await ref` tells a failure from a value
                outcome = outcome_of(result)
            else:
                try:
                    outcome = ("value", _pickled_value(result))
                except Exception as error:  # noqa: BLE001 - a result that cannot travel
                    outcome = outcome_of(error)
            session.send(call_id, *outcome)
