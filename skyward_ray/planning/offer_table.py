"""Rendering offers and plans as tables (rich), for `str(plan)` and the CLI.

Kept apart from the data classes so `offers.py` stays plain data, and so the CLI and `str(plan)`
show exactly the same columns. Every row says where its price came from and how old it is:
a snapshot price is a hint, and the user should see that before trusting it.
"""

from __future__ import annotations

import io
from collections import Counter
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable, Sequence

from rich import box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from skyward_ray.planning.offers import Offer, Plan

DEFAULT_ROWS = 10


def price_age(offer: "Offer", now: datetime | None = None) -> str:
    """ "snapshot 2026-11-01 (27 days old)", "snapshot 2026-11-28 (catalog commit, 7 days old)" (dated
    only by its file's last commit: at least that old), "snapshot (undated)", "live (3 min old)"."""
    kind = offer.price_source.split(":", 1)[0] or offer.price_source
    if offer.price_as_of is None:
        return f"{kind} (undated)" if offer.price_dated_by == "undated" else kind
    as_of = offer.price_as_of if offer.price_as_of.tzinfo else offer.price_as_of.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    seconds = max(0.0, (now - as_of).total_seconds())
    if seconds >= 86400:
        days = int(seconds // 86400)
        basis = f"{offer.price_dated_by}, " if offer.price_dated_by not in (None, "published") else ""
        return f"{kind} {as_of:%Y-%m-%d} ({basis}{days} day{'s' if days != 1 else ''} old)"
    if seconds >= 3600:
        return f"{kind} ({int(seconds // 3600)} h old)"
    if seconds >= 60:
        return f"{kind} ({int(seconds // 60)} min old)"
    return f"{kind} (just now)"


def place(offer: "Offer") -> str:
    """Where an offer is: its region, and its zone when it names one ("us-east-1 use1-az1"); latency
    to the driver is a cost too, so every row shows its region, not only a zone id."""
    parts = [part for part in (offer.region, offer.zone) if part]
    if len(parts) == 2 and parts[1].startswith(parts[0]):
        parts = parts[1:]  # "us-east-1a" already says "us-east-1"
    return " ".join(parts) or "-"


def offers_table(offers: Sequence["Offer"], *, title: str | None = None, start: int = 1,
                 show_spec: bool = False, now: datetime | None = None) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left", pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("provider")
    table.add_column("accelerator")
    table.add_column("instance / GPU type")
    table.add_column("region / zone")
    table.add_column("market")
    table.add_column("$/h node", justify="right")
    table.add_column("$/h GPU", justify="right")
    table.add_column("price source")
    if show_spec:
        table.add_column("spec", justify="right")
    now = now or datetime.now(timezone.utc)
    for position, offer in enumerate(offers, start):
        per_gpu = offer.price_per_accelerator
        kind = offer.instance_type + (f" ({offer.tier.lower()})" if offer.tier else "")
        where = place(offer)
        row = [
            str(position), offer.provider, offer.accelerator_label, kind, where, offer.market,
            f"{offer.price:,.2f}", f"{per_gpu:,.3f}" if per_gpu is not None else "-", price_age(offer, now),
        ]
        if show_spec:
            row.append(str(offer.spec_index))
        table.add_row(*row)
    return table


def price_lists(offers: Iterable["Offer"]) -> list[str]:
    """Where the snapshot prices shown come from, once per price list: "prices snapshot:aws: SkyPilot
    catalog catalogs/v7/aws/vms.csv @ 0013…, dated by the catalog commit 2026-11-28"."""
    lines: dict[tuple[str, str], str] = {}
    for offer in offers:
        if offer.price_reference and (offer.price_source, offer.price_reference) not in lines:
            when = ("undated" if offer.price_as_of is None else f"published {offer.price_as_of:%Y-%m-%d}"
                    if offer.price_dated_by in (None, "published")
                    else f"dated by the {offer.price_dated_by} {offer.price_as_of:%Y-%m-%d}")
            lines[(offer.price_source, offer.price_reference)] = (
                f"prices {offer.price_source}: {offer.price_reference}, {when}")
    return list(lines.values())


def to_text(*renderables: object, width: int = 160) -> str:
    """Render without colour or terminal codes, as plain text."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False,
                      no_color=True, highlight=False, emoji=False)
    for renderable in renderables:
        console.print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().strip("\n").splitlines()) + "\n"


def rejection_summary(rejected: Iterable[object]) -> str:
    """ "12 rejected: 8 count, 3 max_hourly_cost, 1 duplicate" (most common first)."""
    counts = Counter(getattr(r, "filter", "") or "other" for r in rejected)
    total = sum(counts.values())
    if not total:
        return "0 rejected"
    return f"{total} rejected: " + ", ".join(f"{n} {name}" for name, n in counts.most_common())


def rejection_examples(rejected: Iterable[object]) -> list[str]:
    """One reason per cause, most common first, e.g. "count ×12, e.g. 8 x H100 per node, 1 asked (...)":
    the summary's counts alone do not say what to change."""
    first: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for rejection in rejected:
        name = getattr(rejection, "filter", "") or "other"
        counts[name] += 1
        first.setdefault(name, getattr(rejection, "reason", ""))
    return [f"  {name} ×{n}, e.g. {first[name]}" for name, n in counts.most_common()]


def plan_renderables(plan: "Plan", rows: int = DEFAULT_ROWS, now: datetime | None = None) -> list[object]:
    now = now or datetime.now(timezone.utc)
    asked = "; ".join(f"[{i}] {spec.describe()}" if len(plan.specs) > 1 else spec.describe()
                      for i, spec in enumerate(plan.specs)) or "(no specs)"
    lines: list[object] = [f"Plan for {plan.nodes} node{'s' if plan.nodes != 1 else ''}: {asked}"]
    if plan.offers:
        chosen = plan.chosen
        lines.append(
            f"Chosen: {chosen.provider} {chosen.instance_type} {chosen.accelerator_label} {chosen.market} "
            f"in {place(chosen) if chosen.region or chosen.zone else 'any region'} at ${chosen.price:,.2f}/h per node "
            f"(${chosen.price * plan.nodes:,.2f}/h for {plan.nodes}) — price from {price_age(chosen, now)}"
        )
        shown = plan.offers[:rows] if rows else plan.offers
        lines.append(offers_table(shown, show_spec=len(plan.specs) > 1, now=now))
        if len(plan.offers) > len(shown):
            lines.append(f"... and {len(plan.offers) - len(shown)} more ranked offers")
        lines.extend(price_lists(shown))
    else:
        lines.append("No offer matches.")
    lines.append(f"{len(plan.offers)} ranked, {rejection_summary(plan.rejected)}")
    lines.extend(rejection_examples(plan.rejected))
    lines.extend(f"note: {note}" for note in plan.notes)
    return lines


def render_plan(plan: "Plan", rows: int = DEFAULT_ROWS, now: datetime | None = None, width: int = 160) -> str:
    return to_text(*plan_renderables(plan, rows, now), width=width)
