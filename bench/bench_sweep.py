"""Sweep throughput: the same sweeps on a skyward pool and on a plain Ray cluster of the same size,
measured in one run; prints ratios (ours / Ray).

    .venv/bin/python bench/bench_sweep.py [--nodes 2] [--samples 8] [--epochs 6]

1. The Ray Tune sweep of examples/sweep_tune.py (Tuner + ASHA, plain Tune code), wall time of
   `Tuner.fit()` on the pool vs on `ray.cluster_utils.Cluster` with the same nodes and CPUs.
2. The grid search of examples/sweep_grid.py (12 SVM trials): `pool.sweep(...)` (trials as they
   finish, best so far) vs the same trials as raw `@ray.remote` tasks collected with `ray.wait`.

Pool start-up is not in these numbers (bench_local.py measures it); each side runs in its own
subprocess so neither inherits the other's Ray state. Needs the examples extra (scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _sweeps(samples: int, epochs: int, run_grid) -> dict:
    from examples import sweep_tune

    started = time.perf_counter()
    best = sweep_tune.tune_digits(samples, epochs)
    tune_s = time.perf_counter() - started
    started = time.perf_counter()
    grid_best = run_grid()
    grid_s = time.perf_counter() - started
    return {"tune_s": tune_s, "tune_best": best["accuracy"], "grid_s": grid_s, "grid_best": grid_best}


def phase_ours(nodes: int, samples: int, epochs: int) -> dict:
    import skyward_ray as sky
    from examples import sweep_grid

    with sky.Compute(nodes=nodes) as pool:
        sweep_grid.train(sweep_grid.GRID[0]) @ pool  # workers up and sklearn imported on every node

        def grid() -> float:
            return pool.sweep(sweep_grid.train, sweep_grid.GRID, score="accuracy", progress=False).run() \
                .best.value["accuracy"]

        result = _sweeps(samples, epochs, grid)
        import ray

        started = time.perf_counter()
        _raw_grid(ray.remote(_plain_train), sweep_grid.GRID)
        result["grid_raw_on_pool_s"] = time.perf_counter() - started
        return result


def _raw_grid(train, configs) -> float:
    import ray

    remaining = [train.options(scheduling_strategy="SPREAD").remote(c) for c in configs]
    best = 0.0
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=1)
        best = max(best, ray.get(ready[0])["accuracy"])
    return best


def phase_ray(nodes: int, samples: int, epochs: int) -> dict:
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    import ray
    from ray.cluster_utils import Cluster

    from examples import sweep_grid

    cpus = max(1, (os.cpu_count() or 1) // nodes)
    node_args = {"num_cpus": cpus, "object_store_memory": 100 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**node_args)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        train = ray.remote(_plain_train)
        ray.get([train.options(scheduling_strategy="SPREAD").remote(sweep_grid.GRID[0]) for _ in range(nodes)])

        return _sweeps(samples, epochs, lambda: _raw_grid(train, sweep_grid.GRID))
    finally:
        ray.shutdown()
        cluster.shutdown()


def _plain_train(config: dict) -> dict:
    """examples/sweep_grid.train without skyward (instance_info is skyward's): the same work."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import SVC

    features, labels = load_digits(return_X_y=True)
    scores = cross_val_score(SVC(C=config["C"], gamma=config["gamma"]), features / 16.0, labels, cv=3)
    return {"accuracy": float(scores.mean()), "node": -1}


def _run_phase(args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": REPO, "SKYWARD_QUIET": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, timeout=1800)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"phase {args} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--phase", choices=["ours", "ray"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        run = phase_ours if args.phase == "ours" else phase_ray
        print("RESULT " + json.dumps(run(args.nodes, args.samples, args.epochs)))
        return
    common = ["--nodes", str(args.nodes), "--samples", str(args.samples), "--epochs", str(args.epochs)]
    ours = _run_phase(["--phase", "ours", *common])
    ray_side = _run_phase(["--phase", "ray", *common])
    rows = [
        (f"Tune sweep, {args.samples} trials × {args.epochs} epochs, ASHA (s)", ours["tune_s"], ray_side["tune_s"]),
        ("grid search, 12 SVM trials as they finish (s)", ours["grid_s"], ray_side["grid_s"]),
        ("  same as raw Ray tasks on the skyward pool (s)", ours["grid_raw_on_pool_s"], ray_side["grid_s"]),
    ]
    print(f"{'measure':52} {'skyward':>9} {'raw Ray':>9} {'ratio':>7}")
    for label, mine, theirs in rows:
        print(f"{label:52} {mine:9.2f} {theirs:9.2f} {mine / theirs:7.2f}")
    print(f"best accuracy: Tune {ours['tune_best']:.3f} vs {ray_side['tune_best']:.3f}; "
          f"grid {ours['grid_best']:.4f} vs {ray_side['grid_best']:.4f}")
    print(f"machine: {os.cpu_count()} cores, {args.nodes} nodes of {max(1, (os.cpu_count() or 1) // args.nodes)} CPU")


if __name__ == "__main__":
    main()
