"""A Ray cluster YAML for `ray up`, on skyward's own node providers (`provider: type: external`).

For teams who run `ray up`/`ray down` themselves: the same offer, node provider and boot script a
skyward pool gets (nodes boot themselves, so no SSH is used: the provider's command runner runs
nothing), written as a config Ray's own validation accepts.

A `ray up` cluster has no skyward keeper and no driver heartbeat, so the head's watchdog cannot
tell a forgotten cluster from a used one. What is left of "never forgotten" is the lifetime: the
head's boot deadline and first-heartbeat grace are set to `max_lifetime`, so the head ends its own
machine that long after booting (its workers then lose it and end theirs). `skyward-ray down
NAME` ends such a cluster too (it finds it by its tags).

The config holds no secret: the cluster's Ray token lives in a 0600 file it names (`token_file`),
because `ray up` caches the config it resolves in a world-readable `/tmp/ray-config-<hash>`.
"""

from __future__ import annotations

from typing import Any

import yaml

from skyward_ray import names
from skyward_ray.cluster import token_file
from skyward_ray.cluster.contract import ClusterParams
from skyward_ray.cluster.node_provider import provider_section
from skyward_ray.planning.image import Image
from skyward_ray.planning.offers import Offer
from skyward_ray.planning.providers import ProviderConfig

TOKEN_FILE_KEY = token_file.PROVIDER_KEY  # the `provider:` key naming the 0600 token file
FOREVER_S = 10 * 365 * 86400.0  # `--max-lifetime none`: no deadline a person would notice
# Ray reads these as lists and raises KeyError when one is missing from an external provider's config.
EMPTY_LISTS = ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands", "setup_commands",
               "head_setup_commands", "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def cluster_config(name: str, config: ProviderConfig, offer: Offer, nodes: int, image: Image,
                   max_lifetime: float | None) -> dict[str, Any]:
    """The cluster config: one head type and one worker type of `offer`, `nodes` in all."""
    lifetime = max_lifetime if max_lifetime is not None else FOREVER_S
    params = ClusterParams(
        nodes=nodes, instance_type=offer.instance_type, market=offer.market, region=offer.region, zone=offer.zone,
        offer=offer.label, accelerator=offer.accelerator, accelerator_count=offer.count if offer.accelerator else 0,
        heartbeat_grace=config.heartbeat_grace, first_heartbeat_grace=lifetime, boot_deadline=lifetime,
        pip=[] if config.nodes_share_driver_python else list(image.pip), apt=list(image.apt), env=dict(image.env),
        # the price bought, on every machine (a replacement keeps it); no owner tag: `ray up` keeps the pool,
        # so `skyward-ray gc` must not take it for an orphan of this short-lived command
        pool_tags={names.PRICE: f"{offer.price:.4f}"})
    provider = provider_section(config.require_provisioning(), config.without_secrets(), params)
    # the cluster's Ray token: made by `ray up` (bootstrap_config) in this 0600 file, never in the config,
    # which `ray up` caches in a file every user of the machine can read
    provider[TOKEN_FILE_KEY] = str(token_file.default_path(name, config.key_dir))
    node_config = {"InstanceType": offer.instance_type} if offer.instance_type else {}
    workers = nodes - 1
    return {
        "cluster_name": name,
        "max_workers": workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "provider": provider,
        "auth": {"ssh_user": "ubuntu"},  # never used: the nodes boot themselves (no SSH session is opened)
        "available_node_types": {
            names.HEAD_TYPE: {"node_config": dict(node_config), "resources": {}, "min_workers": 0, "max_workers": 0},
            names.WORKER_TYPE: {"node_config": dict(node_config), "resources": {}, "min_workers": workers,
                                "max_workers": workers},
        },
        "head_node_type": names.HEAD_TYPE,
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        **{key: [] for key in EMPTY_LISTS},
    }


def render(config: dict[str, Any], max_lifetime: float | None) -> str:
    """The YAML text, with a header saying what a `ray up` cluster of skyward's does and does not do."""
    lifetime = "no lifetime limit" if max_lifetime is None else f"ends its own machines {max_lifetime:g}s after boot"
    header = (
        f"# Ray cluster config written by `skyward-ray yaml` for `ray up` / `ray down`.\n"
        f"# Nodes boot themselves from skyward's startup script (no SSH). No credential is in this file:\n"
        f"# the cloud SDK reads yours where `ray up` runs. The cluster's Ray token is made by `ray up` in\n"
        f"# provider.{token_file.PROVIDER_KEY} (mode 0600; RAY_AUTH_TOKEN=$(cat FILE) for clients), never here.\n"
        f"# The head {lifetime};\n"
        f"# there is no idle clock without a skyward keeper (`skyward-ray up` has one).\n"
        f"# Workers: `ray up` starts the head only. A skyward head runs no autoscaler that could start\n"
        f"# machines (no credentials on nodes), so min_workers below stay unlaunched under `ray up`;\n"
        f"# a pool of several nodes that lasts between commands is `skyward-ray up -n N`.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


__all__ = ["EMPTY_LISTS", "TOKEN_FILE_KEY", "cluster_config", "render"]
