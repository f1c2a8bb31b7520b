"""What every cloud's offer source shares: the live listing's TTL cache, "live, else the snapshot",
and one offer per market from a pair of prices. Never imports Ray.

- `live_listing` reuses a live answer for the config's `live_offers_ttl` seconds, keyed by what
  makes it another answer (the cloud, the credentials' fingerprint, the endpoint, the filters). One
  cache for every cloud, so a plan over several clouds and a `skyward-ray offers` run share it.
- `live_or_snapshot`: a live listing is a refinement; when it fails the dated snapshot answers,
  and the log says why.
- `market_offers`: the on-demand offer where an on-demand price is listed, the spot offer where a
  spot price is listed, whatever it is. A spot price of 0 or not below on-demand is kept: the
  selector alone rejects it, with its reason in `plan.rejected` (DESIGN §2.1).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from skyward_ray.planning.offers import Market, Offer

log = logging.getLogger(__name__)

T = TypeVar("T")

_lock = threading.Lock()
_listings: dict[Hashable, tuple[float, Any]] = {}
_MAX_LISTINGS = 256  # keys are few (clouds × credentials × regions); a bound all the same


def fingerprint(secret: str | None) -> str:
    """A cache key part for a credential, so the credential itself is never kept as a key."""
    return hashlib.sha256((secret or "").encode()).hexdigest()[:16]


def live_listing(key: Hashable, ttl: float, fetch: Callable[[], T], fresh: bool = False) -> T:
    """`fetch()`'s answer for `key`, reused for `ttl` seconds (unless `fresh`). A failed fetch is
    not kept: the next call asks again."""
    with _lock:
        hit = _listings.get(key)
        if not fresh and hit is not None and time.monotonic() - hit[0] < ttl:
            return hit[1]  # type: ignore[no-any-return]
    answer = fetch()
    with _lock:
        if len(_listings) >= _MAX_LISTINGS:
            _listings.pop(next(iter(_listings)))
        _listings[key] = (time.monotonic(), answer)
    return answer


def live_or_snapshot(provider: str, live: Callable[[], T] | None, snapshot: Callable[[], T]) -> T:
    """The live answer where there is one to ask (`live` is None without credentials), else, or
    when it fails, the snapshot's."""
    if live is None:
        return snapshot()
    try:
        return live()
    except Exception as error:  # the live listing is a refinement: the snapshot stays the answer
        log.info("%s: live offers unavailable (%s: %s); using the snapshot", provider, type(error).__name__, error)
        return snapshot()


def market_offers(on_demand: float | None, spot: float | None, *,
                  markets: Sequence[Market] = ("on-demand", "spot"), **facts: Any) -> list[Offer]:
    """One offer per market of `markets` whose price is listed (a negative number is not a price),
    each carrying both prices."""
    prices: dict[str, float | None] = {"on-demand": on_demand, "spot": spot}
    return [Offer(market=market, price=price, on_demand_price=on_demand, spot_price=spot, **facts)
            for market in markets if (price := prices[market]) is not None and price >= 0]
