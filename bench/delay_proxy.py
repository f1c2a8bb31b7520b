"""A TCP proxy that adds a round-trip time: each chunk is delivered `rtt / 2` later, each way.

Why: this kernel has no netem, and the operators' cost from afar is counted in round trips, so a
bench must add the latency itself. Put it in front of a port (the simulated head's SSH port) and
connect there instead; chunks keep their order (one constant delay per direction) and bandwidth
is not limited (a chunk is handed on as soon as it is due, whatever its size).

    with DelayProxy(("10.0.0.5", 22), rtt=0.040) as proxy:
        connect_to(proxy.host, proxy.port)

As an OpenSSH `ProxyCommand` (stdin/stdout to HOST:PORT, the round trip read from a file that holds
milliseconds, re-read while it runs, so one connection can be measured at several delays):

    ssh -o "ProxyCommand=python bench/delay_proxy.py --stdio %h %p --rtt-file /tmp/rtt_ms" ...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

CHUNK = 256 * 1024


class DelayProxy:
    """Listens on 127.0.0.1 (a free port) and relays every connection to `upstream` with the delay.

    `connect` opens the upstream socket (default: a plain TCP connect); a caller can pass one that
    enters a network namespace, or anything else returning a connected socket. `rtt` may be changed
    while it runs (new chunks get the new delay)."""

    def __init__(self, upstream: tuple[str, int], rtt: float,
                 connect: Callable[[tuple[str, int]], socket.socket] | None = None) -> None:
        self.upstream = upstream
        self.rtt = rtt
        self._connect = connect or (lambda address: socket.create_connection(address, timeout=10))
        self.host = "127.0.0.1"
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> "DelayProxy":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, self.host, 0), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            sock = await self._loop.run_in_executor(None, self._connect, self.upstream)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            up_reader, up_writer = await asyncio.open_connection(sock=sock)
        except OSError:
            client_writer.close()
            return
        for stream in (client_writer, up_writer):
            raw = stream.get_extra_info("socket")
            if raw is not None:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pumps = [asyncio.ensure_future(self._pump(client_reader, up_writer)),
                 asyncio.ensure_future(self._pump(up_reader, client_writer))]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self._tasks.discard(pump)
            for writer in (client_writer, up_writer):
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await delayed_pump(reader, writer, lambda: self.rtt / 2)


async def delayed_pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       delay: Callable[[], float]) -> None:
    """Read chunks as they come; a second task writes each one `delay()` seconds after it was read
    (order kept: a chunk never overtakes the one before it)."""
    due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            when, data = await due.get()
            wait = when - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(deliver())
    try:
        while True:
            data = await reader.read(CHUNK)
            await due.put((time.monotonic() + delay(), data))
            if not data:
                break
        await sender
    finally:
        sender.cancel()


class _RttFile:
    """The round trip in a file (milliseconds), re-read at most every 0.2 s; 0 while it is unreadable."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._read_at = 0.0
        self._half = 0.0

    def half(self) -> float:
        now = time.monotonic()
        if now - self._read_at > 0.2:
            self._read_at = now
            try:
                with open(self.path) as f:
                    self._half = float(f.read().strip() or 0) / 2000
            except (OSError, ValueError):
                self._half = 0.0
        return self._half


async def _stdio(host: str, port: int, rtt: _RttFile) -> None:
    """stdin -> HOST:PORT and HOST:PORT -> stdout, each way delayed by half the round trip."""
    loop = asyncio.get_running_loop()
    up_reader, up_writer = await asyncio.open_connection(host, port)
    up_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), os.fdopen(0, "rb", buffering=0))
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                        os.fdopen(1, "wb", buffering=0))
    stdout = asyncio.StreamWriter(transport, protocol, None, loop)
    pumps = [asyncio.ensure_future(delayed_pump(stdin, up_writer, rtt.half)),
             asyncio.ensure_future(delayed_pump(up_reader, stdout, rtt.half))]
    await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)


def main() -> None:
    parser = argparse.ArgumentParser(description="a delaying relay, for OpenSSH's ProxyCommand")
    parser.add_argument("--stdio", nargs=2, metavar=("HOST", "PORT"), required=True)
    parser.add_argument("--rtt-file", required=True, help="a file holding the round trip to add, in ms")
    args = parser.parse_args()
    try:
        asyncio.run(_stdio(args.stdio[0], int(args.stdio[1]), _RttFile(args.rtt_file)))
    except (ConnectionError, OSError) as error:
        print(f"delay_proxy: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
