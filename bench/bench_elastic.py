"""Bench: elastic scale-up and scale-down latency (Ray's v2 autoscaler in the driver).

    .venv/bin/python bench/bench_elastic.py [--rounds 3] [--idle-timeout 5] [--aws]

A pool `sky.Nodes(min=1, max=2)` of 1-CPU nodes. Each round: a call holds the head's only CPU,
then a second call is sent ("the request"): it needs a node that does not exist yet. Measured:

- request → launched: the autoscaler sees Ray's demand and has the provider start a machine
  (local: the machine's first process; simulated AWS: the RunInstances request);
- launched → joined: the machine boots and its raylet registers with the head (GCS start time);
- joined → running: Ray schedules the waiting call on the new node;
- request → running: the whole scale-up, what a user waits;
- idle → drained: the call ends, the node is idle; until `pool.nodes` no longer lists it
  (idle timeout + one autoscaler round + the drain);
- idle → machine gone: until the machine has ended (local: all its processes; AWS: terminated).

Runs on the local provider; with --aws also on the simulated AWS region (tests/simaws). Prints a
table per provider: every round, and the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("SKYWARD_QUIET", "1")

import skyward_ray as sky  # noqa: E402
from node_providers.local.process_host import processes_with_marker  # noqa: E402

NAMESPACE = "skyward-bench"


@sky.function
def hold(tag: str) -> str:
    """Mark that this call runs, then keep its CPU until `tag` is released (bounded)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(f"{tag}:running", b"1", namespace=NAMESPACE)
    deadline = time.monotonic() + 300
    while not internal_kv._internal_kv_exists(f"{tag}:release", namespace=NAMESPACE) and time.monotonic() < deadline:
        time.sleep(0.05)
    return sky.instance_info().instance_id


@sky.function
def probe() -> dict:
    import ray

    started = time.time()
    return {"started": started, "instance_id": sky.instance_info().instance_id,
            "ray_node_id": ray.get_runtime_context().get_node_id()}


def wait_for(condition, timeout: float = 300.0, step: float = 0.05) -> float:
    """Poll until true; return time.time() when it became true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the bench waited too long")
        time.sleep(step)
    return time.time()


def one_round(pool: sky.Compute, index: int, launched_at) -> dict[str, float]:
    gcs = pool._cluster.driver.gcs_client()
    tag = f"round{index}-{time.monotonic_ns()}"
    held = hold(tag) > pool
    wait_for(lambda: gcs.internal_kv_exists(f"{tag}:running".encode(), NAMESPACE.encode()))
    requested = time.time()
    answer = probe() >> pool  # waits for a node that does not exist yet
    node = next(info for info in gcs.get_all_node_info(timeout=10).values()
                if info.node_id.hex() == answer["ray_node_id"])
    joined = node.start_time_ms / 1000
    launched = launched_at(answer["instance_id"], requested)
    idle = time.time()
    drained = wait_for(lambda: answer["instance_id"] not in {n.instance_id for n in pool.nodes})
    gone = wait_for(lambda: not machine_alive(pool, answer["instance_id"]))
    gcs.internal_kv_put(f"{tag}:release".encode(), b"1", True, NAMESPACE.encode())
    held.result(timeout=60)
    return {
        "request_to_launched_s": launched - requested,
        "launched_to_joined_s": joined - launched,
        "joined_to_running_s": answer["started"] - joined,
        "request_to_running_s": answer["started"] - requested,
        "idle_to_drained_s": drained - idle,
        "idle_to_machine_gone_s": gone - idle,
    }


_ALIVE = {}


def machine_alive(pool: sky.Compute, instance_id: str) -> bool:
    check = _ALIVE.get(pool.offer.provider)
    return check(instance_id) if check else bool(processes_with_marker(instance_id))


def run(provider: object, rounds: int, idle_timeout: float, launched_at, **settings: object) -> list[dict[str, float]]:
    with sky.Compute(provider=provider, nodes=sky.Nodes(min=1, max=2, idle_timeout=idle_timeout), **settings) as pool:

        return [one_round(pool, i, launched_at) for i in range(rounds)]


def local_launch_time(instance_id: str, since: float) -> float:
    times = []
    for proc in processes_with_marker(instance_id):
        try:
            times.append(proc.create_time())
        except Exception:
            pass
    return min(times) if times else float("nan")


def table(title: str, rows: list[dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'measure':28} " + " ".join(f"{'round ' + str(i + 1):>9}" for i in range(len(rows))) + f" {'median':>9}")
    for key in rows[0]:
        values = [r[key] for r in rows]
        print(f"{key:28} " + " ".join(f"{v:9.2f}" for v in values) + f" {statistics.median(values):9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-timeout", type=float, default=5.0)
    parser.add_argument("--aws", action="store_true", help="also on the simulated AWS region")
    args = parser.parse_args()

    rows = run(sky.Local(cpus_per_node=1), args.rounds, args.idle_timeout, local_launch_time)
    table(f"local provider, 1-CPU nodes, idle_timeout={args.idle_timeout:g}s", rows)

    if args.aws:
        from tests.simaws import SIM_SETTINGS, aws_environment, simulated_aws

        with simulated_aws("us-east-1") as (sim, hosts), aws_environment(sim.client_env()):
            def aws_launch_time(instance_id: str, since: float) -> float:
                runs = [c.started for c in sim.calls("RunInstances", since=since)]
                return min(runs) if runs else float("nan")

            _ALIVE["aws"] = lambda i: i in {x["InstanceId"] for x in sim.live_instances()}
            provider = sky.AWS(region="us-east-1", key_dir=str(hosts.root / "keys"), ssh_cidr=hosts.ssh_cidr,
                               **SIM_SETTINGS)
            rows = run(provider, args.rounds, args.idle_timeout, aws_launch_time, accelerator="T4",
                       allocation="on-demand", boot_timeout=120)
            hosts.stop()
        table(f"simulated AWS, 1-CPU nodes, idle_timeout={args.idle_timeout:g}s", rows)
    print(f"\nmachine: {os.cpu_count()} cores (shared); autoscaler round: 1 s")


if __name__ == "__main__":
    main()
