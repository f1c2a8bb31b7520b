"""The SSH tunnel's local ports, held by this process for the tunnel's whole life.

Why: if ssh itself listened on 127.0.0.1:P, then every time the tunnel's supervisor restarted ssh
(a network blip, sshd restarting) the port would be free for a moment, and any other local user
who bound it then would receive the pool's GCS and Ray Client connections, bearer token included.
So ssh forwards from Unix sockets in a private (0700) directory, and this relay keeps the TCP
listeners open from the tunnel's start to its stop, copying each accepted connection to the
current ssh's Unix socket. The port is never free; a connection made while ssh restarts waits for
the new ssh (up to `connect_wait`), or is closed.

Why threads: the relay is on every call's path (`>>` latency), so each direction of each
connection has its own thread blocked in `recv_into`, a large buffer, and TCP_NODELAY on the
client's socket; no select loop stands between a byte's arrival and its sending. The connections
are few and long-lived (Ray Client's gRPC channel, GCS clients).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BUFFER_BYTES = 256 * 1024
CONNECT_WAIT_S = 20.0  # a restart's backoff is at most 10 s by default, plus ssh's own connect


class _Pair:
    """One relayed connection: the client's TCP socket and ssh's Unix socket, closed together."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self._lock = threading.Lock()
        self._open_directions = 2

    def pump(self, source: socket.socket, target: socket.socket) -> None:
        """Copy `source` to `target` until EOF (then half-close `target`) or an error (then cut both)."""
        buffer = bytearray(BUFFER_BYTES)
        view = memoryview(buffer)
        try:
            while True:
                received = source.recv_into(buffer)
                if not received:
                    break
                target.sendall(view[:received])
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)
        except OSError:
            self.cut()
        with self._lock:
            self._open_directions -= 1
            done = self._open_directions <= 0
        if done:
            self.cut()

    def cut(self) -> None:
        """End both sockets; a thread blocked on either wakes up (shutdown before close)."""
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class TcpToUnixRelay:
    """127.0.0.1 TCP listeners, listener `i` relaying to the Unix socket `targets[i]`.

    `usable()` false means nothing will listen on the targets again (the tunnel gave up): new
    connections are closed at once instead of waiting.
    """

    def __init__(self, targets: Sequence[Path], usable: Callable[[], bool],
                 connect_wait: float = CONNECT_WAIT_S) -> None:
        self.targets = list(targets)
        self._usable = usable
        self.connect_wait = connect_wait
        self._listeners: list[socket.socket] = []
        self._pairs: set[_Pair] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None

    @property
    def is_open(self) -> bool:
        return bool(self._listeners) and not self._closed.is_set()

    def listen(self, ports: Sequence[int]) -> list[int]:
        """Bind and listen on 127.0.0.1 at `ports` (0: the kernel picks); return the ports.

        Raises OSError (nothing left bound) if a port is taken. No SO_REUSEPORT: while this
        listens, no other socket can bind the port."""
        if len(ports) != len(self.targets):
            raise ValueError("one port per Unix socket target")
        try:
            for port in ports:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                self._listeners.append(listener)
                listener.bind(("127.0.0.1", int(port)))
                listener.listen(128)
                listener.setblocking(False)
        except OSError:
            self.close()
            raise
        self._thread = threading.Thread(target=self._accept_loop, name="ssh-tunnel-relay", daemon=True)
        self._thread.start()
        return [int(listener.getsockname()[1]) for listener in self._listeners]

    def close(self) -> None:
        """Stop listening and cut every relayed connection. Safe to call twice."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.close()
        self._listeners = []
        with self._lock:
            pairs, self._pairs = list(self._pairs), set()
        for pair in pairs:
            pair.cut()
        for sock in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ, None)
            for i, listener in enumerate(self._listeners):
                selector.register(listener, selectors.EVENT_READ, i)
            while not self._closed.is_set():
                for key, _ in selector.select():
                    if key.data is None or self._closed.is_set():
                        continue
                    listener = self._listeners[key.data]
                    with contextlib.suppress(BlockingIOError, InterruptedError, ConnectionAbortedError):
                        client, _ = listener.accept()
                        threading.Thread(target=self._serve, args=(client, self.targets[key.data]),
                                         name="ssh-tunnel-relay-conn", daemon=True).start()

    def _serve(self, client: socket.socket, target: Path) -> None:
        client.setblocking(True)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream = self._connect(target)
        if upstream is None:
            with contextlib.suppress(OSError):
                client.close()
            return
        pair = _Pair(client, upstream)
        with self._lock:
            if self._closed.is_set():
                pair.cut()
                return
            self._pairs.add(pair)
        back = threading.Thread(target=pair.pump, args=(upstream, client), name="ssh-tunnel-relay-back", daemon=True)
        back.start()
        pair.pump(client, upstream)
        back.join()
        with self._lock:
            self._pairs.discard(pair)

    def _connect(self, target: Path) -> socket.socket | None:
        """ssh's Unix socket, once it listens (it may be restarting); None if closed or too late."""
        deadline = time.monotonic() + self.connect_wait
        while not self._closed.is_set() and self._usable():
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(str(target))
                return upstream
            except OSError:
                upstream.close()
            if time.monotonic() >= deadline:
                return None
            self._closed.wait(0.05)
        return None
