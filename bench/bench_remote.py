"""Bench: a pool driven from outside the cloud, through the SSH tunnel (simulated AWS region).

    .venv/bin/python bench/bench_remote.py [--calls 200] [--rtt 40]

One 2-node pool on the simulated region (each machine in its own network namespace; the driver
reaches only the head's port 22). In one run it measures:

- the `>>` round trip of a trivial call through our pool (the head's call channel over the pinned
  SSH session), against plain Ray Client on the same pool and connection (`ray.get(f.remote())`),
  and against a caller inside the cluster (a task calling `ray.get(f.remote())` on a node: no
  network in between);
- where the entry time goes (the launcher's own timeline);
- what a node's own Python environment costs: uv making a venv with the driver's Python and Ray,
  cold (empty cache: every wheel downloaded, as a fresh cloud machine does) and warm (from a cache).

With `--rtt MS` (this kernel has no netem) the driver's SSH connection to the head goes through a
delaying relay (`bench/delay_proxy.py` as OpenSSH's ProxyCommand, through an `ssh` wrapper first on
PATH), and the same pool is measured at +0 and +MS of round trip, in one run: `>>`, gather and
`pool.map` of 500, a 50 MB argument up and result down, each against plain Ray Client on the same
connection (the ratio is ours / plain); then `>>` at +MS in round trips beyond a caller inside the
cluster, and the gather and map against the bound: the same 500 tasks (our function as the pool runs
it, with its arguments, the same Ray options and the node's GPU the pool adds to each call) sent and
gathered by a warm actor on the head. Our gather, its bound, our map and its bound are taken in
alternating blocks of three (six times each). Three figures compare them: each side's best of
eighteen, each side's median, and the paired ratio (each block of ours against the bound's block
right after it, block median to block median; the median and the range of those six): on this
shared machine one taking moves by a fifth or more between moments, and a single lucky taking of
one side moves a best-of figure, while a pair is taken in the same moment. Beside them, the CPU
each side's runs took, by kind of process.

Starts its own simulated region and ends everything it starts.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("SKYWARD_QUIET", "1")

import ray  # noqa: E402

import skyward_ray as sky  # noqa: E402
from tests.simaws import SIM_SETTINGS, simulated_aws  # noqa: E402
from tests.simaws.hosts import NODE_PACKAGES  # noqa: E402

@sky.function
def in_cluster_round_trip(calls: int) -> float:
    """The median `ray.get(f.remote())` of a caller inside the cluster (a task on a node, as a Ray
    driver on the head would call): what a call costs with no network between caller and pool."""
    import statistics
    import time

    import ray

    f = ray.remote(num_cpus=0)(lambda: 1)
    ray.get(f.remote())
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        ray.get(f.remote())
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


class FanOut:
    """A warm actor on the head sending the same fan-out as our gather or map: the bound for one
    sent from afar (the head's call channel is such an actor, plus the channel)."""

    def __init__(self, function: Any, ray_options: dict, task_options: dict, args: tuple) -> None:
        import ray

        # the pool's own options go to `.options()`, as the call server gives them: a GPU in
        # `ray.remote(...)` itself would make Ray end the worker after every task (its max_calls=1)
        self.task = ray.remote(**ray_options)(function).options(**task_options, scheduling_strategy="SPREAD")
        self.args = args

    def seconds(self, fan: int) -> float:
        """One fan-out of `fan` calls of the function with its arguments as Ray tasks with its
        options, spread over the pool and gathered here."""
        import time

        import ray

        t = time.perf_counter()
        ray.get([self.task.remote(*self.args) for _ in range(fan)])
        return time.perf_counter() - t


class InClusterFanOut:
    """`fan` calls of `function(*args)` exactly as our gather's or map's tasks run (the function as
    the pool runs it, `attempts.guarded`, with its Ray options and those the pool adds to each call:
    the node's GPU), from a warm actor pinned to the head: `once()` is one taking of the bound."""

    def __init__(self, pool: Any, function: Any, args: tuple, fan: int) -> None:
        self.function, self.args, self.fan = function, args, fan
        self.task_options = pool._task_options(function(*args))  # what the pool sends with every call of it

    def __enter__(self) -> InClusterFanOut:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from skyward_ray.api import attempts

        head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"])
        self.actor = ray.remote(num_cpus=0)(FanOut).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote(
            attempts.guarded(self.function.fn), self.function.options.ray_options(), self.task_options, self.args)
        self.once()  # warm: the actor's worker, the function's export, the nodes' task workers
        return self

    def once(self) -> float:
        return ray.get(self.actor.seconds.remote(self.fan))

    def __exit__(self, *exc: object) -> None:
        ray.kill(self.actor)


@sky.function
def noop() -> int:
    return 1


def median_ms(call, n: int) -> float:
    call()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def uv_env_seconds(cache: str | None) -> float:
    """Seconds for uv to make a venv with the driver's Python and Ray (+ skyward_ray's needs)."""
    uv = str(Path(sys.executable).with_name("uv"))
    python = "%d.%d.%d" % sys.version_info[:3]
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "UV_CACHE_DIR": cache or os.path.join(scratch, "cache"), "UV_LINK_MODE": "copy"}
        t = time.monotonic()
        subprocess.run([uv, "venv", "-q", "--python", python, f"{scratch}/v"], env=env, check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", f"{scratch}/v/bin/python", *NODE_PACKAGES[:-1]],
                       env=env, check=True)
        return time.monotonic() - t


