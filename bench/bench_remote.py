"""Bench: a pool driven from outside the cloud, through the SSH tunnel (simulated AWS region).

    .venv/bin/python bench/bench_remote.py [--calls 200]

One 2-node pool on the simulated region (each machine in its own network namespace; the driver
reaches only the head's port 22). In one run it measures:

- the `>>` round trip of a trivial call through our pool (Ray Client over the tunnel), against
  plain Ray Client on the same pool and connection (`ray.get(f.remote())`), and against a driver
  running inside the cluster (a plain `ray.init` on the head itself, in the head's namespace);
- where the entry time goes (the launcher's own timeline);
- what a node's own Python environment costs: uv making a venv with the driver's Python and Ray,
  cold (empty cache: every wheel downloaded, as a fresh cloud machine does) and warm (from a cache).

Starts its own simulated region and ends everything it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("SKYWARD_QUIET", "1")

import ray  # noqa: E402

import skyward_ray as sky  # noqa: E402
from tests.simaws import SIM_SETTINGS, simulated_aws  # noqa: E402
from tests.simaws.hosts import NODE_PACKAGES  # noqa: E402
from tests.simnet.network import IP  # noqa: E402

IN_CLUSTER = """
import json, statistics, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
f = ray.remote(lambda: 1)
ray.get(f.remote())
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); ray.get(f.remote()); times.append(time.perf_counter() - t)
print(json.dumps({"median_ms": statistics.median(times) * 1000}))
"""


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    with simulated_aws("us-east-1") as (sim, hosts), tempfile.TemporaryDirectory() as keys:
        provider = sky.AWS(region="us-east-1", key_dir=keys, ssh_cidr=hosts.ssh_cidr, **SIM_SETTINGS)
        t0 = time.monotonic()
        with sky.Compute(provider=provider, accelerator="T4", nodes=2, boot_timeout=300) as pool:
            noop() >> pool
            first = time.monotonic() - t0
            timings = pool.timings
            ours = median_ms(lambda: noop() >> pool, args.calls)
            plain_fn = ray.remote(lambda: 1)
            plain = median_ms(lambda: ray.get(plain_fn.remote()), args.calls)
            head = pool.nodes[0]
            machine = hosts.sim_hosts[head.instance_id]
            python = str(hosts.host.state_dir / head.instance_id / "env" / "bin" / "python")
            env = {"PATH": "/usr/bin:/bin", "HOME": str(machine.directory), "RAY_USAGE_STATS_ENABLED": "0",
                   "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": pool._cluster.provider.params.auth_token}
            done = subprocess.run([IP, "netns", "exec", machine.namespace, python, "-c", IN_CLUSTER,
                                   f"{head.ip}:6379", str(args.calls)], env=env, capture_output=True, text=True,
                                  timeout=300)
            inside = json.loads(done.stdout.strip().splitlines()[-1])["median_ms"] if done.returncode == 0 else None
            if inside is None:
                print("in-cluster driver failed:", done.stderr[-2000:])
        hosts.wait_idle(timeout=30)
        left = hosts.stop()
    warm = uv_env_seconds(str(hosts.uv_cache))
    cold = uv_env_seconds(None)
    print(f"`>>` round trip, median of {args.calls} (2-node pool, driver outside the VPC):")
    print(f"  skyward through the SSH tunnel : {ours:7.2f} ms")
    print(f"  plain Ray Client, same tunnel  : {plain:7.2f} ms   ratio ours/plain = {ours / plain:.2f}")
    if inside is not None:
        print(f"  driver inside the cluster      : {inside:7.2f} ms   ratio ours/in-cluster = {ours / inside:.2f}")
    print(f"entry → first result: {first:.1f} s; launcher timeline (s since entry): "
          + ", ".join(f"{k}={v:.2f}" for k, v in timings.items()))
    print(f"a node's own Python + Ray with uv: cold (empty cache, from the index) {cold:.1f} s, "
          f"warm (cached) {warm:.1f} s")
    print("machines left running at the end:", left or "none")


if __name__ == "__main__":
    main()
