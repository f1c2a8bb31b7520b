"""Walking a pool's plan: launch the best offer, and on refusal the next one, until one works.

A capacity error moves to the next offer; a spot quota error skips the provider's spot offers;
an auth or quota error skips the provider; a fallback dearer than the cost guard allows is
skipped, never bought. The final error names every offer tried and why it failed, typed by the
one cause when all failures share it (all auth → `AuthError`).

Its own module so that `sky.Compute` (a driver's pool) and a keeper's pool (`KeeperMode`) walk
the same way: the only difference is which launcher entry point brings the cluster up.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
from collections.abc import Callable
from typing import Any

from skyward_ray.api.request import KeeperMode, PoolRequest
from skyward_ray.cluster import launcher, pool_state
from skyward_ray.cluster.billing import Ledger
from skyward_ray.cluster.contract import ClusterParams
from skyward_ray.cluster.running import Cluster
from skyward_ray.console import console
from skyward_ray.errors import AuthError, CapacityError, ProvisioningError, QuotaError, SpecError, SpotQuotaError
from skyward_ray.planning import image_resolve
from skyward_ray.planning.offers import Offer, Plan
from skyward_ray.planning.spec import Spec

# The driver beats from the moment the head's GCS answers; the head's watchdog allows it the
# heartbeat grace plus this much (an SSH tunnel coming up) for the first beat.
FIRST_BEAT_MARGIN = 15.0


def launch_from_plan(request: PoolRequest, plan: Plan, runtime_env: Callable[[Spec], dict[str, Any]],
                     keeper: KeeperMode | None, failures: list[tuple[Offer, BaseException]],
                     ledgers: list[Ledger]) -> Cluster:
    """Walk `plan` until an offer launches; return its cluster. Every offer that failed is added
    to `failures`, and every launch attempt's `Ledger` to `ledgers` (failed attempts' machines
    cost money too), as they happen: the caller keeps both whatever the outcome."""
    # Image.pip resolved here, for the nodes' platform: a package no node could install is refused
    # now, naming it, rather than after every node has booted
    image_resolve.check_for_providers(request.image.pip, [plan.specs[o.spec_index].provider for o in plan.offers])
    blocked_providers: set[str] = set()
    blocked_spot: set[str] = set()  # providers whose spot quota is used up: their on-demand offers still go
    for offer in plan.offers:
        spec = plan.specs[offer.spec_index]
        if spec.provider.name in blocked_providers or (offer.market == "spot" and spec.provider.name in blocked_spot):
            continue
        try:  # a fallback dearer than the cost guard allows is skipped, never bought
            request.check_cost(offer)
        except SpecError as error:
            failures.append((offer, error))
            continue
        cluster_name = keeper.name if keeper is not None else launcher.new_cluster_name()
        boot_timeout = request.boot_timeout or spec.provider.boot_timeout
        params = cluster_params(request, plan, spec, offer, boot_timeout, keeper)
        with contextlib.ExitStack() as progress:
            # Said once the cloud has prepared the cluster (its credentials, capacity and limits
            # checked): a refused pool never printed that it was starting.
            starting = console.status(f"starting {request.desired.desired} node(s) on {offer.provider} "
                                      f"({offer.instance_type}, {offer.market})")
            announce = functools.partial(progress.enter_context, starting)
            ledger = Ledger(offer.price, offer.market, offer.price_source, offer.price_as_of)
            ledgers.append(ledger)
            try:
                if keeper is None:
                    cluster = launcher.launch(spec.provider, params, cluster_name, offer, boot_timeout,
                                              runtime_env(spec), ledger=ledger, announce=announce)
                else:
                    cluster = launcher.launch_detached(spec.provider, params, cluster_name, offer, boot_timeout,
                                                       runtime_env(spec), ledger, keeper.state, announce=announce)
            except CapacityError as error:
                failures.append((offer, error))
                continue
            except SpotQuotaError as error:
                failures.append((offer, error))
                blocked_spot.add(spec.provider.name)
                continue
            except (AuthError, QuotaError) as error:
                failures.append((offer, error))
                blocked_providers.add(spec.provider.name)
                continue
        console.print(f"[green]pool ready[/]: {len(cluster.nodes)} node(s) on {offer.provider} "
                      f"in {cluster.timings.get('ready_s', 0):.1f}s")
        return cluster
    tried = "\n".join(f"  - {o.provider} {o.instance_type} {o.region or ''} {o.market}: "
                      f"{type(error).__name__}: {error}" for o, error in failures)
    kinds = {type(error) for _, error in failures}
    error_type = kinds.pop() if len(kinds) == 1 else ProvisioningError  # all auth → AuthError, etc.
    raise error_type(f"no offer in the plan could be provisioned. Tried:\n{tried}")


def cluster_params(request: PoolRequest, plan: Plan, spec: Spec, offer: Offer, boot_timeout: float,
                   keeper: KeeperMode | None) -> ClusterParams:
    """What this cluster is, for the provider: the offer bought, the image, the token."""
    installs_at_boot = not spec.provider.nodes_share_driver_python
    accelerator = offer.accelerator or (spec.accelerator.name if spec.accelerator else None)
    image = request.image
    return ClusterParams(
        auth_token=secrets.token_hex(32),  # a fresh Ray auth token per cluster
        nodes=request.desired.desired,
        instance_type=offer.instance_type,
        market=offer.market,
        head_market=head_market(request, plan, offer),
        region=offer.region,
        zone=offer.zone,
        offer=offer.label,
        accelerator=accelerator,
        accelerator_count=offer.count if accelerator else 0,
        heartbeat_grace=spec.provider.heartbeat_grace,
        first_heartbeat_grace=spec.provider.heartbeat_grace + FIRST_BEAT_MARGIN,
        boot_deadline=max(boot_timeout * 2, 120.0),
        max_lifetime=keeper.remaining_lifetime() if keeper is not None else None,
        pip=list(image.pip) if installs_at_boot else [],
        apt=list(image.apt),
        pool_tags=pool_state.owner_tags(offer.price),
        # A detached pool's clients are plain Ray scripts with no runtime_env of ours: the nodes
        # export the Image's environment themselves, and run the dashboard when asked.
        env=dict(image.env) if keeper is not None else {},
        dashboard=request.dashboard or (keeper is not None and keeper.dashboard),
    )


def head_market(request: PoolRequest, plan: Plan, offer: Offer) -> str | None:
    """A spot pool's head goes on-demand where the plan sells the same machine on-demand: a
    reclaimed worker is replaced, a reclaimed head ends the pool. (A one-node pool is its head:
    it stays in the market it was planned in.)"""
    if offer.market != "spot" or request.desired.desired < 2:
        return None
    same = any(o.market == "on-demand" and o.provider == offer.provider and o.instance_type == offer.instance_type
               and o.region == offer.region for o in plan.offers)
    return "on-demand" if same else None