@sky.function
def size_of(data: bytes) -> int:
    return len(data)


@sky.function
def blob(size: int) -> bytes:
    return b"x" * size


def delayed_ssh(directory: Path, rtt_file: Path) -> None:
    """Put an `ssh` first on PATH that reaches every host through the delaying relay."""
    real = shutil.which("ssh")
    assert real, "no ssh on PATH"
    relay = f"{sys.executable} {Path(__file__).with_name('delay_proxy.py')} --stdio %h %p --rtt-file {rtt_file}"
    wrapper = directory / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {real} -o "ProxyCommand={relay}" "$@"\n')
    wrapper.chmod(0o755)
    os.environ["PATH"] = f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"


# A gather's or map's best of this many: ours and plain Ray Client's in the table
FAN_REPEAT = 6
# Each side of the comparison with the bound (`against_the_bound`): blocks of each, runs a block
BOUND_BLOCKS, BOUND_RUNS = 6, 3


def seconds(call, repeat: int = 3) -> float:
    """The best of `repeat` runs (after one warm-up): the least disturbed by this shared machine."""
    call()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t)
    return best


def at_rtt(pool, calls: int, fan: int, megabytes: int) -> list[tuple[str, float, float]]:
    """(measure, ours, plain Ray Client) at the current round trip."""
    plain_noop = ray.remote(lambda: 1)
    plain_size = ray.remote(lambda data: len(data))
    plain_blob = ray.remote(lambda size: b"x" * size)
    spread = plain_noop.options(scheduling_strategy="SPREAD")
    data, size = b"x" * (megabytes * 2**20), megabytes * 2**20
    rows = [
        ("`>>` trivial call, median (ms)", median_ms(lambda: noop() >> pool, calls),
         median_ms(lambda: ray.get(plain_noop.remote()), calls)),
        (f"gather of {fan} (s)", seconds(lambda: sky.gather(*[noop() for _ in range(fan)]) >> pool, FAN_REPEAT),
         seconds(lambda: ray.get([spread.remote() for _ in range(fan)]), FAN_REPEAT)),
        (f"pool.map of {fan} (s)", seconds(lambda: pool.map(size_of, [b""] * fan), FAN_REPEAT),
         seconds(lambda: ray.get([plain_size.options(scheduling_strategy="SPREAD").remote(b"") for _ in range(fan)]),
                 FAN_REPEAT)),
        (f"{megabytes} MB argument up (s)", seconds(lambda: size_of(data) >> pool, 2),
         seconds(lambda: ray.get(plain_size.remote(data)), 2)),
        (f"{megabytes} MB result down (s)", seconds(lambda: blob(size) >> pool, 2),
         seconds(lambda: ray.get(plain_blob.remote(size)), 2)),
    ]
    return rows


# Where a run's CPU goes, by process (every process of this machine: the simulated nodes' are visible
# from here): the first matching fragment of a command line names it
SUBMITTER = "the call server / the bound's actor"
CPU_KINDS = (("ray::CallServer", SUBMITTER), ("ray::FanOut", SUBMITTER), ("ray::Dashboard", "Ray's daemons"),
             ("ray::", "the tasks' workers"), ("raylet", "Ray's daemons"), ("gcs_server", "Ray's daemons"),
             ("ray/", "Ray's daemons"), ("delay_proxy", "relay and ssh"), ("ssh", "relay and ssh"))


