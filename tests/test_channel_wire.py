"""The call channel's frames (`skyward_ray.api.channel_wire`) through a real pipe and a real asyncio
stream: what the driver reads is what the head wrote, whatever sizes the reads come in.

No Ray here; the channel over a real pool (every operator, a dropped SSH connection) is in
`test_remote_driver.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading

import pytest

from skyward_ray.api import channel_wire as wire


def _write_slowly(fd: int, data: bytes, piece: int) -> threading.Thread:
    """Write `data` to `fd` in pieces of `piece` bytes (as ssh hands a pipe what the network gave it)."""
    def run() -> None:
        for start in range(0, len(data), piece):
            os.write(fd, data[start:start + piece])
        os.close(fd)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("piece", [1, 7, 65536, 1 << 22])
def test_the_driver_reads_every_message_and_each_payload_whole_however_the_bytes_arrive(piece):
    big = os.urandom(3 * 2**20 + 5)  # past the reader's chunk: read straight into a buffer of its own
    frames = [wire.encode(("unreceived", [1, 2])), *wire.encode_with_trailer(("done", 7, "value"), b"v"),
              *wire.encode_with_trailer(("done", 8, "value"), big),
              *wire.encode_with_trailer(("done", 9, "error"), b""), wire.encode(("ack", [3]))]
    if piece == 1:
        frames = frames[:3] + frames[-3:]  # a byte at a time: leave the 3 MB payload to the other cases
    read_end, write_end = os.pipe()
    writer = _write_slowly(write_end, b"".join(frames), piece)
    reader = wire.FrameReader(read_end)
    try:
        got = [reader.read_frame() for _ in range(5 if piece != 1 else 4)]
        with pytest.raises(wire.ChannelClosed):
            reader.read_frame()
    finally:
        writer.join(timeout=30)
        os.close(read_end)
    expected = [("unreceived", [1, 2]), ("done", 7, "value", b"v"), ("done", 8, "value", big),
                ("done", 9, "error", b""), ("ack", [3])]
    if piece == 1:
        expected = expected[:2] + expected[3:]
    assert [tuple(m) for m in got] == expected


def test_readable_within_says_whether_a_next_message_is_there_or_comes_in_time():
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, wire.encode(("ack", [1])) + wire.encode(("ack", [2])))
        reader = wire.FrameReader(read_end)
        assert reader.read_frame() == ("ack", [1])
        assert reader.readable_within(0), "the second frame came with the first read"
        assert reader.read_frame() == ("ack", [2])
        assert not reader.readable_within(0), "nothing more was written"
        os.write(write_end, wire.encode(("ack", [3])))
        assert reader.readable_within(0), "waiting in the pipe"
        assert reader.read_frame() == ("ack", [3])
        late = threading.Timer(0.2, os.write, (write_end, wire.encode(("ack", [4]))))
        late.start()
        assert reader.readable_within(30), "written while the reader waited"
        late.join()
    finally:
        os.close(read_end)
        os.close(write_end)


def test_the_head_reads_frames_with_and_without_a_payload_from_its_stream():
    async def run() -> list[tuple]:
        stream = asyncio.StreamReader()
        stream.feed_data(wire.encode(("calls", [(1, "k", None, b"p")])))
        stream.feed_data(b"".join(wire.encode_with_trailer(("done", 4, "value"), b"x" * 100_000)))
        stream.feed_eof()
        got = [await wire.read_frame_async(stream), await wire.read_frame_async(stream)]
        with pytest.raises(wire.ChannelClosed):
            await wire.read_frame_async(stream)
        return got

    assert asyncio.run(run()) == [("calls", [(1, "k", None, b"p")]), ("done", 4, "value", b"x" * 100_000)]


class _Collected:
    """Where a session of the head writes (in place of its connection's asyncio writer): the bytes, in order."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


def _written_by_the_head(outcomes: dict[int, tuple[str, bytes]], call_ids: list[int]) -> list[tuple]:
    """The frames a session of the head's call server writes for `call_ids` (`write_outcomes`, as at
    the end of a turn of its event loop), as the driver's reader reads them from a pipe."""
    from skyward_ray.api.channel_head import _Session

    session = _Session()
    session.writer = _Collected()  # type: ignore[assignment]
    session.unacked = dict(outcomes)
    session.write_outcomes(call_ids)
    read_end, write_end = os.pipe()
    writer = _write_slowly(write_end, bytes(session.writer.data), 65536)
    frames: list[tuple] = []
    try:
        reader = wire.FrameReader(read_end)
        with contextlib.suppress(wire.ChannelClosed):
            while True:
                frames.append(tuple(reader.read_frame()))
    finally:
        writer.join(timeout=30)
        os.close(read_end)
    return frames


def test_a_burst_of_small_outcomes_goes_as_one_frame_and_a_large_one_on_its_own():
    """The small ones in one frame (their payloads joined, each one's size said), a large one whole
    in its own, an outcome already acknowledged not at all."""
    from skyward_ray.api.channel_head import SMALL

    large = os.urandom(SMALL)
    got = _written_by_the_head({1: ("value", b"a"), 2: ("task_error", b""), 3: ("value", large), 4: ("value", b"bc")},
                               [1, 2, 3, 4, 5])
    assert got == [("done", 3, "value", large), ("dones", [(1, "value", 1), (2, "task_error", 0), (4, "value", 2)], b"abc")]


def test_many_small_outcomes_at_once_go_in_frames_of_a_bounded_size():
    """As after a reconnect, when the head sends every outcome the driver has not acknowledged: no
    frame carries more than DONES_BYTES, and every outcome comes, once, in order."""
    from skyward_ray.api.channel_head import DONES_BYTES, SMALL

    outcomes = {i: ("value", bytes([i]) * (SMALL - 1)) for i in range(1, 41)}  # 2.5 MiB in all
    got = _written_by_the_head(outcomes, list(outcomes))
    assert all(kind == "dones" and len(payloads) <= DONES_BYTES for kind, _, payloads in got)
    assert len(got) == 3
    sent = [outcome for _, items, payloads in got for outcome in _split(items, payloads)]
    assert sent == [(i, "value", payload) for i, (_, payload) in outcomes.items()]


def _split(items: list[tuple[int, str, int]], payloads: bytes) -> list[tuple[int, str, bytes]]:
    """A `dones` frame's outcomes, each with its own part of the joined payloads."""
    ends = list(itertools.accumulate(size for _, _, size in items))
    return [(call_id, kind, bytes(payloads[end - size:end])) for (call_id, kind, size), end in zip(items, ends)]
