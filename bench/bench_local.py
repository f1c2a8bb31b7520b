"""Local pool vs raw Ray on the same machine, measured in one run; prints ratios (ours / Ray).

    .venv/bin/python bench/bench_local.py [--nodes 3] [--calls 300] [--gather 2000]

1. `>>` round trip vs `ray.get(f.remote())` on the same pool (median of --calls, interleaved).
2. `gather` of --gather tiny calls vs the same number of raw Ray tasks on the same pool.
3. `with sky.Compute(nodes=N)` entry to first result vs `ray.cluster_utils.Cluster` with the same
   N nodes (same CPUs and object store per node) + `ray.init` + first result; and exit times.
4. Resident memory (sum of RSS) of both clusters at rest: `SETTLE_S` after the first result, on both
   sides (a node's `ray start` may still be finishing as the first result comes back; it is gone
   within a quarter of a second).

Each cluster is measured in its own subprocess so neither inherits the other's Ray state.
Targets (ratios to Ray's own, measured side by side): round trip ≤ 1.10, gather ≤ 1.2, entry →
first result ≤ 1.2, exit ≤ 1.5, resident memory ≤ 1.1.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTLE_S = 1.0


def _rss_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 1024**2


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _with_descendants(procs: list[psutil.Process]) -> list[psutil.Process]:
    """`procs` and every process they started: Ray starts its agents with an environment of its own,
    without the machine's marker, so a marker scan alone misses them (Ray's side counts all children)."""
    found = {proc.pid: proc for proc in procs}
    for proc in procs:
        try:
            found.update({child.pid: child for child in proc.children(recursive=True)})
        except psutil.Error:
            pass
    return list(found.values())


def phase_ours(nodes: int, calls: int, gather_n: int) -> dict:
    import ray

    import skyward_ray as sky
    from node_providers.local.process_host import processes_with_marker

    @sky.function
    def tiny(x: int) -> int:
        return x

    @ray.remote
    def raw_tiny(x: int) -> int:
        return x

    t0 = time.perf_counter()
    pool = sky.Compute(nodes=nodes).__enter__()
    first = tiny(1) >> pool
    startup = time.perf_counter() - t0
    assert first == 1
    time.sleep(SETTLE_S)
    rss = _rss_mb(_with_descendants(processes_with_marker(pool.name + "-*")) + [psutil.Process()])

    for _ in range(30):  # warm both paths: workers started, functions exported
        tiny(0) >> pool
        ray.get(raw_tiny.remote(0))
    ours, raw = [], []
    for i in range(calls):
        a = time.perf_counter(); tiny(i) >> pool; b = time.perf_counter()
        ray.get(raw_tiny.remote(i)); c = time.perf_counter()
        ours.append(b - a); raw.append(c - b)

    gathers = {"ours": [], "raw": [], "raw_spread": []}
    for _ in range(3):
        a = time.perf_counter(); sky.gather(*[tiny(i) for i in range(gather_n)]) >> pool
        gathers["ours"].append(time.perf_counter() - a)
        a = time.perf_counter(); ray.get([raw_tiny.remote(i) for i in range(gather_n)])
        gathers["raw"].append(time.perf_counter() - a)
        a = time.perf_counter(); ray.get([raw_tiny.options(scheduling_strategy="SPREAD").remote(i)
                                          for i in range(gather_n)])
        gathers["raw_spread"].append(time.perf_counter() - a)

    timings = pool.timings
    cluster_procs = _with_descendants(processes_with_marker(pool.name + "-*"))
    t1 = time.perf_counter()
    name = pool.name
    pool.close()
    while any(_alive(proc) for proc in cluster_procs):  # every process of it, the agents included
        time.sleep(0.01)
    exit_s = time.perf_counter() - t1
    assert processes_with_marker(name + "-*") == []
    return {
        "startup_s": startup, "exit_s": exit_s, "rss_mb": rss, "launcher": timings,
        "rt_ours_ms": statistics.median(ours) * 1e3, "rt_raw_ms": statistics.median(raw) * 1e3,
        "gather_ours_s": min(gathers["ours"]), "gather_raw_s": min(gathers["raw"]),
        "gather_raw_spread_s": min(gathers["raw_spread"]),
    }


def phase_ray_cluster(nodes: int) -> dict:
    """The baseline: Ray's own multi-node-on-one-machine helper, sized like our local nodes."""
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                       "RAY_USAGE_STATS_ENABLED": "0"})
    import ray
    from ray.cluster_utils import Cluster

    cpus = max(1, (os.cpu_count() or 1) // nodes)
    node_args = {"num_cpus": cpus, "object_store_memory": 100 * 1024**2}

    @ray.remote
    def raw_tiny(x: int) -> int:
        return x

    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**node_args)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    first = ray.get(raw_tiny.remote(1))
    startup = time.perf_counter() - t0
    assert first == 1
    time.sleep(SETTLE_S)
    me = psutil.Process()
    rss = _rss_mb([me] + me.children(recursive=True))
    t1 = time.perf_counter()
    ray.shutdown()
    cluster.shutdown()
    exit_s = time.perf_counter() - t1
    return {"startup_s": startup, "exit_s": exit_s, "rss_mb": rss}


def _run_phase(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": REPO, "SKYWARD_QUIET": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, timeout=900)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"phase {args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--gather", type=int, default=2000)
    parser.add_argument("--phase", choices=["ours", "ray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "ours":
        print("RESULT " + json.dumps(phase_ours(args.nodes, args.calls, args.gather)))
        return
    if args.phase == "ray":
        print("RESULT " + json.dumps(phase_ray_cluster(args.nodes)))
        return

    common = ["--nodes", str(args.nodes), "--calls", str(args.calls), "--gather", str(args.gather)]
    ours = _run_phase(["--phase", "ours", *common])
    ray_cluster = _run_phase(["--phase", "ray", *common])
    rows = [
        ("`>>` round trip, median (ms)", ours["rt_ours_ms"], ours["rt_raw_ms"], "≤ 1.10"),
        (f"gather of {args.gather} tiny calls (s)", ours["gather_ours_s"], ours["gather_raw_s"], "≤ 1.2"),
        ("  same, raw Ray with SPREAD (s)", ours["gather_ours_s"], ours["gather_raw_spread_s"], ""),
        (f"{args.nodes}-node entry → first result (s)", ours["startup_s"], ray_cluster["startup_s"], "≤ 1.2"),
        ("exit → all processes gone (s)", ours["exit_s"], ray_cluster["exit_s"], "≤ 1.5"),
        (f"RSS of the {args.nodes}-node cluster + driver (MB)", ours["rss_mb"], ray_cluster["rss_mb"], "≤ 1.1"),
    ]
    print(f"{'measure':44} {'skyward':>10} {'raw Ray':>10} {'ratio':>7}  target")
    for label, mine, theirs, target in rows:
        print(f"{label:44} {mine:10.3f} {theirs:10.3f} {mine / theirs:7.2f}  {target}")
    launcher = ours["launcher"]
    print("launcher timeline (s since entry): " + ", ".join(f"{k}={v:.2f}" for k, v in launcher.items()))
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 1024**3:.0f} GiB")


if __name__ == "__main__":
    main()
