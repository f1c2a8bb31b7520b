"""Bench: a 2-node spot pool on simulated AWS (moto + host simulator), where the time goes.

    .venv/bin/python bench/bench_aws.py [--rounds N]

Measures `with` entry → first result and `with` exit → every instance terminated (and every
simulated machine's processes gone), and splits the entry into API calls (time spent inside
requests to the simulated EC2/STS, from its request log), host boot (RunInstances → the simulator
starting the user data), and Ray (the launcher's own timings: provision_s, head_port_s, ...).
Starts its own moto server and ends everything it starts.
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
from tests.simaws import SIM_SETTINGS, simulated_aws  # noqa: E402


@sky.function
def square(x: int) -> int:
    return x * x


def one_round(sim, hosts, keys: str) -> dict[str, float]:
    provider = sky.AWS(region="us-east-1", key_dir=keys, ssh_cidr=hosts.ssh_cidr, **SIM_SETTINGS)
    t0 = time.time()
    m0 = time.monotonic()
    pool = sky.Compute(provider=provider, accelerator="T4", nodes=2, allocation="spot-if-available", boot_timeout=120)
    with pool:
        first = square(3) >> pool
        m_first = time.monotonic()
        assert first == 9
        timings = pool.timings
        name = pool.name
        ids = [n.instance_id for n in pool.nodes]
        m_exit = time.monotonic()
    m_terminated = time.monotonic()
    left = sim.live_instances(cluster=name)
    hosts.wait_idle(timeout=30)
    m_idle = time.monotonic()
    calls = [c for c in sim.calls(since=t0) if c.started - t0 <= m_first - m0]
    runs = sorted(c.started for c in calls if c.action == "RunInstances")
    # RunInstances sent → the simulator starts that machine's user data (its "hypervisor" latency)
    boot_lag = [hosts.booted_at[i] - max(r for r in runs if r <= hosts.booted_at[i]) for i in ids]
    row = {
        "entry_to_first_result_s": m_first - m0,
        "api_calls": float(len(calls)),
        "api_time_s": sum(c.seconds for c in calls),
        "run_instances_calls": float(len(runs)),
        "host_boot_lag_s": max(boot_lag),
        "ready_to_first_result_s": (m_first - m0) - timings.get("ready_s", float("nan")),
        "exit_to_terminated_s": m_terminated - m_exit,
        "exit_to_processes_gone_s": m_idle - m_exit,
        "left_after_exit": float(len(left)),
    }
    row.update({f"launcher.{k}": v for k, v in timings.items()})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    with simulated_aws("us-east-1") as (sim, hosts):
        setup = time.monotonic() - started
        keys = str(hosts.root / "keys")
        t = time.monotonic()
        plan = sky.plan(provider=sky.AWS(region="us-east-1", **SIM_SETTINGS), accelerator="T4", nodes=2)
        plan_s = time.monotonic() - t
        rows = [one_round(sim, hosts, keys) for _ in range(args.rounds)]
        leftovers = hosts.stop()
    print(f"simulated region up: {setup:.2f}s; sky.plan (live offers from the simulator): {plan_s:.2f}s, "
          f"chosen {plan.chosen.instance_type} {plan.chosen.market} {plan.chosen.zone} ({plan.chosen.price_source})")
    print(f"{'measure':34} " + " ".join(f"{'round ' + str(i + 1):>9}" for i in range(len(rows))) + f" {'median':>9}")
    for key in rows[0]:
        values = [r.get(key, float("nan")) for r in rows]
        print(f"{key:34} " + " ".join(f"{v:9.3f}" for v in values) + f" {statistics.median(values):9.3f}")
    print("machines left running at the end:", leftovers or "none")


if __name__ == "__main__":
    main()
