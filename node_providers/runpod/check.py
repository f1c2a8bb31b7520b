"""`skyward-ray check` for RunPod: the key, where it came from, that RunPod accepts it, the account's
balance and spend limit (`myself { clientBalance spendLimit }`: a pod cannot start on an empty
balance), and whether pools of 2+ pods can be formed (RunPod's global networking: on-demand NVIDIA
pods in the Secure Cloud data centers RunPod lists, `offers.network_reason`). Only reads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node_providers.runpod.api import api_key, graphql, runpod_errors
from skyward_ray.planning.check import Finding, api_key_account

if TYPE_CHECKING:
    from node_providers.runpod.config import RunPod

KEY_FIX = ("create a key at https://www.console.runpod.io/user/settings (API Keys) and set RUNPOD_API_KEY, "
           "or pass sky.RunPod(api_key=...)")
BALANCE_FIX = "add funds at https://www.console.runpod.io/user/billing"
ACCOUNT_QUERY = "query myself { myself { id clientBalance spendLimit } }"


def key_source(config: "RunPod") -> str | None:
    """Where the key `api.api_key` uses comes from, in its order; None without one."""
    if config.api_key:
        return "sky.RunPod(api_key=...)"
    if os.environ.get("RUNPOD_API_KEY"):
        return "RUNPOD_API_KEY"
    return "~/.runpod/config.toml" if api_key(None) and (Path.home() / ".runpod" / "config.toml").is_file() else None


def probe(config: "RunPod") -> list[Finding]:
    """The RunPod findings, stopping after a missing or refused key."""
    key = api_key(config.api_key) or ""
    findings, account = api_key_account(key_source(config) if key else None, lambda: _account(key), "RunPod",
                                        KEY_FIX)
    if account is None:
        return findings
    findings.append(balance_finding(account.get("clientBalance"), account.get("spendLimit")))
    findings.append(network_finding(config))
    return findings


def _account(key: str) -> dict[str, Any]:
    with runpod_errors("read the account (myself)"):
        return graphql(key, ACCOUNT_QUERY).get("myself") or {}


def balance_finding(balance: float | None, spend_limit: float | None) -> Finding:
    """Fail on an empty balance: RunPod starts no pod without funds."""
    limit = f", spend limit ${spend_limit:g}/h" if spend_limit is not None else ""
    if balance is None:
        return Finding.warn("balance", "RunPod did not say the balance" + limit)
    if balance <= 0:
        return Finding.fail("balance", f"${balance:.2f}{limit}: no pod can start", BALANCE_FIX)
    return Finding.ok("balance", f"${balance:.2f}{limit}")


def network_finding(config: "RunPod") -> Finding:
    """Whether any listed offer can join a pool of 2+ pods (global networking), from the live listing."""
    offers = config.list_offers()
    networked = [o for o in offers if o.market == "on-demand" and o.single_node_reason is None]
    if not networked:
        return Finding.warn("multi-pod", "no offer can join a pool of 2+ pods (global networking): one-pod "
                                         "pools only", "sky.RunPod(cloud_type='SECURE'), allocation='on-demand'")
    kinds = sorted({o.accelerator or o.instance_type for o in networked})
    return Finding.ok("multi-pod", f"global networking for on-demand pools of 2+ pods: {', '.join(kinds[:6])}"
                                   + (" ..." if len(kinds) > 6 else ""))
