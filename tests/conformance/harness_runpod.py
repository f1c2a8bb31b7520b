"""The fake RunPod in the conformance suite: the real runpod SDK against the fake GraphQL API
(tests.simrunpod), every pod's container command booted as an isolated machine. The driver carries
the fake account's user key; no pod may see it."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import tempfile
from collections.abc import Iterator
from typing import Any

import skyward_ray as sky
from skyward_ray.cluster.contract import ClusterParams
from tests.conformance import Harness
from tests.simrunpod import SIM_SETTINGS, USER_KEY, CapacityFault, simulated_runpod
from tests.timeouts import SIM_BOOT_TIMEOUT

ACCELERATOR = "A100"  # two RunPod GPU types (PCIe, SXM): a capacity error on one leaves the other
_DEPLOYS = ("podFindAndDeployOnDemand", "podRentInterruptable", "POST /v1/pods")


def _payload(query: str) -> str:
    """The boot payload a create carries: its `dockerArgs` (GraphQL) or `dockerStartCmd` (REST body)
    with the base64 inside decoded."""
    rest = query.lstrip().startswith("{")
    args = json.loads(query).get("dockerStartCmd", [""])[-1] if rest else \
        (found.group(1) if (found := re.search(r'dockerArgs: "([^"]*)"', query)) else "")
    if not args:
        return ""
    encoded = re.search(r"echo (\S+) \| base64 -d", args)
    decoded = base64.b64decode(encoded.group(1)).decode() if encoded else ""
    return f"{args}\n{decoded}\n{query}"


@contextlib.contextmanager
def harness() -> Iterator[Harness]:
    with simulated_runpod() as (sim, hosts), tempfile.TemporaryDirectory(prefix="keys-") as keys:
        assert hosts is not None
        config = sky.RunPod(key_dir=keys, **SIM_SETTINGS)
        offer = next(o for o in config.list_offers(sky.accelerators.RTX4090())
                     if o.count == 1 and o.market == "on-demand")

        def params(nodes: int = 1, **kw: Any) -> ClusterParams:
            return ClusterParams(auth_token="t" * 64, nodes=nodes, instance_type=offer.instance_type,
                                 market=offer.market, offer=offer.label, accelerator=offer.accelerator,
                                 accelerator_count=offer.count, **kw)

        def billable() -> dict[str, list[str]]:
            return {"pods": sorted(p.id for p in sim.live_pods()), "machines": sorted(hosts.running())}

        def boot_payloads() -> list[str]:
            payloads = [_payload(c.query) for c in sim.calls() if c.operation in _DEPLOYS]
            env = [f"{k}={v}" for pod in [*sim.live_pods(), *sim.ended.values()] for k, v in pod.env.items()]
            return [p + "\n" + "\n".join(env) for p in payloads if p]

        def fail_capacity(instance_type: str) -> contextlib.AbstractContextManager[CapacityFault]:
            return sim.fault(CapacityFault(instance_type))

        foreign: list[str] = []

        def foreign_machine() -> str:
            foreign.append(sim.add_foreign_pod("someone-elses-notebook"))
            return foreign[-1]

        try:
            yield Harness(
                name="runpod",
                config=config,
                params=params,
                accelerator=ACCELERATOR,
                billable=billable,
                boot_payloads=boot_payloads,
                secrets=[USER_KEY],
                interrupt=sim.interrupt,
                fail_capacity=fail_capacity,
                foreign_machine=foreign_machine,
                explain=lambda machine: f"{machine}, as its machine printed it:\n{hosts.log(machine)}",
                bare_machines=hosts.bare,
                compute_settings={"boot_timeout": SIM_BOOT_TIMEOUT},
            )
        finally:
            for pod_id in foreign:
                sim.end_pod(pod_id)
