"""`skyward-ray offers` and `skyward-ray plan`: the selector from a shell, no credentials needed.

`offers` lists every matching offer in rank order (what you could buy); `plan` shows what
`sky.Compute` with the same arguments would buy, and why. Both take the arguments `sky.plan` takes
and print a table, or JSON with `--json` for scripts.
"""

from __future__ import annotations

import json
import warnings
from typing import Any, Optional

import typer
from rich.console import Console

from skyward_ray.console import output_console
from skyward_ray.errors import NoOffersError, SpecError, StalePricesWarning
from skyward_ray.planning.offer_table import (offers_table, plan_renderables, price_age, price_lists,
                                              rejection_examples, rejection_summary)
from skyward_ray.planning.offers import Offer, Plan, Rejection
from skyward_ray.planning.plan import plan as make_plan

ALL_CLOUDS = "aws,runpod,vastai"

AcceleratorOpt = typer.Option(None, "--accelerator", "-a",
                              help='e.g. "H100:8", "A100-80GB:8", "RTX4090"; "H100:1+" also accepts larger nodes; '
                                   "omit for any/CPU")
ProviderOpt = typer.Option(ALL_CLOUDS, "--provider", "-p", help="comma-separated: aws,runpod,vastai,local")
AllocationOpt = typer.Option("spot-if-available", "--allocation", help="spot-if-available | spot | on-demand | cheapest")
MaxPriceOpt = typer.Option(None, "--max-price", help="max USD per node per hour")
RegionOpt = typer.Option(None, "--region", "-r", help="region, or a prefix (us, eu) / country (US, DE)")
NodesOpt = typer.Option(1, "--nodes", "-n", min=1, help="nodes in the pool")
JsonOpt = typer.Option(False, "--json", help="print JSON instead of a table")
TABLE_ROWS = 30  # the table's default length; --json always gives every row unless --limit says otherwise


def _console() -> Console:
    return output_console(180)


def _offer_json(offer: Offer) -> dict[str, Any]:
    data = offer.model_dump(mode="json")
    data["price_per_accelerator"] = offer.price_per_accelerator
    data["price_age"] = price_age(offer)
    return data


def _rejection_json(rejection: Rejection) -> dict[str, Any]:
    """The short form `offers --json` lists: which offer (its label and shape) and why it was left out."""
    offer = rejection.offer
    return {"offer": offer.label, "provider": offer.provider, "accelerator": offer.accelerator_label,
            "price": offer.price, "reason": rejection.reason, "filter": rejection.filter,
            "spec_index": rejection.spec_index}


def _run_plan(accelerator: Optional[str], provider: str, allocation: str, max_price: Optional[float],
              region: Optional[str], nodes: int, as_json: bool) -> Plan | None:
    """Plan, or print the error (as text or JSON) and exit non-zero."""
    try:
        with warnings.catch_warnings():  # the CLI prints the plan's notes, which say the same
            warnings.simplefilter("ignore", StalePricesWarning)
            return make_plan(provider=provider, accelerator=accelerator, nodes=nodes, allocation=allocation,
                             region=region, max_hourly_cost=max_price)
    except (SpecError, NoOffersError) as error:
        code = 2 if isinstance(error, SpecError) else 1
        if as_json:
            typer.echo(json.dumps({"error": type(error).__name__, "message": str(error), "offers": []}, indent=2))
        else:
            typer.echo(f"{type(error).__name__}: {error}", err=True)
        raise typer.Exit(code) from None


def offers(
    accelerator: Optional[str] = AcceleratorOpt,
    provider: str = ProviderOpt,
    allocation: str = AllocationOpt,
    max_price: Optional[float] = MaxPriceOpt,
    region: Optional[str] = RegionOpt,
    nodes: int = NodesOpt,
    limit: Optional[int] = typer.Option(None, "--limit", min=0,
                                        help=f"rows to show (default {TABLE_ROWS} in the table, all in --json; 0 = all)"),
    show_all: bool = typer.Option(False, "--all", help="show every row"),
    as_json: bool = JsonOpt,
) -> None:
    """List matching offers across providers, cheapest first (per the allocation order)."""
    result = _run_plan(accelerator, provider, allocation, max_price, region, nodes, as_json)
    assert result is not None
    if limit is None:
        limit = 0 if (show_all or as_json) else TABLE_ROWS
    shown = result.offers[:limit] if limit and not show_all else result.offers
    if as_json:
        typer.echo(json.dumps({"offers": [_offer_json(o) for o in shown], "total": len(result.offers),
                               "rejected": [_rejection_json(r) for r in result.rejected],
                               "notes": result.notes}, indent=2))
        return
    console = _console()
    console.print(offers_table(shown, title=f"{len(result.offers)} offers ({allocation})"))
    if len(result.offers) > len(shown):
        console.print(f"... {len(result.offers) - len(shown)} more; --all to show")
    for line in price_lists(shown):
        console.print(line)
    console.print(rejection_summary(result.rejected))
    for line in rejection_examples(result.rejected):
        console.print(line)
    for note in result.notes:
        console.print(f"note: {note}")


def plan(
    accelerator: Optional[str] = AcceleratorOpt,
    provider: str = ProviderOpt,
    allocation: str = AllocationOpt,
    max_price: Optional[float] = MaxPriceOpt,
    region: Optional[str] = RegionOpt,
    nodes: int = NodesOpt,
    rows: int = typer.Option(10, "--rows", help="ranked offers to show (0 = all)"),
    as_json: bool = JsonOpt,
) -> None:
    """Show what `sky.Compute` with these arguments would buy, the ranking, and why others lost."""
    result = _run_plan(accelerator, provider, allocation, max_price, region, nodes, as_json)
    assert result is not None
    if as_json:
        typer.echo(json.dumps({
            "nodes": result.nodes,
            "specs": [spec.describe() for spec in result.specs],
            "chosen": _offer_json(result.chosen),
            "offers": [_offer_json(o) for o in result.offers],
            "rejected": [{"reason": r.reason, "filter": r.filter, "spec_index": r.spec_index,
                          "offer": _offer_json(r.offer)} for r in result.rejected],
            "notes": result.notes,
        }, indent=2))
        return
    console = _console()
    for renderable in plan_renderables(result, rows=rows):
        console.print(renderable)


def register(app: typer.Typer) -> None:
    """Add `offers` and `plan` to the main CLI app."""
    app.command("offers")(offers)
    app.command("plan")(plan)
