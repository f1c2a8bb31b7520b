"""The driver's end of the call channel: one call, one message up and its outcome one message down.

Through Ray Client a call costs two round trips or more (`channel_wire`). A pool this process
reaches through an SSH tunnel therefore starts the head's `channel_head.CallServer` (an actor of the
pool, pinned to the head) and talks to it over `ssh -W 127.0.0.1:<port>`, the pool's own pinned SSH
session (host key and login key), so the channel is exactly as private as the tunnel.

A large outcome (`channel_head.STRIPE_MIN`) comes down in parts side by side: one on the connection
and one on each of `LANES` more `ssh -W` connections of the same session (lanes), opened in the
background once the channel is up. Why: one SSH channel carries at most its window (OpenSSH: 2 MiB)
per round trip, which at 40 ms made a 50 MB result slower than Ray Client's. A lane that drops is
reported on the connection (and noticed by the head), and the head sends the outcomes that had a
part on it, not yet acknowledged, again, whole; a new lane replaces it `LANE_REOPEN_S` later. A
reconnect starts the lanes afresh (the head drops them with the old connection and sends every
unacknowledged outcome whole).

A dropped SSH connection is not a lost call: the channel reconnects (for up to `RECONNECT_S`),
names its session, and the head sends the outcomes the driver has not acknowledged; the calls it
never received are sent again (the head says which, `resume`). Calls wait on `CallSlot`s, so the
caller's own wait (`dispatch.Dispatcher.run`) keeps its slices for interrupts and timeouts.

Nor is a dead server (its actor's process killed, by the OOM killer or a stray `kill`, with the head
still up): the tasks it submitted died with it (it was their owner), so where a connection is
refused and Ray says the actor is gone, a new server is started on the head and the calls still
waited for are sent to it again, as Ray reruns a task whose worker died. A call that may not run
twice (`max_retries=0`, or sent with `@`) fails instead (`CallServerLost`), at once rather than
after `RECONNECT_S`. A server that keeps dying is started at most `SERVER_RESTARTS` times.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from ray.exceptions import RayError

from skyward_ray.api import channel_wire as wire

_log = logging.getLogger(__name__)

RECONNECT_S = 60.0  # how long a dropped connection is retried before the calls on it fail
ACK_BATCH = 256  # this many outcomes held are acknowledged at once
ACK_BYTES = 1 << 20  # outcomes holding this much on the head are acknowledged as soon as they are read
ACK_DELAY_S = 1.0  # an outcome is acknowledged at most this long after it was read
PIPE_BYTES = 1 << 20  # Linux's default /proc/sys/fs/pipe-max-size: what any process may ask for
HELLO_TIMEOUT_S = 30.0
SERVER_RESTARTS = 3  # new call servers one channel starts at most (a call that kills its server each time)
LANES = 3  # extra connections a channel keeps for the parts of large outcomes (`channel_wire`)
LANE_REOPEN_S = 2.0  # a lost lane is replaced this long after


class ChannelError(ConnectionError):
    """The call channel is gone (the head, or the SSH connection for longer than `RECONNECT_S`)."""


class CallServerLost(ChannelError):
    """The head's call server died with this call in flight, and the call may not run twice."""


class CallSlot:
    """One call's outcome, once the head sent it: `wait(timeout)` or `add_done_callback`, then `outcome()`.

    Its event is made only when someone waits on it (a `>>`): a group's hundreds of calls are
    told by callbacks, and an Event (a Condition and two locks) per call was a fifth of the
    driver's CPU for a gather."""

    __slots__ = ("entry", "rerunnable", "_done", "_event", "_kind", "_payload", "_callbacks", "_guard")

    def __init__(self, entry: tuple[Any, ...] | None, rerunnable: bool) -> None:
        self.entry = entry  # the call as sent, kept until done: sent again if the head never got it
        self.rerunnable = rerunnable  # whether it may run again on a new server (its max_retries is not 0)
        self._done = False
        self._event: threading.Event | None = None
        self._kind = ""
        self._payload: Any = None
        self._callbacks: list[Callable[[CallSlot], None]] = []
        self._guard = threading.Lock()

    def resolve(self, kind: str, payload: Any) -> None:
        with self._guard:
            if self._done:
                return
            self._kind, self._payload = kind, payload
            self.entry = None
            self._done = True
            event, callbacks, self._callbacks = self._event, self._callbacks, []
        if event is not None:
            event.set()
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # noqa: BLE001 - the caller's bookkeeping failed; the reader must go on
                _log.exception("a call channel completion callback failed")

    def add_done_callback(self, callback: Callable[[CallSlot], None]) -> None:
        """`callback(slot)` once the outcome is in (now, if it is already), in the channel's reader thread."""
        with self._guard:
            if not self._done:
                self._callbacks.append(callback)
                return
        callback(self)

    def wait(self, timeout: float) -> bool:
        with self._guard:
            if self._done:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    def outcome(self) -> tuple[str, Any]:
        """("value", value) | ("task_error", (exception, remote traceback text)) | ("error", exception)."""
        from ray import cloudpickle

        if self._kind == "closed":
            return "error", self._payload
        return self._kind, cloudpickle.loads(self._payload)


