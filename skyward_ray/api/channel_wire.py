"""The frames of the call channel between a driver and its pool's head (`channel_client`, `channel_head`).

Why a channel of our own next to Ray Client: through Ray Client every call costs at least two round
trips (the object id is a ticket the client server assigns, and `ray.get` asks for it), which at
40 ms of latency doubles what a remote call costs. On the channel a call is one message up and its
outcome one message down.

A frame is a 4-byte big-endian length and a pickled tuple whose first item names the message, but
the first frame each way, which is JSON (nothing is unpickled before the token is checked):

    driver -> head: {"token": ..., "session": ...}      the pool's token, a session id
    head -> driver: {"ok": bool, "detail": str}
    driver -> head: ("call", call_id, function_key, function_bytes | None, payload)
                    ("calls", [(call_id, function_key, function_bytes | None, payload), ...])
                    ("cancel", call_id, force)
                    ("resume", [call_id, ...])            after a reconnect: the calls still waited for
                    ("ack", [call_id, ...])              outcomes received: the head forgets them
    head -> driver: ("done", call_id, kind, payload)     kind: "value" | "task_error" | "error"
                    ("unreceived", [call_id, ...])        of a resume's calls, those that never arrived

The envelope is plain `pickle` of bytes, strings and numbers; the user's function (with its Ray
options), a call's payload (its arguments and the call's Ray options) and its result travel inside
it as cloudpickle bytes, made and read by the two ends.
Both ends are this package, the same version (the pool ships it to its nodes).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import struct
from typing import IO, Any

HEADER = struct.Struct(">I")
MAX_FRAME = 2**31 - 1  # one call's pickled arguments or result; past this Ray's own object store is the way


class ChannelClosed(ConnectionError):
    """The channel's other end went away (EOF mid-frame or before one)."""


def encode(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(body) > MAX_FRAME:
        raise ValueError(f"a call channel message of {len(body):,} bytes is over {MAX_FRAME:,}")
    return HEADER.pack(len(body)) + body


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


def read_frame(stream: IO[bytes]) -> tuple[Any, ...]:
    """One message from a blocking byte stream (the driver's end: ssh's stdout)."""
    header = _read_exactly(stream, HEADER.size)
    (size,) = HEADER.unpack(header)
    return pickle.loads(_read_exactly(stream, size))


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
        (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
        return pickle.loads(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        raise ChannelClosed("the call channel closed") from None
