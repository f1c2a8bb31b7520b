"""The server side every simulated cloud API shares: a threaded HTTP server on a free port, the
record of the calls it received, and scripted faults.

A cloud's fake (`tests.simaws.server`, `tests.simrunpod.server`, `tests.simvast.server`) models
only its cloud: what a request means and what the answer is (`respond`). Serving, recording and
"answer the next N matching requests with this error" are the same for all of them, so they live
here once:

- `ApiSimulator.start(host)` listens on a free port in a daemon thread (the stdlib's threading
  server with a JSON handler, or any WSGI-style server a fake makes itself, via `serve`);
  `stop()` shuts it down and joins the thread;
- `record(call)` / `recorded(keep)`: every request, oldest first, under one lock;
- `faults`: a `FaultScript` of the fake's own fault objects (each with `matches(*request)` and
  `hits`), consumed first-in first-out; `fault(f)` scopes one to a `with` block.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from urllib.parse import parse_qs, urlsplit

LOST = object()  # an answer never sent: the client sees the connection drop before a status line


class Text(str):
    """A plain-text answer (not JSON)."""


class EventStream:
    """A Server-Sent Events answer that, like a live log stream, does not end when its events are
    sent: `events` (each a complete event, blank line included), then a keep-alive comment every
    `keep_alive_s` while the client stays, for at most `hold_s` (the connection is then closed)."""

    def __init__(self, events: list[str], hold_s: float = 30.0, keep_alive_s: float = 5.0) -> None:
        self.events = events
        self.hold_s = hold_s
        self.keep_alive_s = keep_alive_s


class ScriptedFault(Protocol):
    hits: int

    def matches(self, *request: Any) -> bool: ...


F = TypeVar("F", bound=ScriptedFault)


class FaultScript(Generic[F]):
    """Faults a test scripted, in the order given: the first that matches a request answers it."""

    def __init__(self, lock: threading.RLock) -> None:
        self._faults: list[F] = []
        self._lock = lock

    def add(self, fault: F) -> F:
        with self._lock:
            self._faults.append(fault)
        return fault

    def remove(self, fault: F) -> None:
        with self._lock:
            if fault in self._faults:
                self._faults.remove(fault)

    def discard(self, keep: Callable[[F], bool]) -> None:
        """Drop every fault for which `keep` is false."""
        with self._lock:
            self._faults[:] = [f for f in self._faults if keep(f)]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, *request: Any) -> F | None:
        """The fault that answers this request (its `hits` counted), or None: pass it to the model."""
        with self._lock:
            fault = next((f for f in self._faults if f.matches(*request)), None)
            if fault is not None:
                fault.hits += 1
            return fault


class ApiSimulator:
    """A simulated cloud API's server, call record and fault script; `respond` is the cloud's."""

    thread_name: ClassVar[str] = "simapi"
    methods: ClassVar[frozenset[str]] = frozenset({"POST"})
    http_protocol: ClassVar[str] = "HTTP/1.0"
    default_host: ClassVar[str] = "127.0.0.1"

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.call_log: list[Any] = []
        self.faults: FaultScript[Any] = FaultScript(self.lock)
        self.host = ""
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- serving -------------------------------------------------------------------------------------
    def start(self, host: str | None = None) -> Any:
        """Listen on `host` (the class's default: loopback, or every address) at a free port."""
        self.serve(_Server((host or self.default_host, 0), _handler_for(self)))
        return self

    def serve(self, server: Any) -> None:
        """Run a server made by the fake (`serve_forever`/`shutdown`/`server_close`) in a daemon thread."""
        server.daemon_threads = True
        self._server = server
        self.host, self.port = server.server_address[:2]
        self._thread = threading.Thread(target=server.serve_forever, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        """Where this process reaches the server ("" before it started)."""
        if not self.port:
            return ""
        return f"http://{'127.0.0.1' if self.host == '0.0.0.0' else self.host}:{self.port}"

    def client_env(self) -> dict[str, str]:
        """Environment a client SDK needs to talk to this server (none by default)."""
        return {}

    def respond(self, method: str, path: str, query: Mapping[str, str], body: bytes,
                headers: Any) -> tuple[int, Any]:
        """(status, answer) for one request: a JSON-able value, a `Text`, or `LOST`."""
        raise NotImplementedError

    # -- the record and the faults -------------------------------------------------------------------
    def record(self, call: Any) -> None:
        with self.lock:
            self.call_log.append(call)

    def recorded(self, keep: Callable[[Any], bool] = lambda call: True) -> list[Any]:
        """The calls received (oldest first) that `keep` accepts."""
        with self.lock:
            return [c for c in self.call_log if keep(c)]

    def inject(self, fault: Any) -> Any:
        return self.faults.add(fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    @contextlib.contextmanager
    def fault(self, fault: Any) -> Iterator[Any]:
        """The fault answers matching requests for the block only."""
        self.faults.add(fault)
        try:
            yield fault
        finally:
            self.faults.remove(fault)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a machine that ended itself is gone before the answer: nobody to tell


def _handler_for(sim: ApiSimulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = sim.http_protocol

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _serve(self) -> None:
            if self.command not in sim.methods:
                self.send_error(501, f"Unsupported method ({self.command!r})")
                return
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, answer = sim.respond(self.command, parts.path, query, body, self.headers)
            if answer is LOST:
                self.close_connection = True  # no status line: the client sees the connection drop
                return
            if isinstance(answer, EventStream):
                self._stream(status, answer)
                return
            plain = isinstance(answer, Text)
            data = answer.encode() if plain else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if plain else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, status: int, answer: EventStream) -> None:
            """Headers, the events at once, then keep-alives until the client leaves or `hold_s`;
            no length: the stream ends when the connection closes (HTTP/1.0)."""
            self.close_connection = True
            self.send_response(status)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            try:
                self.wfile.write("".join(answer.events).encode())
                self.wfile.flush()
                deadline = time.monotonic() + answer.hold_s
                while time.monotonic() < deadline:
                    time.sleep(min(answer.keep_alive_s, max(0.0, deadline - time.monotonic())))
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
            except OSError:
                pass  # the client has what it wanted and left

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    return Handler