class _Assembly:
    """A striped outcome's parts as they arrive, each copied to its place (parts never overlap)."""

    __slots__ = ("kind", "buffer", "offsets", "count")

    def __init__(self, kind: str, total: int, count: int) -> None:
        self.kind, self.buffer, self.offsets, self.count = kind, bytearray(total), set(), count


class _HeldAcks:
    """Outcomes read and not acknowledged yet (`CallChannel._acknowledge_now`): their call ids, their
    size, and when the first of them was read."""

    __slots__ = ("call_ids", "size", "since")

    def __init__(self) -> None:
        self.call_ids: list[int] = []
        self.size = 0
        self.since = 0.0

    def add(self, call_ids: list[int], size: int) -> None:
        if not self.call_ids:
            self.since = time.monotonic()
        self.call_ids.extend(call_ids)
        self.size += size

    def take(self) -> list[int]:
        call_ids, self.call_ids, self.size = self.call_ids, [], 0
        return call_ids


class ChannelTaskError(RayError):
    """A call over the channel that failed with its own exception (`cause`, raised on a node, with
    Ray's remote traceback `text`), or that could not run at all (`text` empty): what a
    `RayTaskError` is through Ray Client (`calls.Calls.translate` gives the caller `cause`)."""

    def __init__(self, cause: BaseException, text: str = "") -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.text = text


class ChannelRef:
    """One call sent over the channel, as the waits use a Ray object ref (`calls.Calls.refs`): a
    completion callback given the value or the error as Ray gives them, and cancel."""

    __slots__ = ("channel", "call_id", "slot")

    def __init__(self, channel: CallChannel, call_id: int, slot: CallSlot) -> None:
        self.channel, self.call_id, self.slot = channel, call_id, slot

    def value_or_error(self) -> Any:
        """The call's value, or the error it ended with (a Ray error, `ChannelTaskError`, `ChannelError`);
        a value this process cannot unpickle (its class's module is not importable here) is the
        call's error."""
        try:
            kind, payload = self.slot.outcome()
        except Exception as error:  # noqa: BLE001 - the caller gets it, as the call's failure
            return ChannelTaskError(error)
        if kind == "value":
            return payload
        if kind == "task_error":
            return ChannelTaskError(*payload)
        if isinstance(payload, (RayError, ConnectionError)):
            return payload
        return ChannelTaskError(payload)

    def on_completed(self, callback: Callable[[Any], None]) -> None:
        """`callback(value or error)` once the call ended, as Ray's `ObjectRef._on_completed` does
        (what `future.PoolFuture` resolves from)."""
        self.slot.add_done_callback(lambda _: callback(self.value_or_error()))

    def cancel(self, force: bool = False) -> None:
        self.channel.cancel(self.call_id, force)


