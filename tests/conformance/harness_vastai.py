"""The local Vast.ai in the conformance suite: the REST fake behind the real `vastai` SDK, every
instance's onstart booted as an isolated machine by the host simulator. The driver holds the
account's key; instances only ever get their own instance-scoped key.

Vast.ai offers serve one-node pools only (hosts share no private network; see
docs/providers/vastai.md), so a multi-node pool plan has no Vast.ai offer.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from typing import Any

import skyward_ray as sky
from skyward_ray.cluster.contract import ClusterParams
from tests.conformance import Harness
from tests.simvast import SIM_SETTINGS, USER_KEY, ask_row, simulated_vast
from tests.simvast.server import decode_onstart
from tests.timeouts import SIM_BOOT_TIMEOUT

# Three T4 asks at one price (a cluster's later nodes rent siblings of the first ask by re-search
# within the price ceiling), then dearer ones.
ASKS = [ask_row(101, dph_total=0.20, min_bid=0.08), ask_row(102, dph_total=0.20, min_bid=0.08),
        ask_row(103, dph_total=0.20, min_bid=0.08), ask_row(104, dph_total=0.40, min_bid=0.16),
        ask_row(105, dph_total=0.60, min_bid=0.24), ask_row(106, dph_total=0.80, min_bid=0.32)]


@contextlib.contextmanager
def harness() -> Iterator[Harness]:
    with simulated_vast(ASKS) as (sim, hosts), tempfile.TemporaryDirectory(prefix="keys-") as keys:
        config = sky.VastAI(api_key=USER_KEY, server_url=sim.url, key_dir=keys, live_offers_ttl=0, **SIM_SETTINGS)
        assert config.list_offers(sky.accelerators.T4()), "the fake lists T4 asks"  # the launch knows their prices

        def params(nodes: int = 1, **kw: Any) -> ClusterParams:
            # each node rents its own ask: the first the cheapest, the rest by re-search within the ceiling
            return ClusterParams(auth_token="t" * 64, nodes=nodes, instance_type="101", market="on-demand",
                                 region="Texas-US", offer="101.Texas-US.on-demand", accelerator="T4",
                                 accelerator_count=1, **kw)

        def billable() -> dict[str, list[str]]:
            return {"instances": sorted(str(i.id) for i in sim.live()), "machines": sorted(hosts.running())}

        def boot_payloads() -> list[str]:
            return [decode_onstart(p) + "\n" + json.dumps(p.get("env") or {})
                    for p in sim.payloads() if p.get("onstart")]

        @contextlib.contextmanager
        def fail_capacity(instance_type: str) -> Iterator[None]:
            """The card is sold out at that price: the ask and every same-card ask within 10% of it answer
            no_such_ask (still listed: a stale listing), so the re-search finds no replacement either."""
            gone = sim.asks[int(instance_type)]
            blocked = [a for a, row in sim.asks.items() if row["gpu_name"] == gone["gpu_name"]
                       and row["dph_total"] <= gone["dph_total"] * 1.1
                       and (row["min_bid"] or 0) <= (gone["min_bid"] or 0) * 1.1]
            for ask in blocked:
                sim.block(ask)
            try:
                yield
            finally:
                for ask in blocked:
                    sim.unblock(ask)

        def interrupt(instance_id: str) -> None:
            sim.interrupt(int(instance_id))

        foreign: list[int] = []

        def foreign_machine() -> str:
            ask = sim.add_ask(dph_total=9.0)
            status, answer = sim.handle("PUT", f"/api/v0/asks/{ask['id']}/", {},
                                        {"image": "nginx", "label": "someone-elses-server"},
                                        {"Authorization": f"Bearer {USER_KEY}"})
            assert status == 200, answer
            foreign.append(answer["new_contract"])
            return str(foreign[-1])

        try:
            yield Harness(
                name="vastai",
                config=config,
                params=params,
                accelerator="T4",
                billable=billable,
                boot_payloads=boot_payloads,
                secrets=[USER_KEY],
                interrupt=interrupt,
                fail_capacity=fail_capacity,
                foreign_machine=foreign_machine,
                explain=lambda machine: f"{machine}, as its machine printed it:\n{hosts.log(machine)}",
                bare_machines=hosts.bare,
                image_has_python=not hosts.bare,
                compute_settings={"boot_timeout": SIM_BOOT_TIMEOUT},
                pool_nodes=1,  # Vast.ai hosts share no private network: every offer is one node only
            )
        finally:
            for instance_id in foreign:
                sim.handle("DELETE", f"/api/v0/instances/{instance_id}/", {}, {},
                           {"Authorization": f"Bearer {USER_KEY}"})
