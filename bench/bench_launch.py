"""Bench: what launching and ending a pool costs in cloud API calls and time, from 1 to 256 nodes.

    .venv/bin/python bench/bench_launch.py [--nodes 1 8 64 256] [--aws-scale 1.0]

Nothing boots Ray here: the launcher's provisioning (`provisioning.provision`: the head, then every
worker at once, in one call where the cloud has one: EC2 RunInstances for N identical workers) and its teardown (`teardown.teardown`: workers first, then the head, until two
empty listings) run against two clouds whose machines never start anything:

- the in-memory cloud of the tests (`tests.fakecloud`): the launcher's own overhead, no network;
- the simulated AWS region's API (moto behind `tests.simaws`' front) with EC2's documented request
  token buckets on (`SimAWS.throttle(scale)`, scale 1.0 = AWS's published bucket sizes and refill
  rates; `RequestLimitExceeded` is answered as AWS does and retried by the code under test).

For each size it prints the API calls per node (every call the simulated region received from the
launcher, prepare and cleanup included), the throttled calls (refused with RequestLimitExceeded,
then retried: none may be lost), the time to all-launched and to all-terminated, and how each time
grows against the previous size (a ratio below the node ratio is sub-linear growth).
Starts its own simulated region and ends everything it starts.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("SKYWARD_QUIET", "1")

import skyward_ray as sky  # noqa: E402
from skyward_ray.cluster import launcher, provisioning, teardown  # noqa: E402
from skyward_ray.cluster.contract import ClusterParams  # noqa: E402
from skyward_ray.planning.offers import Offer  # noqa: E402
from tests.fakecloud import Fake, FakeCloud  # noqa: E402
from tests.simaws import SIM_SETTINGS, SimAWS, aws_environment  # noqa: E402

FAKE_OFFER = Offer(provider="fake", accelerator="T4", count=1, market="on-demand", price=0.5, region="r1",
                   zone="r1a", instance_type="f1.small", price_source="bench (made-up row)")
AWS_OFFER = Offer(provider="aws", accelerator="T4", count=1, market="on-demand", price=0.526, region="us-east-1",
                  zone="us-east-1a", instance_type="g4dn.xlarge", price_source="bench (a label, not a quote)")


def _params(offer: Offer, nodes: int) -> ClusterParams:
    return ClusterParams(nodes=nodes, instance_type=offer.instance_type, market=offer.market, region=offer.region,
                         zone=offer.zone, offer=offer.label, accelerator=offer.accelerator,
                         accelerator_count=offer.count)


def _launch_and_end(config: Any, offer: Offer, nodes: int) -> dict[str, float]:
    """Prepare, provision `nodes` machines, then end them all and clean up; the two times."""
    name = launcher.new_cluster_name()
    provider = provisioning.load_node_provider(config, _params(offer, nodes), name)
    cluster = launcher.Cluster(name=name, provider=provider, offer=offer, instance_ids=[])
    started = time.monotonic()
    try:
        provisioning.provision(cluster, nodes)
    finally:
        launched = time.monotonic()
        left = teardown.teardown(cluster)
        ended = time.monotonic()
    if len(cluster.instance_ids) != nodes:
        raise RuntimeError(f"{len(cluster.instance_ids)} machines launched for {nodes} nodes")
    if left:
        raise RuntimeError(f"teardown left {left}")
    return {"launch_s": launched - started, "end_s": ended - launched}


def in_memory(nodes: int) -> dict[str, float]:
    FakeCloud.reset()
    result = _launch_and_end(Fake(), FAKE_OFFER, nodes)
    calls = collections.Counter(kind for kind, _ in FakeCloud.calls)
    result.update(calls=sum(calls.values()), throttled=0)
    FakeCloud.reset()
    return result


def simulated_aws(sim: SimAWS, nodes: int, scale: float) -> dict[str, Any]:
    config = sky.AWS(region=sim.region, ssh_cidr="198.51.100.7/32", **SIM_SETTINGS)
    since = time.time()
    sim.throttle(scale)
    try:
        result: dict[str, Any] = _launch_and_end(config, AWS_OFFER, nodes)
    finally:
        sim.throttle_off()
    calls = [c for c in sim.calls(since=since) if c.service == "ec2"]
    result["calls"] = len(calls)
    result["throttled"] = sum(1 for c in calls if c.status == 503)
    result["by_action"] = collections.Counter(c.action for c in calls if c.status != 503)
    return result


def _table(title: str, rows: list[tuple[int, dict[str, Any]]]) -> None:
    print(f"\n{title}")
    print(f"{'nodes':>6} {'calls/node':>11} {'throttled':>10} {'launched s':>11} {'x prev':>7} "
          f"{'ended s':>9} {'x prev':>7}")
    previous: dict[str, Any] | None = None
    previous_nodes = 0
    for nodes, r in rows:
        grow = ""
        grow_end = ""
        if previous is not None:
            grow = f"{r['launch_s'] / max(previous['launch_s'], 1e-6):6.1f}x"
            grow_end = f"{r['end_s'] / max(previous['end_s'], 1e-6):6.1f}x"
        print(f"{nodes:>6} {r['calls'] / nodes:>11.2f} {r['throttled']:>10} {r['launch_s']:>11.2f} {grow:>7} "
              f"{r['end_s']:>9.2f} {grow_end:>7}" + (f"   (nodes x{nodes / previous_nodes:g})" if previous else ""))
        previous, previous_nodes = r, nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--aws-scale", type=float, default=1.0,
                        help="EC2 token buckets and refill rates times this (1.0: AWS's published figures)")
    args = parser.parse_args()

    _table("in-memory cloud (the launcher's own cost)", [(n, in_memory(n)) for n in args.nodes])

    sim = SimAWS("us-east-1").start()
    try:
        with aws_environment(sim.client_env()):
            rows = [(n, simulated_aws(sim, n, args.aws_scale)) for n in args.nodes]
    finally:
        sim.stop()
    _table(f"simulated AWS API, EC2 request limits x{args.aws_scale:g} (machines never boot)", rows)
    largest_nodes, largest = rows[-1]
    print(f"\nEC2 calls at {largest_nodes} nodes, by action (retries of throttled calls included, refusals not): "
          + ", ".join(f"{action} {count}" for action, count in largest["by_action"].most_common()))


if __name__ == "__main__":
    main()