class CallChannel:
    """A session with the head's call server over a sequence of `ssh -W` connections."""

    def __init__(self, command_for_port: Callable[[int], list[str]], token: str,
                 start_server: Callable[[], tuple[Any, int]], on_drop: Callable[[], None] | None = None) -> None:
        """`start_server()` starts a call server on the head and answers (its actor, its port)."""
        self._command_for_port = command_for_port
        self._token = token
        self._start_server = start_server
        self._on_drop = on_drop  # told (in a thread of its own) when a connection drops: is the head gone?
        self._actor, self._port = start_server()  # the actor is kept referenced while the channel lives
        self._server_restarts = 0
        self._session = secrets.token_hex(16)
        self._ids = itertools.count(1)
        self._slots: dict[int, CallSlot] = {}
        self._functions: dict[str, Callable[[], bytes]] = {}  # function key -> its bytes, for a new server
        self._known: set[str] = set()  # function keys the head has been sent
        self._lock = threading.Lock()  # the slots, the known functions and writes to ssh
        self._proc: subprocess.Popen[bytes] | None = None
        self._lanes: dict[int, tuple[subprocess.Popen[bytes], str]] = {}  # lane number -> (its ssh, its session)
        self._lane_numbers = itertools.count(1)
        self._dialing: dict[subprocess.Popen[bytes], bool] = {}  # connections saying hello -> whether a lane
        self._lane_keeper: threading.Thread | None = None  # opens lanes when `_lane_work` is set
        self._lane_work = threading.Event()
        self._lanes_fresh = False  # the keeper is to let the lanes go before it opens new ones
        self._assemblies: dict[tuple[int, int], _Assembly] = {}  # (call id, stripe id) -> its parts so far
        self._closing = False
        self._broken: BaseException | None = None

    @classmethod
    def open(cls, command_for_port: Callable[[int], list[str]], token: str, head_node_id: str,
             timeout: float = HELLO_TIMEOUT_S, on_drop: Callable[[], None] | None = None) -> CallChannel:
        """Start the head's server (through the pool's Ray connection), then connect to it."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from skyward_ray.api.channel_head import CallServer

        digest = hashlib.sha256(token.encode()).hexdigest()

        def start_server() -> tuple[Any, int]:
            actor = ray.remote(num_cpus=0, max_restarts=0)(CallServer).options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(head_node_id, soft=False)).remote(digest)
            return actor, int(ray.get(actor.start.remote(), timeout=timeout))

        channel = cls(command_for_port, token, start_server, on_drop)
        channel._connect(timeout)
        return channel

    # -- calls ---------------------------------------------------------------------------------------
    def call_many(self, calls: list[tuple[str, Callable[[], bytes], bytes, bool]]) -> list[ChannelRef]:
        """Send calls (function key, its bytes when first asked, payload, whether it may run twice) in
        one frame: a group costs one message up however many calls it holds. Each ref resolves when
        the head sends its outcome."""
        with self._lock:
            if self._broken is not None:
                raise ChannelError(str(self._broken))
            slots, first_sent = [], set()
            for function_key, function_bytes, payload, rerunnable in calls:  # all pickled before any is registered
                first = function_key not in self._known and function_key not in first_sent
                slots.append(CallSlot((next(self._ids), function_key, function_bytes() if first else None, payload),
                                      rerunnable))
                if first:
                    first_sent.add(function_key)
                    self._functions[function_key] = function_bytes
            self._known |= first_sent
            entries = [slot.entry for slot in slots]  # before it is sent: an outcome clears a slot's entry
            sent = [ChannelRef(self, entry[0], slot) for entry, slot in zip(entries, slots)]
            self._slots.update((ref.call_id, ref.slot) for ref in sent)
            self._write(wire.encode(("calls", entries)))
        return sent

    def cancel(self, call_id: int, force: bool = False) -> None:
        with self._lock, contextlib.suppress(OSError):
            if call_id in self._slots:
                self._write(wire.encode(("cancel", call_id, force)))

    def close(self) -> None:
        """End the connection; calls still waiting fail with `ChannelError`."""
        with self._lock:
            self._closing = True
            proc, self._proc = self._proc, None
            dialing = list(self._dialing)  # a reconnect's too: its thread ends it
        for dial in dialing:
            with contextlib.suppress(OSError):
                dial.kill()
        if proc is not None:
            self._end(proc)
        self._let_lanes_go()
        self._lane_work.set()  # the lane keeper sees the channel closed, and ends
        self._fail_all(ChannelError("the pool's call channel was closed"))
        self._actor = None

    @property
    def usable(self) -> bool:
        return not self._closing and self._broken is None

    # -- the connection ------------------------------------------------------------------------------
    def _write(self, frame: bytes) -> None:
        """Under the lock. A write to a connection that just dropped is lost: the reconnect's resume
        finds the call unreceived and sends it again."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(frame)
            proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def _dial(self, port: int, hello: dict[str, Any], timeout: float) -> subprocess.Popen[bytes]:
        """One `ssh -W` connection to the server on `port`, its hello answered; raises `ChannelError`.
        A lane's (dialled in the background) is ended by a close() or a new connection meanwhile."""
        stderr = tempfile.TemporaryFile()
        proc = subprocess.Popen(self._command_for_port(port), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr, bufsize=0, start_new_session=True)
        with self._lock:
            self._dialing[proc] = "lane" in hello
            if self._closing:
                proc.kill()
        try:
            return self._greet(proc, hello, timeout, stderr)
        finally:
            with self._lock:
                self._dialing.pop(proc, None)

    def _greet(self, proc: subprocess.Popen[bytes], hello: dict[str, Any], timeout: float,
               stderr: Any) -> subprocess.Popen[bytes]:
        """A started connection's hello, answered within `timeout` (else it is ended: `ChannelError`)."""
        assert proc.stdin is not None and proc.stdout is not None
        for pipe in (proc.stdin, proc.stdout):
            _widen(pipe.fileno())
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            proc.stdin.write(wire.encode_hello({"token": self._token, **hello}))
            proc.stdin.flush()
            answer = wire.read_hello(proc.stdout)
        except (OSError, ValueError, wire.ChannelClosed):
            answer = {"ok": False, "detail": _said(stderr) or "no answer"}
        finally:
            timer.cancel()
        if not answer.get("ok"):
            self._end(proc)
            raise ChannelError(f"the head's call server refused the channel ({answer.get('detail')})")
        return proc

    def _connect(self, timeout: float) -> None:
        """The session's connection, its reader started, then its lanes (in the background)."""
        proc = self._dial(self._port, {"session": self._session}, timeout)
        with self._lock:
            if self._closing:
                self._end(proc)
                raise ChannelError("the pool's call channel was closed")
            self._proc = proc
            waiting = sorted(self._slots)
            self._write(wire.encode(("resume", waiting)))
        threading.Thread(target=self._read, args=(proc,), name="skyward-call-channel", daemon=True).start()
        self._want_lanes(fresh=True)

    def _want_lanes(self, fresh: bool) -> None:
        """Ask the lane keeper (one thread per channel, started with the first connection) to fill up
        to `LANES`; `fresh` (after a connect): to let the lanes it had go first (the head dropped
        them with the connection, and any might be dead, unnoticed)."""
        with self._lock:
            self._lanes_fresh |= fresh
            if self._lane_keeper is None:
                self._lane_keeper = threading.Thread(target=self._keep_lanes, name="skyward-call-lanes", daemon=True)
                self._lane_keeper.start()
        self._lane_work.set()

    def _keep_lanes(self) -> None:
        while True:
            self._lane_work.wait()
            with self._lock:
                if self._closing:
                    return
                self._lane_work.clear()
                fresh, self._lanes_fresh = self._lanes_fresh, False
            try:
                if fresh:
                    self._let_lanes_go()
                self._fill_lanes()
            except Exception:  # noqa: BLE001 - out of processes or descriptors: fewer lanes, tried again later
                _log.exception("the call channel could not open its lanes")

    def _fill_lanes(self) -> None:
        """Lanes for the current session, up to `LANES`. A lane that does not open is no error: large
        outcomes then come in fewer parts, or whole (and lanes are tried again at the next connect)."""
        while True:
            with self._lock:
                session, port = self._session, self._port
                if self._closing or self._broken is not None or len(self._lanes) >= LANES or self._lanes_fresh:
                    return
            number = next(self._lane_numbers)
            try:
                proc = self._dial(port, {"session": session, "lane": number}, HELLO_TIMEOUT_S)
            except ChannelError:
                return
            reader = threading.Thread(target=self._read_lane, args=(number, proc, session),
                                      name="skyward-call-lane", daemon=True)
            with self._lock:
                current = not self._closing and session == self._session
                if current:
                    self._lanes[number] = (proc, session)
            if current:
                try:
                    reader.start()
                    continue
                except RuntimeError:  # no thread: a lane nobody reads must not be striped onto
                    with self._lock:
                        self._lanes.pop(number, None)
            self._end(proc)
            return

    def _let_lanes_go(self) -> None:
        """End every lane (and any still saying hello): killed here, reaped by their own threads."""
        with self._lock:
            procs = [proc for proc, _ in self._lanes.values()] + [p for p, lane in self._dialing.items() if lane]
            self._lanes = {}
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.kill()

    def _read_lane(self, number: int, proc: subprocess.Popen[bytes], session: str) -> None:
        """A lane's parts, until it closes. A lane lost while the channel is open is told to the head,
        and lanes are opened again a little later."""
        assert proc.stdout is not None
        reader = wire.FrameReader(proc.stdout.fileno())
        try:
            while True:
                message = reader.read_frame()
                if message[0] == "part" and self._take_part(message, session):
                    with self._lock:
                        self._write(wire.encode(("ack", [message[1]])))
        except Exception:  # noqa: BLE001 - whatever ended the lane (EOF, a broken frame): it is lost
            pass
        finally:
            with self._lock:
                lost = self._lanes.get(number, (None, ""))[0] is proc and not self._closing and self._broken is None
                if lost:
                    del self._lanes[number]
                    if session == self._session:
                        self._write(wire.encode(("lane_lost", number)))
            self._end(proc)
            if lost:
                timer = threading.Timer(LANE_REOPEN_S, self._want_lanes, kwargs={"fresh": False})
                timer.daemon = True
                timer.start()

    def _take_part(self, message: tuple[Any, ...], session: str | None = None) -> bool:
        """One part of a striped outcome (from a lane of `session`: dropped when that is no longer
        the channel's); True where it is to be acknowledged: it completed the outcome (its slot is
        resolved), or the outcome was resolved already."""
        _, call_id, stripe_id, kind, total, offset, count, data = message
        with self._lock:
            if session is not None and session != self._session:
                return False  # a dead server's: its outcomes come again from the new one
            if call_id not in self._slots:
                return True  # resolved already (by another copy of it, sent again): acknowledged again
            assembly = self._assemblies.get((call_id, stripe_id))
            if assembly is None:
                assembly = self._assemblies[(call_id, stripe_id)] = _Assembly(kind, total, count)
        assembly.buffer[offset:offset + len(data)] = data  # outside the lock: parts are disjoint
        with self._lock:
            assembly.offsets.add(offset)
            if len(assembly.offsets) < assembly.count:
                return False
            slot = self._pop_slot(call_id)
        if slot is None:
            return False
        slot.resolve(assembly.kind, assembly.buffer)
        return True

    def _pop_slot(self, call_id: int) -> CallSlot | None:
        """Under the lock: a call's slot, taken out with any parts of it still being assembled."""
        if self._assemblies:  # none but while a large outcome comes in parts (not on a group's path)
            for key in [key for key in self._assemblies if key[0] == call_id]:
                del self._assemblies[key]
        return self._slots.pop(call_id, None)

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        """The outcomes as they come, acknowledged in batches (`_acknowledge_now`)."""
        assert proc.stdout is not None
        reader, held = wire.FrameReader(proc.stdout.fileno()), _HeldAcks()
        try:
            while True:
                if self._acknowledge_now(held, reader):
                    with self._lock:
                        self._write(wire.encode(("ack", held.take())))
                message = reader.read_frame()
                if message[0] == "done":
                    _, call_id, kind, payload = message
                    with self._lock:
                        slot = self._pop_slot(call_id)
                    held.add([call_id], len(payload))
                    if slot is not None:
                        slot.resolve(kind, payload)
                elif message[0] == "dones":
                    _, outcomes, payloads = message
                    self._take_dones(outcomes, payloads)
                    held.add([call_id for call_id, _, _ in outcomes], len(payloads))
                elif message[0] == "part":
                    if self._take_part(message):
                        held.add([message[1]], ACK_BYTES)  # a striped outcome is large: let the head drop it now
                elif message[0] == "unreceived":  # lost with a dropped connection (or server): sent again, in order
                    with self._lock:
                        self._send_again(message[1])
        except (wire.ChannelClosed, OSError, ValueError, EOFError):
            pass
        with self._lock:
            if self._proc is not proc or self._closing:
                return
            self._proc = None
        self._end(proc)
        if self._on_drop is not None:
            threading.Thread(target=self._on_drop, name="skyward-call-channel-drop", daemon=True).start()
        self._reconnect()

    def _take_dones(self, outcomes: list[tuple[int, str, int]], payloads: bytearray) -> None:
        """Small outcomes that came in one frame (`channel_head.dones_frame`): each call's slot resolved
        with its part of the payloads."""
        with self._lock:
            slots = [self._pop_slot(call_id) for call_id, _, _ in outcomes]
        offset = 0
        with memoryview(payloads) as view:
            for (_, kind, size), slot in zip(outcomes, slots):
                if slot is not None:
                    slot.resolve(kind, bytes(view[offset:offset + size]))
                offset += size

    def _acknowledge_now(self, held: _HeldAcks, reader: wire.FrameReader) -> bool:
        """Whether to acknowledge the outcomes read so far, before reading on. The head keeps each
        until then (to send it again after a reconnect), so large ones go at once; the rest once
        ACK_BATCH are held, or no call waits any more and nothing more is here, or the first was
        read ACK_DELAY_S ago (waiting that long at most for more to come). Why not after every
        burst read: a group's outcomes come in dozens of bursts, and an ack each was as many more
        messages up the connection, each waking the relaying processes and the head's event loop."""
        if not held.call_ids:
            return False
        left = held.since + ACK_DELAY_S - time.monotonic()
        if len(held.call_ids) >= ACK_BATCH or held.size >= ACK_BYTES or left <= 0:
            return True
        return not reader.readable_within(left if self._slots else 0)

    def _send_again(self, call_ids: list[int]) -> None:
        """Under the lock: the calls the head says it never got, in order, each function's bytes with
        the first call of it the head has not been sent (all of them, for a new server)."""
        entries = []
        for call_id in call_ids:
            slot = self._slots.get(call_id)
            if slot is None or slot.entry is None:
                continue
            _, key, function_bytes, payload = slot.entry
            if key not in self._known:
                function_bytes = self._functions[key]()
                self._known.add(key)
            entries.append((call_id, key, function_bytes, payload))
        if entries:
            self._write(wire.encode(("calls", entries)))

    def _reconnect(self) -> None:
        """Until `RECONNECT_S` pass: a new connection to the same session, or to a new server where
        this one died; then every waiting call fails."""
        deadline = time.monotonic() + RECONNECT_S
        error: BaseException = ChannelError("the call channel's SSH connection dropped")
        while time.monotonic() < deadline and not self._closing:
            try:
                self._connect(min(HELLO_TIMEOUT_S, max(1.0, deadline - time.monotonic())))
                return
            except ChannelError as failed:
                error = failed
            if self._server_died():
                try:
                    self._replace_server()
                except ChannelError as failed:
                    error = failed
                    break
                continue  # connect to the new one at once: its resume sends it every call still waited for
            time.sleep(1.0)
        with self._lock:
            self._broken = ChannelError(f"the pool's call channel could not reconnect in {RECONNECT_S:g}s: {error}")
        self._let_lanes_go()
        self._fail_all(self._broken)

    def _server_died(self) -> bool:
        """Whether Ray says the server's actor is gone (its process died); a question that cannot be
        answered now (the tunnel is down too) is no."""
        import ray
        from ray.exceptions import RayActorError

        try:
            ray.get(self._actor.start.remote(), timeout=10)
        except RayActorError:
            return True
        except Exception:  # noqa: BLE001 - not an answer: keep reconnecting
            return False
        return False

    def _replace_server(self) -> None:
        """A new server on the head, and a new session for it: the calls still waited for go to it once
        connected (those that may run twice) or fail now (`CallServerLost`). Raises `ChannelError`
        where none starts."""
        with self._lock:
            if self._server_restarts >= SERVER_RESTARTS:
                raise ChannelError(f"the head's call server died {self._server_restarts + 1} times")
            self._server_restarts += 1
        try:
            actor, port = self._start_server()
        except Exception as failed:  # noqa: BLE001 - the head is gone or Ray refused: the channel is
            raise ChannelError(f"no new call server started on the head ({type(failed).__name__}: {failed})") from None
        with self._lock:
            self._actor, self._port = actor, port
            self._session, self._known = secrets.token_hex(16), set()
            self._assemblies.clear()  # parts of the dead server's stripes: its outcomes will come again
            stranded = {call_id: slot for call_id, slot in self._slots.items() if not slot.rerunnable}
            for call_id in stranded:
                self._pop_slot(call_id)
        for slot in stranded.values():
            slot.resolve("closed", CallServerLost(
                "the head's call server (the Ray actor that runs this pool's calls) died with this call in flight,"
                " and its tasks with it; the call was not run again because it may not run twice (max_retries=0,"
                " or sent with @). Send it again if that is safe."))

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            slots, self._slots = list(self._slots.values()), {}
            self._assemblies.clear()
        for slot in slots:
            slot.resolve("closed", error)

    @staticmethod
    def _end(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.close()


def _widen(fd: int) -> None:
    """A 1 MiB pipe to and from ssh (Linux: 64 KiB by default): room for ssh to keep writing what
    arrives (and give the SSH window back) while this process's reader waits for the GIL."""
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def _said(stderr: Any) -> str:
    with contextlib.suppress(Exception):
        stderr.seek(0)
        return stderr.read().decode(errors="replace").strip().splitlines()[-1]
    return ""
