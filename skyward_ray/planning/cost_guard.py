"""The cost guard: a pool too big or too expensive is refused before anything is created.

Pure (no Ray, no I/O besides reading two environment variables), so it runs on the plan before
the first machine is asked for, and a later elastic pool can apply it to its `max` node count.

Two ceilings, both per pool:

* `max_pool_hourly_cost` — USD per hour for the whole pool, i.e. nodes × the offer's price per
  node. Default `DEFAULT_MAX_POOL_HOURLY_COST` = $100/h: one 8×H100 on-demand machine (about
  $55–98/h on AWS) or a dozen spot GPU nodes fit, while a typo such as `nodes=100` on an
  on-demand GPU type is stopped before it costs thousands of dollars a day. A leaked pool at the
  ceiling costs $2,400 a day, which is the most a mistake should cost before a human agrees.
* `max_pool_nodes` — nodes in one pool. Default `DEFAULT_MAX_POOL_NODES` = 64: larger than any
  pool a first user needs, small enough that a mistyped count (`nodes=1000`) never reaches a
  cloud API (1,000 parallel launches also trip account quotas and rate limits half-way).

Raise either per pool (`sky.Compute(max_pool_hourly_cost=..., max_pool_nodes=...)`) or for every
pool of a process by the environment (`SKYWARD_MAX_POOL_HOURLY_COST`, `SKYWARD_MAX_POOL_NODES`;
`inf` turns a ceiling off). The per-pool keyword wins over the environment.

Not to be confused with `max_hourly_cost` (a `sky.Spec`/`sky.Compute` filter on the offers the
selector ranks), which is USD per hour **per node**.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from skyward_ray.errors import SpecError

DEFAULT_MAX_POOL_HOURLY_COST = 100.0
DEFAULT_MAX_POOL_NODES = 64
ENV_MAX_POOL_HOURLY_COST = "SKYWARD_MAX_POOL_HOURLY_COST"
ENV_MAX_POOL_NODES = "SKYWARD_MAX_POOL_NODES"


@dataclass(frozen=True)
class Ceilings:
    """The two ceilings in force for one pool, and where each came from (for the error message)."""

    hourly_cost: float
    nodes: float
    hourly_cost_source: str = "default"
    nodes_source: str = "default"


def _from_environment(environ: Mapping[str, str], name: str) -> float | None:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SpecError(f"{name}={raw!r} is not a number. Fix: set it to a positive number, or 'inf' for no ceiling") from None
    if not value > 0 or math.isnan(value):
        raise SpecError(f"{name}={raw!r} must be positive. Fix: set it to a positive number, or 'inf' for no ceiling")
    return value


def ceilings(max_pool_hourly_cost: float | None = None, max_pool_nodes: int | None = None,
             environ: Mapping[str, str] | None = None) -> Ceilings:
    """The ceilings for one pool: the keyword if given, else the environment, else the default."""
    environ = os.environ if environ is None else environ
    for name, value in (("max_pool_hourly_cost", max_pool_hourly_cost), ("max_pool_nodes", max_pool_nodes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise SpecError(f"{name}={value!r}: pass a positive number (or float('inf') for no ceiling), or None "
                            f"for the default")
    cost, cost_source = DEFAULT_MAX_POOL_HOURLY_COST, "default"
    env_cost = _from_environment(environ, ENV_MAX_POOL_HOURLY_COST)
    if max_pool_hourly_cost is not None:
        cost, cost_source = float(max_pool_hourly_cost), "max_pool_hourly_cost="
    elif env_cost is not None:
        cost, cost_source = env_cost, ENV_MAX_POOL_HOURLY_COST
    nodes, nodes_source = float(DEFAULT_MAX_POOL_NODES), "default"
    env_nodes = _from_environment(environ, ENV_MAX_POOL_NODES)
    if max_pool_nodes is not None:
        nodes, nodes_source = float(max_pool_nodes), "max_pool_nodes="
    elif env_nodes is not None:
        nodes, nodes_source = env_nodes, ENV_MAX_POOL_NODES
    return Ceilings(cost, nodes, cost_source, nodes_source)


def _money(value: float) -> str:
    return "no ceiling" if math.isinf(value) else f"${value:,.2f}/h"


def check_nodes(nodes: int, limits: Ceilings) -> None:
    """Refuse a pool of more nodes than the node ceiling (before any offer is even listed)."""
    if nodes > limits.nodes:
        raise SpecError(
            f"nodes={nodes} is over the cost guard's ceiling of {limits.nodes:g} nodes per pool "
            f"({_source(limits.nodes_source)}). Nothing was created. Fix: if you mean it, pass "
            f"sky.Compute(..., max_pool_nodes={nodes}) for this pool, or set {ENV_MAX_POOL_NODES}={nodes} "
            "(or 'inf') in the environment for every pool")


def pool_hourly_cost(nodes: int, price_per_node: float) -> float:
    """USD per hour of a pool of `nodes` nodes of one offer (its price is per node per hour)."""
    return nodes * price_per_node


def check_cost(nodes: int, price_per_node: float, limits: Ceilings, what: str = "the chosen offer") -> None:
    """Refuse a pool whose total hourly price (nodes × price per node) is over the cost ceiling."""
    total = pool_hourly_cost(nodes, price_per_node)
    if total > limits.hourly_cost:
        needed = math.ceil(total)
        raise SpecError(
            f"this pool would cost ${total:,.2f}/h in total ({nodes} node{'s' if nodes != 1 else ''} × "
            f"${price_per_node:,.2f}/h per node for {what}), over the cost guard's ceiling of "
            f"{_money(limits.hourly_cost)} per pool ({_source(limits.hourly_cost_source)}). Nothing was created. "
            f"Fix: if you mean it, pass sky.Compute(..., max_pool_hourly_cost={needed}) for this pool, or set "
            f"{ENV_MAX_POOL_HOURLY_COST}={needed} (or 'inf') in the environment for every pool; or ask for fewer "
            "nodes or a cheaper offer (max_hourly_cost= caps the price per node)")


def check_pool(nodes: int, price_per_node: float, limits: Ceilings, what: str = "the chosen offer") -> None:
    """Both checks for a pool of `nodes` nodes (an elastic pool passes its `max`)."""
    check_nodes(nodes, limits)
    check_cost(nodes, price_per_node, limits, what)


def _source(source: str) -> str:
    if source == "default":
        return "the default"
    if source.endswith("="):
        return f"set by {source}"
    return f"set by ${source}"
