"""`skyward-ray check` for Vast.ai: the key and where it came from, that Vast accepts it, and the
account's credit (`GET /api/v0/users/current`: `credit`, the prepaid dollars instances bill from;
with none, Vast starts no instance). Only reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node_providers.vastai.api import client, vast_errors
from skyward_ray.planning.check import Finding, api_key_account

if TYPE_CHECKING:
    from node_providers.vastai.config import VastAI

KEY_FIX = "create a key at https://cloud.vast.ai/manage-keys/ and set VAST_API_KEY, or pass sky.VastAI(api_key=...)"
CREDIT_FIX = "add credit at https://cloud.vast.ai/billing/"


def probe(config: "VastAI") -> list[Finding]:
    """The Vast.ai findings, stopping after a missing or refused key."""
    source = ("sky.VastAI(api_key=...)" if config.api_key else "VAST_API_KEY") if config.resolved_api_key() else None
    findings, user = api_key_account(source, lambda: _user(config), "Vast.ai", KEY_FIX)
    if user is None:
        return findings
    findings.append(credit_finding(user.get("credit"), user.get("balance_threshold_enabled")))
    return findings


def _user(config: "VastAI") -> dict[str, Any]:
    with vast_errors("read the account (users/current)"):
        return client(config).show_user()


def credit_finding(credit: float | None, threshold_enabled: bool | None) -> Finding:
    """Fail without credit: a rental is refused (`insufficient_credit`)."""
    if credit is None:
        return Finding.warn("credit", "Vast.ai did not say the account's credit")
    if float(credit) <= 0:
        return Finding.fail("credit", f"${float(credit):.2f}: no instance can start", CREDIT_FIX)
    note = " (low-balance alert on)" if threshold_enabled else ""
    return Finding.ok("credit", f"${float(credit):.2f}{note}")