def process_cpu() -> dict[tuple[int, float], tuple[float, str]]:
    """(pid, creation time) -> (CPU seconds so far, what it is), for every process this machine has now."""
    found = {}
    me = os.getpid()
    for proc in psutil.process_iter(["cmdline", "cpu_times", "create_time"]):
        info = proc.info
        if info["cpu_times"] is None:  # gone, or not ours to read
            continue
        command = " ".join(info["cmdline"] or ())
        kind = "the driver" if proc.pid == me else next((name for fragment, name in CPU_KINDS if fragment in command),
                                                        "other")
        found[(proc.pid, info["create_time"])] = (info["cpu_times"].user + info["cpu_times"].system, kind)
    return found


def cpu_between(before: dict, after: dict) -> collections.Counter:
    """CPU seconds each kind of process used between two `process_cpu()` readings (a process that
    began and ended between them is not seen: the figures are a floor)."""
    used: collections.Counter = collections.Counter()
    for key, (seconds, kind) in after.items():
        used[kind] += seconds - before.get(key, (0.0, kind))[0]
    return used


def against_the_bound(pool, fan: int, blocks: int = BOUND_BLOCKS,
                      per_block: int = BOUND_RUNS) -> tuple[dict[str, list[float]], dict[str, collections.Counter]]:
    """Seconds of a gather and a map of `fan` from here, each next to the same fan-out from inside
    the cluster, in alternating blocks (`blocks` of each, `per_block` runs a block after a warm-up run,
    as the bound's steady state is its warm one): whatever else this shared machine does meanwhile
    falls on both sides of a ratio alike, not on whichever was measured in a worse moment. Also the
    CPU each side's counted runs took, by kind of process (`process_cpu`)."""
    samples: dict[str, list[float]] = {}
    cpu: dict[str, collections.Counter] = {}
    with InClusterFanOut(pool, noop, (), fan) as gather_bound, InClusterFanOut(pool, size_of, (b"",), fan) as map_bound:
        runs = {"gather": lambda: sky.gather(*[noop() for _ in range(fan)]) >> pool, "its bound": gather_bound.once,
                "map": lambda: pool.map(size_of, [b""] * fan), "the map's bound": map_bound.once}
        for _ in range(blocks):
            for name, run in runs.items():
                run()
                before = process_cpu()
                for _ in range(per_block):
                    if name.endswith("bound"):
                        samples.setdefault(name, []).append(run())  # the actor's own timing, inside the cluster
                        continue
                    t = time.perf_counter()
                    run()
                    samples.setdefault(name, []).append(time.perf_counter() - t)
                cpu.setdefault(name, collections.Counter()).update(cpu_between(before, process_cpu()))
    return samples, cpu


def paired_ratios(ours: list[float], bound: list[float], per_block: int = BOUND_RUNS) -> list[float]:
    """Each block of ours against the bound's block taken right after it (`against_the_bound`'s
    order), median to median: both sides of a pair meet the same moment of this shared machine."""
    blocks = range(0, min(len(ours), len(bound)), per_block)
    return [statistics.median(ours[i:i + per_block]) / statistics.median(bound[i:i + per_block]) for i in blocks]


