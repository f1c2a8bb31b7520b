"""The frames of the call channel between a driver and its pool's head (`channel_client`, `channel_head`).

Why a channel of our own next to Ray Client: through Ray Client every call costs at least two round
trips (the object id is a ticket the client server assigns, and `ray.get` asks for it), which at
40 ms of latency doubles what a remote call costs. On the channel a call is one message up and its
outcome one message down.

A frame is two 4-byte big-endian lengths, a pickled tuple whose first item names the message (the
envelope), and a trailer of raw bytes that is the message's last item (a call's outcome: its value
travels once, never copied into the envelope). The first frame each way is JSON instead, a 4-byte
length and the text (nothing is unpickled before the token is checked):

    driver -> head: {"token": ..., "session": ...}      the pool's token, a session id
                    (a lane's: {"token": ..., "session": ..., "lane": n}; see below)
    head -> driver: {"ok": bool, "detail": str}
    driver -> head: ("calls", [(call_id, function_key, function_bytes | None, payload), ...])
                    ("cancel", call_id, force)
                    ("resume", [call_id, ...])            after a reconnect: the calls still waited for
                    ("ack", [call_id, ...])              outcomes received: the head forgets them
                    ("lane_lost", n)                     lane n dropped: send striped outcomes again, whole
    head -> driver: ("done", call_id, kind, payload)     kind: "value" | "task_error" | "error"
                    ("dones", [(call_id, kind, size), ...], payloads)
                                                         small outcomes of one burst, payloads joined
                    ("part", call_id, stripe_id, kind, total, offset, count, payload)
                                                         one of `count` parts of a large outcome
                    ("unreceived", [call_id, ...])        of a resume's calls, those that never arrived

A lane is one more connection of the same session that only carries parts: a large outcome's first
part comes on the connection and each other part on a lane of its own, side by side (one SSH
channel carries at most its window per round trip). Stripe ids are random per server, so parts of
two stripings (a resend, a new server's) never mix.

The envelope is plain `pickle` of bytes, strings and numbers; the user's function (with its Ray
options) and a call's payload (its arguments and the call's Ray options) travel inside it as
cloudpickle bytes, and an outcome's payload (a value: plain pickle where it can, else cloudpickle;
an error) as the frame's trailer, made and read by the two ends.
Both ends are this package, the same version (the pool ships it to its nodes).
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import select
import struct
from typing import IO, Any

HEADER = struct.Struct(">I")  # a hello's: its length
FRAME = struct.Struct(">II")  # a message's: its envelope's length, then its trailer's plus one (0: none)
MAX_FRAME = 2**31 - 1  # one call's pickled arguments or result; past this Ray's own object store is the way


class ChannelClosed(ConnectionError):
    """The channel's other end went away (EOF mid-frame or before one)."""


def encode(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(body) > MAX_FRAME:
        raise ValueError(f"a call channel message of {len(body):,} bytes is over {MAX_FRAME:,}")
    return FRAME.pack(len(body), 0) + body


def encode_with_trailer(message: tuple[Any, ...], trailer: bytes) -> tuple[bytes, bytes]:
    """`message + (trailer,)` as two parts to write one after the other: the trailer (a pickled value,
    maybe of hundreds of megabytes) is neither copied into the envelope nor joined to it."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(trailer) >= MAX_FRAME:
        raise ValueError(f"a call channel message of {len(trailer):,} bytes is over {MAX_FRAME:,}")
    return FRAME.pack(len(body), len(trailer) + 1) + body, trailer


def encode_hello(fields: dict[str, Any]) -> bytes:
    body = json.dumps(fields).encode()
    return HEADER.pack(len(body)) + body


HELLO_MAX = 4096  # a hello is a token and a session id


def read_hello(stream: IO[bytes]) -> dict[str, Any]:
    (size,) = HEADER.unpack(_read_exactly(stream, HEADER.size))
    if size > HELLO_MAX:
        raise ChannelClosed("the call channel's first frame is not a hello")
    return dict(json.loads(_read_exactly(stream, size)))


async def read_hello_async(reader: asyncio.StreamReader) -> dict[str, Any]:
    try:
        (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
        if size > HELLO_MAX:
            raise ChannelClosed("the call channel's first frame is not a hello")
        return dict(json.loads(await reader.readexactly(size)))
    except (asyncio.IncompleteReadError, ValueError):
        raise ChannelClosed("the call channel's first frame is not a hello") from None


class FrameReader:
    """The driver's end: messages from a blocking file descriptor (ssh's stdout), read in chunks.

    Why not one read per header and body: a group's outcomes arrive as hundreds of small frames,
    and two system calls each (plus a wake-up of this thread) is what a gather of 500 waited on; a
    large result read a pipe's worth at a time into fresh buffers is copied again and again. Here
    small frames come out of one buffer filled `CHUNK` at a time, and a large one is read straight
    into its own buffer. `readable_within()` says whether more is there or comes soon (to batch the acks)."""

    CHUNK = 1 << 20

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def _fill(self) -> None:
        chunk = os.read(self._fd, self.CHUNK)
        if not chunk:
            raise ChannelClosed("the call channel closed")
        self._buffer += chunk

    def read_frame(self) -> tuple[Any, ...]:
        while len(self._buffer) < FRAME.size:
            self._fill()
        size, trailer = FRAME.unpack_from(self._buffer)
        end = FRAME.size + size
        while len(self._buffer) < end:
            self._fill()
        message = pickle.loads(bytes(self._buffer[FRAME.size:end]))
        del self._buffer[:end]
        return (*message, self._read_trailer(trailer - 1)) if trailer else message

    def _read_trailer(self, size: int) -> bytearray:
        """The trailer: what the buffer holds of it, the rest read straight into its own buffer."""
        if len(self._buffer) >= size:
            trailer = self._buffer[:size]
            del self._buffer[:size]
            return trailer
        trailer = bytearray(size)
        have = len(self._buffer)
        trailer[:have] = self._buffer
        self._buffer.clear()
        with memoryview(trailer) as view:
            while have < size:
                read = os.readv(self._fd, [view[have:]])
                if not read:
                    raise ChannelClosed("the call channel closed")
                have += read
        return trailer

    def readable_within(self, timeout: float) -> bool:
        """Whether something of a next message is here, or comes within `timeout` seconds."""
        return bool(self._buffer) or bool(select.select([self._fd], [], [], timeout)[0])


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise ChannelClosed("the call channel closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


async def read_frame_async(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    """One message from an asyncio stream (the head's end)."""
    try:
        size, trailer = FRAME.unpack(await reader.readexactly(FRAME.size))
        message = pickle.loads(await reader.readexactly(size))
        return (*message, await reader.readexactly(trailer - 1)) if trailer else message
    except asyncio.IncompleteReadError:
        raise ChannelClosed("the call channel closed") from None
