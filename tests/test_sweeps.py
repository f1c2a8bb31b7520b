"""Sweeps on a real local pool: results as they complete, failed trials kept, the best so far,
and leaving early cancelling the rest."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import skyward_ray as sky


@sky.function
def after(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@sky.function
def marked(job: tuple[float, str]) -> float:
    seconds, directory = job
    time.sleep(seconds)
    Path(directory, f"{seconds}").write_text("finished")  # local nodes share this machine's files
    return seconds


@sky.function
def trial(config: dict) -> dict:
    if config["lr"] > 1:
        raise ValueError(f"lr={config['lr']} diverged")
    time.sleep(config.get("sleep", 0))
    return {"loss": (config["lr"] - 0.3) ** 2}


@sky.function(timeout=1)
def slow_trial(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.fixture(scope="module")
def pool():
    with sky.Compute(nodes=2) as opened:
        after(0.0) @ opened  # every node has a worker process up: the timings below are the calls' own
        yield opened


def test_as_completed_yields_in_finishing_order_with_items(pool):
    trials = list(pool.as_completed(after, [2.0, 0.1, 1.0]))
    assert trials[0].item == 0.1 and trials[0].index == 1, "the short call comes back first"
    assert sorted(t.index for t in trials) == [0, 1, 2] and all(t.ok and t.value == t.item for t in trials)
    finished = [t.seconds for t in trials]
    assert finished == sorted(finished) and finished[-1] - finished[0] >= 0.9


def test_failed_trials_are_kept_and_the_sweep_goes_on(pool):
    configs = [{"lr": 0.1}, {"lr": 5.0}, {"lr": 0.3}, {"lr": 0.5}]
    results = pool.map(trial, configs, return_exceptions=True)
    assert isinstance(results[1], ValueError) and "lr=5.0 diverged" in str(results[1])
    assert [r["loss"] for i, r in enumerate(results) if i != 1] == pytest.approx([0.04, 0.0, 0.04])
    with pytest.raises(ValueError, match="lr=5.0 diverged"):  # without it, the first failure is raised
        pool.map(trial, configs)


def test_sweep_tracks_the_best_so_far_and_the_failures(pool):
    configs = [{"lr": lr, "sleep": 0.2} for lr in (0.9, 0.35, 7.0, 0.3, 0.6)]
    sweep = pool.sweep(trial, configs, score="loss", mode="min", progress=False)
    best_seen = []
    for finished in sweep:
        best_seen.append(sweep.best.item["lr"] if sweep.best else None)
        assert finished.item in configs
    assert sweep.best.item == {"lr": 0.3, "sleep": 0.2} and sweep.best.value["loss"] == 0.0
    assert [t.item["lr"] for t in sweep.failed] == [7.0] and isinstance(sweep.failed[0].error, ValueError)
    assert len(sweep.trials) == 5 and sweep.eta_seconds() == 0.0
    assert best_seen[-1] == 0.3


def test_a_timed_out_trial_is_a_failed_trial_not_the_end_of_the_sweep(pool):
    sweep = pool.sweep(slow_trial, [0.1, 30.0, 0.2], progress=False).run()
    assert [t.item for t in sweep.failed] == [30.0]
    assert isinstance(sweep.failed[0].error, sky.FunctionTimeoutError)
    assert sweep.best.item == 0.2  # numeric results, higher is better by default


def test_leaving_the_loop_early_cancels_the_calls_still_running(pool, tmp_path):
    jobs = [(0.1, str(tmp_path)), (3.0, str(tmp_path)), (3.0, str(tmp_path))]
    for first in pool.as_completed(marked, jobs):
        break
    assert first.item == jobs[0]
    time.sleep(4.0)  # long enough for the slow calls to have finished, had they not been cancelled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.1"]


def test_sweep_checks_its_arguments_before_sending_anything(pool):
    with pytest.raises(sky.SpecError, match="mode='best'"):
        pool.sweep(trial, [{"lr": 1}], mode="best")
    with pytest.raises(TypeError, match="@sky.function"):
        pool.as_completed(lambda x: x, [1])


@pytest.mark.parametrize("wait", ["map", "as_completed", "sweep"])
def test_a_lost_pool_ends_every_wait_within_a_slice(pool, wait):
    """Groups, maps and sweeps wait through one iterator: the pool's loss (set by its head watch)
    reaches each of them within a slice, a sweep's too (its failures are kept, its pool's loss is not)."""
    lost = sky.PoolLostError("the head is gone (simulated)")
    waits = {"map": lambda: pool.map(after, [3.0, 3.0]),
             "as_completed": lambda: list(pool.as_completed(after, [3.0, 3.0])),
             "sweep": lambda: pool.sweep(after, [3.0, 3.0], progress=False).run()}
    timer = threading.Timer(0.5, pool.dispatcher.watch.interrupt_waits, args=(lost,))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(sky.PoolLostError) as raised:
            waits[wait]()
    finally:
        timer.join()
        pool.dispatcher.watch.interrupt_waits(None)
    assert raised.value is lost and time.monotonic() - started < 2.0
    after(0.0) @ pool  # the loss was only simulated: the pool still serves
