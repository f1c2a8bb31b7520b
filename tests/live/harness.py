"""What every live smoke module shares: when to run, the cost ceiling, and the one smoke routine.

`SKYWARD_LIVE` decides:
- `0`: every live test is skipped, saying why;
- `1`: against the real clouds (a live run costs money: only when asked for), each module only where its key is set (else skipped, naming the key);
  every pool's price is capped by the cost guard (`max_pool_hourly_cost` = `SKYWARD_LIVE_MAX_COST`,
  default $0.25/h for a 1-node pool that lives a few minutes), and the dollars spent are printed and
  added up: the run fails once they pass `SKYWARD_LIVE_MAX_COST` in all;
- `sim`, or unset: against the simulated clouds (tests/simaws, simrunpod, simvast: real SDKs,
  machines in network namespaces), so the suite runs in every test run (CI's too) and cannot rot. Nothing is billed; the prices are
  the snapshot's, so the ceiling there is `SIM_CEILING`.

`abandoned_pool_ends_itself`: a driver killed with SIGKILL (no teardown runs) leaves a pool whose
machines end themselves once its heartbeat stops (the head's watchdog, within the grace); what a
dead driver cannot remove (a security group, a key pair) is then ended as `skyward-ray gc` ends it.

The smoke routine: the cheapest pool (1 node, or 2 where the cloud networks them), one `>>` and one `@` call, an `Image(pip=...)` package,
a helper from a user module, teardown, then the cloud's own listing (`skyward-ray status`'s survey)
must show nothing left of the pool.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

import pytest

import skyward_ray as sky
from skyward_ray.planning.providers import ProviderConfig
from tests.conftest import run_python, wait_for_line
from tests.live.userhelpers import shout

ENV_LIVE = "SKYWARD_LIVE"
ENV_MAX_COST = "SKYWARD_LIVE_MAX_COST"
DEFAULT_MAX_COST = 0.25
SIM_CEILING = 5.0  # simulated prices are the snapshot's; nothing is billed
PIP_PACKAGE, PIP_VERSION = "tabulate", "0.9.0"


def mode() -> str | None:
    """"real", "sim", or None (skip)."""
    value = os.environ.get(ENV_LIVE, "").strip().lower()
    return {"1": "real", "true": "real", "real": "real", "sim": "sim", "": "sim"}.get(value)


def require(key_names: tuple[str, ...], cloud: str) -> str:
    """The mode, or skip this module saying why (no SKYWARD_LIVE, or no key for this cloud)."""
    chosen = mode()
    if chosen is None:
        pytest.skip(f"{ENV_LIVE}=0: live tests skipped (set {ENV_LIVE}=1 with a {cloud} key for the real "
                    "cloud; unset or sim for the simulated one)", allow_module_level=True)
    if chosen == "real" and not any(os.environ.get(name) for name in key_names):
        pytest.skip(f"{ENV_LIVE}=1 but no {cloud} key: set {' or '.join(key_names)}", allow_module_level=True)
    return chosen


def budget() -> float:
    return float(os.environ.get(ENV_MAX_COST) or DEFAULT_MAX_COST)


@dataclass
class Ledger:
    """The dollars this run's pools spent (one process: pytest runs the modules in turn)."""

    spent: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, dollars: float) -> float:
        with self.lock:
            self.spent += dollars
            return self.spent


LEDGER = Ledger()


@sky.function
def node_facts() -> dict:
    import importlib.metadata

    info = sky.instance_info()
    return {"node": info.node, "total": info.total_nodes, "provider": info.provider,
            "package": importlib.metadata.version(PIP_PACKAGE)}


@sky.function
def helper(text: str) -> str:
    return shout(text)


def smoke(config: ProviderConfig, *, accelerator: str | None, live: str, boot_timeout: float = 600.0,
          nodes: int = 1) -> float:
    """The smoke routine on `config`'s cloud (`nodes` > 1: the cloud networks them, and `@` reaches
    every one); returns the dollars the pool spent."""
    ceiling = SIM_CEILING if live == "sim" else budget()
    left = ceiling - LEDGER.spent
    assert left > 0, f"the live run already spent ${LEDGER.spent:.4f} of its ${ceiling:.2f}"
    with sky.Compute(provider=config, accelerator=accelerator, nodes=nodes, allocation="cheapest",
                     image=sky.Image(pip=[f"{PIP_PACKAGE}=={PIP_VERSION}"]), max_pool_hourly_cost=left,
                     boot_timeout=boot_timeout) as pool:
        name = pool.name
        facts = node_facts() >> pool
        assert facts["node"] in range(nodes) and facts["total"] == nodes and facts["package"] == PIP_VERSION, facts
        everywhere = node_facts() @ pool
        assert [f["node"] for f in everywhere] == list(range(nodes)), everywhere
        assert all(f["package"] == PIP_VERSION for f in everywhere), everywhere
        assert helper("ray") >> pool == "RAY!"
    spent = pool.cost
    total = LEDGER.add(spent)
    print(f"\nlive {config.name}: pool {name} spent ${spent:.4f} ({pool.cost_summary}); this run: ${total:.4f}")
    assert total <= ceiling, f"the live run spent ${total:.4f}, over its ${ceiling:.2f} ceiling ({ENV_MAX_COST})"
    assert_nothing_left(config, name)
    return spent


