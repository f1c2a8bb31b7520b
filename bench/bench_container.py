"""`sky.Container()` vs `sky.Local()` on this machine, measured in one run; prints ratios (container / local).

    .venv/bin/python bench/bench_container.py [--nodes 3] [--calls 50] [--no-cold]

1. Entry to first result, cold: no node image yet (every `skyward-node:*` image is removed first,
   so the pool builds one: wheels resolved here, Ray installed in a layer, committed).
2. Entry to first result, warm: the node image from (1) is reused.
3. Exit: leaving the block until every container and the pool's networks are gone.
4. `>>` round trip (median of --calls): the container pool is reached through the SSH tunnel to
   the gateway, the local pool directly.

Each pool runs in its own subprocess so none inherits another's Ray state. Needs a Docker Engine:
the one DOCKER_HOST names, else the tests' own `dockerd` (started and ended here, as root); with no
registry reachable, the default image is the tests' stand-in for `python:<X.Y.Z>-slim`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PHASE = r"""
import json, statistics, sys, time
import skyward_ray as sky

provider, nodes, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

@sky.function
def tiny(x):
    return x

config = sky.Local() if provider == "local" else sky.Container(object_store_memory=80 * 1024**2)
t0 = time.perf_counter()
with sky.Compute(provider=config, nodes=nodes, boot_timeout=600) as pool:
    assert tiny(1) >> pool == 1
    entry = time.perf_counter() - t0
    trips = []
    for i in range(calls):
        t = time.perf_counter()
        tiny(i) >> pool
        trips.append(time.perf_counter() - t)
    left = time.perf_counter()
print("RESULT " + json.dumps({"entry": entry, "exit": time.perf_counter() - left,
                              "trip_ms": statistics.median(trips) * 1000}))
"""


def run_phase(provider: str, nodes: int, calls: int) -> dict:
    env = {**os.environ, "PYTHONPATH": REPO, "SKYWARD_QUIET": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", PHASE, provider, str(nodes), str(calls)], capture_output=True,
                          text=True, env=env, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the {provider} phase failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    import docker

    from node_providers.container import node_image
    from tests.images import python_slim
    from tests.images.engine import docker_engine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--no-cold", action="store_true", help="keep the node images (skip the cold start)")
    args = parser.parse_args()

    with docker_engine() as address:
        client = docker.DockerClient(base_url=address, timeout=300)
        try:
            client.images.get(python_slim.tag())
        except docker.errors.ImageNotFound:
            python_slim.ensure(client)  # no registry here: the tests' stand-in for the official image
        results: dict[str, dict] = {"local": run_phase("local", args.nodes, args.calls)}
        if not args.no_cold:
            for image in client.images.list(node_image.REPOSITORY):
                client.images.remove(image.id, force=True)
            results["container cold"] = run_phase("container", args.nodes, args.calls)
        results["container warm"] = run_phase("container", args.nodes, args.calls)

    local = results["local"]
    print(f"{args.nodes} nodes; Docker at {address}; medians of {args.calls} `>>` calls")
    print(f"{'':16} {'entry→first result':>20} {'exit':>8} {'>> round trip':>14}")
    for name, row in results.items():
        ratio = "" if name == "local" else f"  ({row['entry'] / local['entry']:.2f}× / {row['exit'] / local['exit']:.2f}× " \
                                           f"/ {row['trip_ms'] / local['trip_ms']:.2f}× local)"
        print(f"{name:16} {row['entry']:>19.1f}s {row['exit']:>7.1f}s {row['trip_ms']:>12.2f}ms{ratio}")


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"(bench took {time.time() - started:.0f}s; one run of each)")
