"""Vast.ai's rate limits, kept on the driver's side: every API call waits for its endpoint's turn,
and a 429 that comes anyway (another process of the same key) is backed off and retried.

Vast.ai documents its limits as a minimum interval between two requests to one endpoint by one
identity (key + client IP), some with a penalty for a request that comes too soon, and returns
HTTP 429 without a `Retry-After` header ("API requests too frequent", docs.vast.ai/api-reference/
rate-limits-and-errors). The intervals below are the `x-rate-limit` of each endpoint's OpenAPI
page (github.com/vast-ai/docs, api-reference/openapi/yaml/<page>.yaml). The SDK resends a 429
only twice, 0.15 s and 0.23 s later, which is sooner than any of these intervals: hence this
module. A refused request took no effect, so resending it (a rental too) rents nothing twice.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from skyward_ray.cluster import api_log

if TYPE_CHECKING:
    from node_providers.vastai.config import VastAI

T = TypeVar("T")


@dataclass(frozen=True)
class Limit:
    """One endpoint's documented limit: `interval` seconds between requests, plus, where the page
    gives one, at most `calls` per `period` seconds; `penalty`: seconds a too-early request costs."""

    interval: float = 0.0
    penalty: float = 0.0
    calls: int = 0
    period: float = 0.0


LIMITS: dict[str, Limit] = {
    "create": Limit(interval=4.5, penalty=12.0),  # create_instance.yaml: threshold 4.5, penalty 12
    "list": Limit(interval=1.0),                  # show_instances.yaml (GET /api/v1/instances/): threshold 1.0
    "destroy": Limit(interval=3.0),               # destroy_instance.yaml: threshold 3.0
    "label": Limit(interval=1.0),                 # label_instance.yaml / manage_instance.yaml: threshold 1.0
    "search": Limit(calls=10, period=60.0),       # search_offers.yaml: 10 requests per minute
    "logs": Limit(),                              # logs.yaml: no limit published
}
SLACK_S = 0.15  # a request claims its turn here and arrives there a little later; the next may arrive sooner
BACKOFF_ROUNDS = 6  # after the SDK's own attempts: rounds of (wait, SDK call) before the 429 is the caller's


class Pacer:
    """When each endpoint may next be called by one identity (thread-safe; one per key and server)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._recent: dict[str, deque[float]] = {}

    def wait(self, endpoint: str, sleep: Callable[[float], None] = time.sleep) -> None:
        """Block until `endpoint` may be called, then claim the slot."""
        limit = LIMITS.get(endpoint, Limit())
        while True:
            with self._lock:
                now = time.monotonic()
                recent = self._recent.setdefault(endpoint, deque())
                while recent and now - recent[0] >= limit.period:
                    recent.popleft()
                due = self._next.get(endpoint, 0.0)
                if limit.calls and len(recent) >= limit.calls:
                    due = max(due, recent[0] + limit.period + SLACK_S)
                if due <= now:
                    self._next[endpoint] = now + limit.interval + (SLACK_S if limit.interval else 0.0)
                    if limit.calls:
                        recent.append(now)
                    return
            sleep(due - now)

    def refused(self, endpoint: str) -> float:
        """A 429 came: how long to wait before the next try (the interval and its penalty, at least 1 s)."""
        limit = LIMITS.get(endpoint, Limit())
        pause = max(1.0, limit.interval + limit.penalty, limit.period / max(limit.calls, 1))
        with self._lock:
            self._next[endpoint] = max(self._next.get(endpoint, 0.0), time.monotonic() + pause)
        return pause


_PACERS: dict[tuple[str, str], Pacer] = {}
_PACERS_LOCK = threading.Lock()


def pacer_for(config: "VastAI") -> Pacer:
    """The pacer of this config's identity (its server and a digest of its key; never the key)."""
    key = hashlib.sha256((config.resolved_api_key() or "").encode()).hexdigest()[:16]
    with _PACERS_LOCK:
        return _PACERS.setdefault((config.server_url.rstrip("/"), key), Pacer())


def _is_rate_limited(error: BaseException) -> bool:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None) == 429


def paced(config: "VastAI", endpoint: str, call: Callable[[], T]) -> T:
    """`call()` (one SDK call to `endpoint`) in its turn; a 429 is waited out and retried for
    `BACKOFF_ROUNDS` rounds, then raised (the caller's typed-error mapping reports it)."""
    pacer = pacer_for(config)
    for round_ in range(BACKOFF_ROUNDS + 1):
        pacer.wait(endpoint)
        try:
            with api_log.timed_call("vastai", endpoint):
                return call()
        except Exception as error:
            if not _is_rate_limited(error) or round_ == BACKOFF_ROUNDS:
                raise
            time.sleep(pacer.refused(endpoint) * (1.5 ** min(round_, 3)))
    raise AssertionError("unreachable")  # pragma: no cover


def list_instances(config: "VastAI", sdk: Any) -> list[dict[str, Any]]:
    """Every instance row of the account, a page (at most 25, show_instances.yaml) per paced call:
    the SDK's own `show_instances` asks for the pages back to back, faster than the 1 s allowed."""
    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {"select_filters": {}, "order_by": [{"col": "id", "dir": "asc"}], "limit": 25}
    while True:
        page = paced(config, "list", lambda: sdk.show_instances_v1(dict(params)))
        rows.extend(dict(row) for row in (page.get("instances") or []))
        token = page.get("next_token")
        if not token:
            return rows
        params["after_token"] = token
