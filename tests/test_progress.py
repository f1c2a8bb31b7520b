"""The live progress line of long groups and sweeps, as a user at a terminal sees it."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time

from skyward_ray.api.progress import Progress
from tests.conftest import REPO

CHILD = """
import time
import skyward_ray as sky

@sky.function
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds

with sky.Compute(nodes=2) as pool:
    nap(0.01) @ pool  # warm: a busy machine can take seconds to start each node's first worker
    print("quick", sky.gather(*[nap(0.01) for _ in range(4)]) >> pool, flush=True)
    print("slow", pool.map(nap, [1.5] * 4), flush=True)
    sweep = pool.sweep(nap, [0.5, 2.5, 1.0], progress=None).run()
    print("best", sweep.best.item, flush=True)
"""


def _run_in_a_terminal(code: str, timeout: float = 240) -> str:
    """Run `code` in a fresh interpreter whose stdout and stderr are a pseudo-terminal; its output."""
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "TERM": "xterm"}
    env.pop("SKYWARD_QUIET", None)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=follower,
                            stderr=follower, env=env, close_fds=True)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, b"".join(chunks).decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_a_long_group_and_a_sweep_show_a_live_line_and_a_quick_group_shows_none():
    out = _run_in_a_terminal(CHILD)
    assert "quick [0.01, 0.01, 0.01, 0.01]" in out and "slow [1.5, 1.5, 1.5, 1.5]" in out and "best 2.5" in out
    before_quick = out[:out.index("quick [")]
    assert "×4:" not in before_quick, "a group that ends at once shows no display"
    assert "nap ×4: 4/4 done · 0 in flight · 0 failed" in out
    assert "sweep: 3/3 done · 0 in flight · 0 failed · best 2.5" in out and "ETA 0s" in out


def test_progress_counts_and_eta_without_a_terminal():
    progress = Progress("train ×10", 10, enabled=False)
    assert progress.line().startswith("train ×10: 0/10 done · 10 in flight · 0 failed")
    assert progress.eta_seconds() is None and progress.line().endswith("ETA —")
    progress.started -= 20.0
    progress.update(done=4, failed=1, best="0.93")
    assert progress.line().startswith("train ×10: 4/10 done · 6 in flight · 1 failed · best 0.93 · 20s elapsed")
    assert 29.5 < progress.eta_seconds() < 30.5  # 5 s per call so far, 6 to go
    progress.stop()  # never shown: nothing to stop, no error
