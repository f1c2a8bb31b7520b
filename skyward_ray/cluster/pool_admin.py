"""The last layer of teardown: find this user's pools on every provider, end one, end the orphans.

Behind `skyward-ray status`, `skyward-ray down NAME` and `skyward-ray gc`. Everything is found by
skyward's own marks only: the pool state files (`pool_state`), and what each cloud lists through
`Cloud.list_clusters` (the `skyward/cluster` tag on AWS, the pool directories under the runtime
root locally). Nothing skyward did not create is ever listed, so nothing else is ever ended.

Who keeps a pool alive is its state file's owner, or else the `skyward/owner` tag on its
machines (host, pid, start time). A pool is an **orphan** when that owner is known, is on this
host, and no longer runs; a pool whose owner runs, or runs on another host, or was never
recorded (a `ray up` cluster), is left alone by `gc` (`down NAME` ends any pool it names).

A name read back from a cloud is not trusted: anyone who can tag a machine in a shared account
chooses it, and it becomes a path on this machine (`key_root / name`). A listed name that is not a
pool name (`is_pool_name`, the rule for names the user gives) is reported in the survey's notes with
its machines and never acted on; keys are removed only through `ssh_keys.remove_cluster_key_dir`,
which removes nothing but a direct child of the key root.

A key directory is **stray** (collected by `gc`) only when no pool state file of *any* provider and
no listing names it: a provider filter narrows what is ended, never what counts as in use. Named
pools' key directories (not `sky-…`) are collected only by a survey of every provider that answered.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from skyward_ray import names
from skyward_ray.cluster import pool_state, ssh_keys
from skyward_ray.cluster.contract import Cloud, ClusterListing, ClusterParams, Machine
from skyward_ray.errors import AuthError, SkywardError
from skyward_ray.planning.detached import is_pool_name
from skyward_ray.planning.providers import ProviderConfig, provider_classes

Liveness = Literal["live", "dead", "other host", "unknown"]


@dataclass
class Pool:
    """One pool as seen from here: its cloud listing and/or its state file."""

    provider: str
    name: str
    config: ProviderConfig
    listing: ClusterListing | None = None
    record: pool_state.PoolRecord | None = None

    @property
    def region(self) -> str | None:
        return (self.listing.region if self.listing else None) or (self.record.region if self.record else None)

    @property
    def active(self) -> list[Machine]:
        return self.listing.active if self.listing else []

    @property
    def owner(self) -> pool_state.Owner | None:
        if self.record is not None:
            return self.record.owner
        for machine in self.listing.machines if self.listing else []:
            owner = pool_state.Owner.from_tag(machine.tags.get(names.OWNER))
            if owner is not None:
                return owner
        return None

    @property
    def liveness(self) -> Liveness:
        owner = self.owner
        if owner is None:
            return "unknown"
        alive = owner.alive()
        return "other host" if alive is None else ("live" if alive else "dead")

    @property
    def orphan(self) -> bool:
        return self.liveness == "dead"

    @property
    def started_at(self) -> float | None:
        if self.record is not None:
            return self.record.started_at
        stamps = [m.tags.get(names.STARTED) for m in (self.listing.machines if self.listing else [])]
        values = [float(s) for s in stamps if s and s.replace(".", "", 1).isdigit()]
        return min(values) if values else None

    @property
    def hourly_cost(self) -> float | None:
        """USD per hour now: active machines × the price per node paid."""
        price = self.record.price_per_node if self.record else None
        if price is None:
            prices = [m.tags.get(names.PRICE) for m in self.active]
            price = next((float(p) for p in prices if p), None)
        return None if price is None else price * len(self.active)

    @property
    def key_root(self) -> Path:
        """The directory holding this pool's key directory (its config's `key_dir`, else the default)."""
        root = (self.record.provider_config.get("key_dir") if self.record else None) or getattr(self.config, "key_dir", None)
        return Path(root) if root else ssh_keys.default_key_root()

    @property
    def key_dir(self) -> Path:
        return self.key_root / self.name


@dataclass
class Survey:
    pools: list[Pool] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stray_key_dirs: list[Path] = field(default_factory=list)


def _cloud_class(config: ProviderConfig) -> type[Cloud] | None:
    if not config.node_provider:
        return None
    module_name, _, class_name = config.node_provider.partition(":")
    return getattr(importlib.import_module(module_name), class_name).cloud_class


def default_configs(providers: list[str] | None = None, region: str | None = None) -> list[ProviderConfig]:
    """One default config per provider that can start machines (a region for those that take one)."""
    configs = []
    for name, cls in sorted(provider_classes().items()):
        if (providers and name not in providers) or not cls.node_provider:
            continue
        fields = {"region": region} if region and "region" in cls.model_fields else {}
        configs.append(cls(**fields))
    return configs


def survey(configs: list[ProviderConfig] | None = None, providers: list[str] | None = None,
           region: str | None = None) -> Survey:
    """Every pool of this user on every configured provider, with its state file if it has one."""
    result = Survey()
    records = pool_state.read_records()  # every provider's: they all say which key dirs are in use
    configs = list(configs) if configs is not None else default_configs(providers, region)
    for record in records.values():  # a pool's own config (its region, its profile) is looked at too
        if providers and record.provider not in providers:
            continue
        cls = provider_classes().get(record.provider)
        if cls is not None:
            with contextlib.suppress(Exception):
                config = cls(**record.provider_config)
                if config not in configs:
                    configs.append(config)
    seen: dict[tuple[str, str], Pool] = {}
    listed: set[str] = set()  # every name a listing gave, valid or not: its key dir is not stray
    every_listing_answered = True
    for config in configs:
        cloud_class = _cloud_class(config)
        if cloud_class is None:
            continue
        try:
            listings = cloud_class.list_clusters(config)
        except NotImplementedError:
            every_listing_answered = False
            result.notes.append(f"{config.name}: cannot list its pools yet; not looked at")
            continue
        except AuthError as error:  # no credentials here: nothing of that account is reachable from here
            result.notes.append(f"{config.name}: {error}")
            continue
        except SkywardError as error:
            every_listing_answered = False
            result.notes.append(f"{config.name}: {error}")
            continue
        for listing in listings:
            listed.add(listing.name)
            if not is_pool_name(listing.name):
                result.notes.append(_refused(config.name, listing))
                continue
            key = (config.name, listing.name)
            if key not in seen:
                seen[key] = Pool(config.name, listing.name, config, listing=listing, record=records.get(listing.name))
    for record in records.values():  # a state file with nothing left in any cloud: a stale record (or still booting)
        if providers and record.provider not in providers:
            continue
        if (record.provider, record.name) not in seen:
            cls = provider_classes().get(record.provider)
            config = cls(**record.provider_config) if cls else None
            if config is not None:
                seen[(record.provider, record.name)] = Pool(record.provider, record.name, config, record=record)
    result.pools = sorted(seen.values(), key=lambda p: (p.provider, p.name))
    in_use = set(records) | listed | {p.name for p in result.pools}
    result.stray_key_dirs = _stray_key_dirs(in_use, named_too=not providers and every_listing_answered)
    return result


def _refused(provider: str, listing: ClusterListing) -> str:
    """The note for a listed pool whose name skyward never gives (someone else tagged those machines)."""
    ids = ", ".join(m.instance_id for m in listing.machines) or "none"
    made = "".join(f", {r}" for r in listing.resources)
    return (f"{provider}: a pool listed as {listing.name!r} (instances: {ids}{made}) has a name skyward never "
            f"gives; left alone, nothing of it is ended or removed (check who tagged those machines)")


def _stray_key_dirs(in_use: set[str], named_too: bool) -> list[Path]:
    """Key directories under the default key root that no state file and no listing names.

    `sky-…` directories (the launcher's names) always; a named pool's only when `named_too` (every
    provider was surveyed and answered: an unlisted named pool may live on a provider not looked at).
    Symlinks and names that are not pool names are never candidates."""
    root = ssh_keys.default_key_root()
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir())
            if d.is_dir() and not d.is_symlink() and is_pool_name(d.name) and d.name not in in_use
            and (named_too or d.name.startswith("sky-"))]


def remove_stray_key_dir(directory: Path) -> bool:
    """Remove a key directory `survey` found stray (only a direct child of the key root; see `ssh_keys`)."""
    return ssh_keys.remove_cluster_key_dir(directory.name, directory.parent) is not None


def end(pool: Pool, timeout: float = 180.0) -> list[str]:
    """End one pool: terminate its machines, wait until none is listed, remove what prepare made,
    its state file and its keys. Returns the ids still listed (empty on success)."""
    left: list[str] = []
    if pool.listing is not None:
        cloud_class = _cloud_class(pool.config)
        assert cloud_class is not None
        cloud = cloud_class(pool.name, pool.config, ClusterParams(region=pool.region), dict(pool.listing.prepared))
        ids = [m.instance_id for m in pool.listing.machines
               if m.state != "terminated" or cloud_class.terminated_may_linger]
        if ids:
            cloud.terminate(ids)
        deadline = time.monotonic() + timeout
        left = [m.instance_id for m in cloud.describe() if m.active]
        while left and time.monotonic() < deadline:
            time.sleep(1.0)
            left = [m.instance_id for m in cloud.describe() if m.active]
        if left:
            return left
        cloud.cleanup()
    pool_state.remove_record(pool.name)
    ssh_keys.remove_cluster_key_dir(pool.name, pool.key_root)  # refuses anything but a direct child of the root
    return left


def end_keeper(record: pool_state.PoolRecord, timeout: float = 240.0) -> bool:
    """Ask a detached pool's keeper to end its pool (SIGTERM: the same interrupt-safe teardown as a
    `with` block's exit) and wait until it has exited. True when it is gone; False when it is not
    on this host or did not finish within `timeout` (then `end` finishes the job from here)."""
    owner = record.owner
    if owner.alive() is not True:
        return owner.alive() is False
    with contextlib.suppress(ProcessLookupError):
        os.kill(owner.pid, signal.SIGTERM)  # by pid, checked above to be that very process (its start time)
    deadline = time.monotonic() + timeout
    while owner.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    return not owner.alive()


def detached_facts(pool: Pool, now: float | None = None) -> dict[str, object]:
    """What `status` shows of a detached pool: its idle time, cost so far and clocks (empty otherwise)."""
    record = pool.record
    if record is None or record.kind != "keeper" or not record.detached:
        return {}
    state, now = record.detached, now or time.time()
    last_active = state.get("last_active")
    return {"status": state.get("status", "?"), "idle_s": None if last_active is None else max(0.0, now - last_active),
            "cost": state.get("cost"), "idle_timeout": state.get("idle_timeout"),
            "max_lifetime": state.get("max_lifetime")}


def describe_age(started_at: float | None, now: float | None = None) -> str:
    if started_at is None:
        return "?"
    seconds = max(0, int((now or time.time()) - started_at))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


__all__ = ["Pool", "Survey", "default_configs", "describe_age", "detached_facts", "end", "end_keeper",
           "remove_stray_key_dir", "survey"]
