"""What a pool spent: every machine from its launch to its end, at the price it was launched at.

A pool's size changes while it runs (a lost worker replaced, an elastic pool growing and
shrinking), so "price × nodes now × time since entry" is wrong in both directions. The ledger
instead keeps one span per machine: it opens when the cloud accepts the launch and closes when
the machine is terminated or first seen gone from the cloud's listing (an interruption). The node
provider feeds it, so the launcher, the replacer and the elastic autoscaler are all counted.

Clouds bill in their own units (per second, per minute, with minimums); the ledger is the list
price times wall time, which is what the plan promised and what a user can check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class Span:
    instance_id: str
    started: float
    ended: float | None = None

    def hours(self, now: float) -> float:
        return max(0.0, ((self.ended if self.ended is not None else now) - self.started) / 3600)


@dataclass
class Ledger:
    """Machine spans of one pool at one price per node-hour (the offer it was launched from)."""

    price: float
    market: str
    price_source: str
    price_as_of: datetime | None = None
    spans: dict[str, Span] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def launched(self, instance_ids: Iterable[str], at: float | None = None) -> None:
        at = time.time() if at is None else at
        with self._lock:
            for instance_id in instance_ids:
                self.spans.setdefault(instance_id, Span(instance_id, at))

    def ended(self, instance_ids: Iterable[str], at: float | None = None) -> None:
        at = time.time() if at is None else at
        with self._lock:
            for instance_id in instance_ids:
                span = self.spans.get(instance_id)
                if span is not None and span.ended is None:
                    span.ended = at

    def seen_active(self, active_ids: Iterable[str], at: float | None = None) -> None:
        """A full listing of the cluster: a machine of ours missing from it has ended (interrupted)."""
        active = set(active_ids)
        with self._lock:
            gone = [i for i, span in self.spans.items() if span.ended is None and i not in active]
        self.ended(gone, at)

    def node_hours(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        with self._lock:
            return sum(span.hours(now) for span in self.spans.values())

    def spent(self, now: float | None = None) -> float:
        """USD so far: node-hours × the launch price per node-hour."""
        return self.node_hours(now) * self.price

    def summary(self, now: float | None = None) -> str:
        """One line: machines × node-hours × price = cost, with the market and where the price came from."""
        hours = self.node_hours(now)
        source = self.price_source + (f" as of {self.price_as_of:%Y-%m-%d}" if self.price_as_of else "")
        machines = len(self.spans)
        return (f"{machines} machine{'s' if machines != 1 else ''}, {hours:.4f} node-hours × ${self.price:,.4f}/h "
                f"({self.market}, {source}) = ${hours * self.price:,.4f}")
