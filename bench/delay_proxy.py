"""A relay that adds a round-trip time: each chunk is delivered `rtt / 2` later, each way.

Why: this kernel has no netem, and the operators' cost from afar is counted in round trips, so a
bench must add the latency itself. Chunks keep their order (one constant delay per direction) and
bandwidth is not limited (a chunk is handed on as soon as it is due, whatever its size). It runs
as an OpenSSH `ProxyCommand` (stdin/stdout to HOST:PORT, the round trip read from a file that holds
milliseconds, re-read while it runs, so one connection can be measured at several delays):

    ssh -o "ProxyCommand=python bench/delay_proxy.py --stdio %h %p --rtt-file /tmp/rtt_ms" ...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable

CHUNK = 256 * 1024


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
