"""How fast is offer selection? Target: ≤ 50 ms per plan over ≥ 10,000 offers from three providers.

Offers are the real snapshot offers of AWS, RunPod and Vast.ai, replicated with jittered prices and
distinct ids until the wanted size, then ranked for three specs (one per provider) in two shapes:
a narrow ask (H100:8, spot-if-available — most offers are rejected with a reason) and a broad one
(any accelerator, cheapest — every offer is ranked). Run standalone:

    .venv/bin/python bench/bench_selector.py
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from skyward_ray.planning.offers import Offer  # noqa: E402
from skyward_ray import AWS, RunPod, VastAI  # noqa: E402
from skyward_ray.planning.selector import select  # noqa: E402
from skyward_ray.planning.spec import Spec  # noqa: E402

SIZES = (1_000, 10_000, 100_000)
TARGET_MS = 50.0


def synthetic_offers(total: int, seed: int = 1) -> list[list[Offer]]:
    """`total` offers split evenly over the three providers, derived from their snapshots."""
    rng = random.Random(seed)
    configs = (AWS(), RunPod(), VastAI(verified_only=False, min_reliability=0))
    per_provider = total // len(configs)
    result = []
    for config in configs:
        base = config.list_offers(None)
        offers = []
        for i in range(per_provider):
            template = base[i % len(base)]
            jitter = rng.uniform(0.9, 1.1)
            offers.append(template.model_copy(update={
                "instance_type": f"{template.instance_type}#{i}",
                "price": round(template.price * jitter, 4),
            }))
        result.append(offers)
    return result


def time_select(specs: list[Spec], offers: list[list[Offer]], repeats: int) -> tuple[float, int, int]:
    samples = []
    plan = None
    for _ in range(repeats):
        start = time.perf_counter()
        plan = select(specs, offers)
        samples.append((time.perf_counter() - start) * 1000)
    assert plan is not None
    return statistics.median(samples), len(plan.offers), len(plan.rejected)


def main() -> int:
    start = time.perf_counter()
    AWS().list_offers(None), RunPod().list_offers(None), VastAI().list_offers(None)
    print(f"snapshot load + parse (cold, all three providers): {(time.perf_counter() - start) * 1000:.1f} ms")
    start = time.perf_counter()
    AWS().list_offers(None), RunPod().list_offers(None), VastAI().list_offers(None)
    print(f"snapshot offers (cached): {(time.perf_counter() - start) * 1000:.2f} ms\n")

    shapes = {
        "H100:8 spot-if-available": [Spec(provider=p, accelerator="H100:8") for p in (AWS(), RunPod(), VastAI())],
        "any accelerator, cheapest": [Spec(provider=p, allocation="cheapest") for p in (AWS(), RunPod(), VastAI())],
    }
    print(f"{'offers':>8}  {'shape':<28} {'ms/plan (median)':>17} {'ranked':>8} {'rejected':>9}")
    worst_10k = 0.0
    for size in SIZES:
        offers = synthetic_offers(size)
        repeats = 15 if size <= 10_000 else 5
        for name, specs in shapes.items():
            ms, ranked, rejected = time_select(specs, offers, repeats)
            if size == 10_000:
                worst_10k = max(worst_10k, ms)
            print(f"{sum(map(len, offers)):>8}  {name:<28} {ms:>17.2f} {ranked:>8} {rejected:>9}")
    verdict = "OK" if worst_10k <= TARGET_MS else "OVER TARGET"
    print(f"\n10k offers: worst {worst_10k:.1f} ms per plan (target ≤ {TARGET_MS:.0f} ms): {verdict}")
    return 0 if worst_10k <= TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