def rtt_table(pool, rtt_file: Path, rtt_ms: float, calls: int, inside_ms: float) -> None:
    """Measure the same pool at +0 and +rtt_ms, and print both with ratios to plain Ray Client; then
    what a `>>` costs at +rtt_ms in round trips beyond a caller inside the cluster (`inside_ms`), and
    a gather and a map of 500 at +rtt_ms against the same fan-out from inside the cluster (the
    bound), each the best of 18 taken in alternating blocks (`against_the_bound`), the medians, and
    the paired ratio (`paired_ratios`)."""
    tables = {}
    for added in (0.0, rtt_ms):
        rtt_file.write_text(f"{added:g}")
        time.sleep(0.5)  # the relay re-reads the file every 0.2 s
        tables[added] = at_rtt(pool, calls, 500, 50)
    samples, cpu = against_the_bound(pool, 500)
    print(f"{'measure':34}" + "".join(f"{f'+{a:g} ms: ours':>16} {'plain':>9} {'ratio':>6}" for a in tables))
    for i, (label, _, _) in enumerate(tables[0.0]):
        cells = "".join(f"{t[i][1]:16.3f} {t[i][2]:9.3f} {t[i][1] / t[i][2]:6.2f}" for t in tables.values())
        print(f"{label:34}{cells}")
    ours, plain = tables[rtt_ms][0][1], tables[rtt_ms][0][2]
    print(f"`>>` at +{rtt_ms:g} ms: ours {ours:.1f} ms = in-cluster {inside_ms:.1f} ms + "
          f"{(ours - inside_ms) / rtt_ms:.2f} RTT (target <= 1.3); plain Ray Client {plain:.1f} ms = in-cluster + "
          f"{(plain - inside_ms) / rtt_ms:.2f} RTT")
    print(f"at +{rtt_ms:g} ms, in alternating blocks (s): " + "; ".join(
        f"{name} " + " ".join(f"{v:.3f}" for v in values) for name, values in samples.items()))
    for row, name, bound_name in ((1, "gather", "its bound"), (2, "map", "the map's bound")):
        label, _, plain = tables[rtt_ms][row]
        ours, bound = min(samples[name]), min(samples[bound_name])
        median = statistics.median(samples[name]) / statistics.median(samples[bound_name])
        pairs = paired_ratios(samples[name], samples[bound_name])
        print(f"{label.split(' (')[0]} at +{rtt_ms:g} ms: ours {ours:.3f} s = {ours / bound:.2f}x the same fan-out "
              f"from inside the cluster ({bound:.3f} s; each the best of {len(samples[name])}; target <= 1.2; "
              f"medians {median:.2f}x; paired {statistics.median(pairs):.2f}x, blocks "
              + " ".join(f"{r:.2f}" for r in pairs) + f"); plain Ray Client {plain / bound:.2f}x")
        runs = len(samples[name])
        kinds = sorted(set(cpu[name]) | set(cpu[bound_name]), key=lambda k: -cpu[name][k] - cpu[bound_name][k])
        print(f"  CPU per run, ours / the bound (ms; this machine's 2 cores are shared by all): total "
              f"{sum(cpu[name].values()) / runs * 1000:.0f} / {sum(cpu[bound_name].values()) / runs * 1000:.0f}; "
              + "; ".join(f"{kind} {cpu[name][kind] / runs * 1000:.0f} / {cpu[bound_name][kind] / runs * 1000:.0f}"
                          for kind in kinds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rtt", type=float, default=None, help="also measure with this round trip added (ms)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    rtt_file = scratch / "rtt_ms"
    rtt_file.write_text("0")
    if args.rtt is not None:
        delayed_ssh(scratch, rtt_file)
    try:
        run(args, rtt_file)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, rtt_file: Path) -> None:
    with simulated_aws("us-east-1") as (sim, hosts), tempfile.TemporaryDirectory() as keys:
        provider = sky.AWS(region="us-east-1", key_dir=keys, ssh_cidr=hosts.ssh_cidr, **SIM_SETTINGS)
        t0 = time.monotonic()
        with sky.Compute(provider=provider, accelerator="T4", nodes=2, boot_timeout=300) as pool:
            noop() >> pool
            first = time.monotonic() - t0
            timings = pool.timings
            inside = in_cluster_round_trip(args.calls) >> pool
            if args.rtt is not None:
                rtt_table(pool, rtt_file, args.rtt, args.calls, inside)
                rtt_file.write_text("0")
                time.sleep(0.5)
            ours = median_ms(lambda: noop() >> pool, args.calls)
            plain_fn = ray.remote(lambda: 1)
            plain = median_ms(lambda: ray.get(plain_fn.remote()), args.calls)
        hosts.wait_idle(timeout=30)
        left = hosts.stop()
    if args.rtt is not None:  # the pool's figures only: the node environment's are the same either way
        print(f"entry → first result: {first:.1f} s; machines left running at the end:", left or "none")
        return
    warm = uv_env_seconds(str(hosts.uv_cache))
    cold = uv_env_seconds(None)
    print(f"`>>` round trip, median of {args.calls} (2-node pool, driver outside the VPC):")
    print(f"  skyward through the SSH tunnel : {ours:7.2f} ms")
    print(f"  plain Ray Client, same tunnel  : {plain:7.2f} ms   ratio ours/plain = {ours / plain:.2f}")
    print(f"  a caller inside the cluster    : {inside:7.2f} ms   ratio ours/in-cluster = {ours / inside:.2f}")
    print(f"entry → first result: {first:.1f} s; launcher timeline (s since entry): "
          + ", ".join(f"{k}={v:.2f}" for k, v in timings.items()))
    print(f"a node's own Python + Ray with uv: cold (empty cache, from the index) {cold:.1f} s, "
          f"warm (cached) {warm:.1f} s")
    print("machines left running at the end:", left or "none")


if __name__ == "__main__":
    main()