def assert_nothing_left(config: ProviderConfig, name: str) -> None:
    """The cloud's own listing (what `skyward-ray status` shows) has nothing of the pool left."""
    from skyward_ray.cluster import pool_admin

    survey = pool_admin.survey(configs=[config])
    left = [pool for pool in survey.pools if pool.name == name]
    assert left == [], f"left behind after teardown: {left} (notes: {survey.notes})"


_ABANDONING_DRIVER = """
import importlib, os, time
import skyward_ray as sky
module, _, name = os.environ["LIVE_CONFIG_CLASS"].rpartition(".")
config = getattr(importlib.import_module(module), name).model_validate_json(os.environ["LIVE_CONFIG"])
with sky.Compute(provider=config, accelerator=os.environ["LIVE_ACCELERATOR"] or None, allocation="cheapest",
                 max_pool_hourly_cost=float(os.environ["LIVE_MAX_COST"]),
                 boot_timeout=float(os.environ["LIVE_BOOT_TIMEOUT"])) as pool:
    print("PRICE", pool.offer.price if pool.offer else 0.0, flush=True)
    print("READY", pool.name, flush=True)
    time.sleep(3600)
"""


def abandoned_pool_ends_itself(config: ProviderConfig, *, accelerator: str | None, live: str,
                               boot_timeout: float = 600.0, grace: float = 20.0, ending: float = 240.0) -> float:
    """A 1-node pool whose driver is SIGKILLed once it is ready: its machine ends itself within
    `grace` (the heartbeat grace the pool runs with) plus `ending` (the cloud ending the machine);
    returns the seconds that took. The dollars are charged as the offer's price for the whole time."""
    ceiling = SIM_CEILING if live == "sim" else budget()
    left = ceiling - LEDGER.spent
    assert left > 0, f"the live run already spent ${LEDGER.spent:.4f} of its ${ceiling:.2f}"
    abandoned = config.model_copy(update={"heartbeat_grace": grace})
    started = time.monotonic()
    proc = run_python(_ABANDONING_DRIVER, env={
        "LIVE_CONFIG_CLASS": f"{type(config).__module__}.{type(config).__name__}",
        "LIVE_CONFIG": abandoned.model_dump_json(), "LIVE_ACCELERATOR": accelerator or "",
        "LIVE_MAX_COST": str(left), "LIVE_BOOT_TIMEOUT": str(boot_timeout)})
    try:
        price = float(wait_for_line(proc, "PRICE ", timeout=boot_timeout + 120))
        name = wait_for_line(proc, "READY ")
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=30)
        while _active_machines(config, name):
            assert time.monotonic() - killed < grace + ending, (
                f"pool {name}'s machines still run {time.monotonic() - killed:.0f}s after its driver was killed")
            time.sleep(2.0)
        seconds = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    spent = price * (time.monotonic() - started) / 3600
    total = LEDGER.add(spent)
    print(f"\nlive {config.name}: abandoned pool {name} ended itself {seconds:.0f}s after its driver was killed; "
          f"about ${spent:.4f}; this run: ${total:.4f}")
    from skyward_ray.cluster import pool_admin

    for pool in pool_admin.survey(configs=[config]).pools:  # what `skyward-ray gc` ends: the dead driver's rest
        if pool.name == name:
            pool_admin.end(pool)
    assert_nothing_left(config, name)
    assert total <= ceiling, f"the live run spent ${total:.4f}, over its ${ceiling:.2f} ceiling ({ENV_MAX_COST})"
    return seconds


def _active_machines(config: ProviderConfig, name: str) -> list:
    from skyward_ray.cluster import pool_admin

    return [m for pool in pool_admin.survey(configs=[config]).pools if pool.name == name for m in pool.active]
