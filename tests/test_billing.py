"""The pool's spending record: machine spans at the launch price (pure; pools use it in the AWS tests)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from skyward_ray.cluster.billing import Ledger


def test_each_machine_counts_from_its_launch_to_its_end_at_the_launch_price():
    ledger = Ledger(price=2.0, market="spot", price_source="live:aws",
                    price_as_of=datetime(2026, 11, 29, tzinfo=timezone.utc))
    ledger.launched(["head", "w1"], at=0.0)
    ledger.seen_active(["head"], at=1800.0)            # w1 interrupted: gone from the listing at 30 min
    ledger.launched(["w1r"], at=1800.0)                # its replacement
    ledger.launched(["w1r"], at=2000.0)                # a second report of the same launch changes nothing
    assert ledger.spent(now=3600.0) == pytest.approx(2.0 * (1.0 + 0.5 + 0.5))
    ledger.ended(["head", "w1r"], at=3600.0)
    ledger.ended(["head"], at=7200.0)                  # an end is recorded once
    assert ledger.node_hours(now=99999.0) == pytest.approx(2.0)
    assert ledger.summary(now=99999.0) == ("3 machines, 2.0000 node-hours × $2.0000/h (spot, live:aws as of "
                                           "2026-11-29) = $4.0000")
