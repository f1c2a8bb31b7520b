"""`skyward-ray status`, `skyward-ray down NAME`, `skyward-ray gc [--dry-run]`: the last layer of teardown.

They work only by skyward's own marks (pool state files, the `skyward/cluster` tag, the pool
directories of the local provider) and never touch anything skyward did not create; see
`skyward_ray.cluster.pool_admin` for how a pool's driver is known to be alive.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from skyward_ray.console import output_console

ProvidersOpt = typer.Option(None, "--provider", "-p", help="comma-separated providers to look at (default: all)")
RegionOpt = typer.Option(None, "--region", "-r", help="the cloud region to look in (default: AWS_DEFAULT_REGION)")


def _console() -> Console:
    return output_console(140)


def _survey(provider: Optional[str], region: Optional[str]) -> Any:
    from skyward_ray.cluster import pool_admin  # lazy: the CLI module imports no cluster code at start

    providers = [p.strip() for p in provider.split(",") if p.strip()] if provider else None
    return pool_admin.survey(providers=providers, region=region)


def _money(value: Optional[float]) -> str:
    return "?" if value is None else f"${value:,.2f}"


def _row(pool: Any) -> dict[str, Any]:
    from skyward_ray.cluster import pool_admin

    detached = pool_admin.detached_facts(pool)
    return {"provider": pool.provider, "name": pool.name, "region": pool.region, "nodes": len(pool.active),
            "age": pool_admin.describe_age(pool.started_at), "hourly_cost": pool.hourly_cost,
            "driver": pool.liveness, "orphan": pool.orphan, "kind": pool.record.kind if pool.record else "?",
            "idle": None if detached.get("idle_s") is None else pool_admin.describe_age(time.time() - detached["idle_s"]),
            "cost": detached.get("cost"), "detached": detached,
            "left": pool.listing.resources if pool.listing else []}


def status(provider: Optional[str] = ProvidersOpt, region: Optional[str] = RegionOpt,
           as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """List this user's pools on every configured provider: age, idle time (detached pools), $/h, cost so far."""
    found = _survey(provider, region)
    rows = [_row(p) for p in found.pools]
    if as_json:
        typer.echo(json.dumps({"pools": rows, "notes": found.notes}, indent=2))
        return
    console = _console()
    if not rows:
        console.print("no skyward pools")
    else:
        table = Table(title=f"{len(rows)} skyward pool{'s' if len(rows) != 1 else ''}")
        for column in ("provider", "pool", "region", "nodes", "age", "idle", "$/h", "cost", "owner"):
            table.add_column(column, justify="right" if column in ("nodes", "age", "idle", "$/h", "cost") else "left")
        for row in rows:
            owner = ("keeper " if row["kind"] == "keeper" else "driver ") + row["driver"]
            owner += " (orphan: `skyward-ray gc` ends it)" if row["orphan"] else ""
            table.add_row(row["provider"], row["name"], row["region"] or "-", str(row["nodes"]), row["age"],
                          row["idle"] or "-", _money(row["hourly_cost"]),
                          "-" if row["cost"] is None else f"${row['cost']:,.4f}", owner)
        console.print(table)
        total = sum(r["hourly_cost"] or 0 for r in rows)
        console.print(f"total: {_money(total)}/h")
    for note in found.notes:
        console.print(f"note: {note}")


def down(name: str = typer.Argument(..., help="the pool's name, e.g. sky-1a2b3c4d"),
         provider: Optional[str] = ProvidersOpt, region: Optional[str] = RegionOpt) -> None:
    """End one pool: its machines, what was made for it, its state file and keys."""
    from skyward_ray.cluster import pool_admin

    found = _survey(provider, region)
    matches = [p for p in found.pools if p.name == name]
    if not matches:
        typer.echo(f"no skyward pool named {name!r}" + "".join(f"\nnote: {n}" for n in found.notes), err=True)
        raise typer.Exit(1)
    failed = False
    for pool in matches:
        if pool.record is not None and pool.record.kind == "keeper" and pool.liveness == "live":
            typer.echo(f"{pool.provider} {name}: asking its keeper (pid {pool.owner.pid}) to end it")
            if pool_admin.end_keeper(pool.record):  # its own teardown; then look again for anything left
                again = [p for p in _survey(pool.provider, region).pools if p.name == name]
                if not again:
                    typer.echo(f"{pool.provider} {name}: gone")
                    continue
                pool = again[0]
        elif pool.liveness == "live":
            typer.echo(f"note: {name}'s driver (pid {pool.owner.pid}) is still running; its pool ends now")
        left = pool_admin.end(pool)
        if left:
            failed = True
            typer.echo(f"{pool.provider} {name}: still listed after teardown: {', '.join(left)}", err=True)
        else:
            typer.echo(f"{pool.provider} {name}: gone")
    if failed:
        raise typer.Exit(1)


def gc(dry_run: bool = typer.Option(False, "--dry-run", help="only say what would be ended"),
       provider: Optional[str] = ProvidersOpt, region: Optional[str] = RegionOpt) -> None:
    """End every skyward pool whose driver is gone: machines, groups, key pairs, keys, state."""
    from skyward_ray.cluster import pool_admin

    found = _survey(provider, region)
    console = _console()
    orphans = [p for p in found.pools if p.orphan]
    verb = "would end" if dry_run else "ending"
    failed = False
    for pool in orphans:
        what = f"{len(pool.active)} machine(s)" + "".join(f", {r}" for r in (pool.listing.resources if pool.listing else []))
        console.print(f"{verb} {pool.provider} {pool.name} ({what}; its driver is gone)")
        if not dry_run:
            left = pool_admin.end(pool)
            failed = failed or bool(left)
            console.print(f"  still listed: {', '.join(left)}" if left else "  gone")
    for directory in found.stray_key_dirs:
        console.print(f"{verb} key directory {directory} (no pool of that name)")
        if not dry_run and not pool_admin.remove_stray_key_dir(directory):
            console.print(f"  left: {directory} is not a directory of the key root (a symlink?)")
    for pool in found.pools:
        if not pool.orphan and pool.liveness != "live":
            console.print(f"left alone: {pool.provider} {pool.name} (driver {pool.liveness}; "
                          f"`skyward-ray down {pool.name}` ends it)")
    if not orphans and not found.stray_key_dirs:
        console.print("nothing to collect")
    for note in found.notes:
        console.print(f"note: {note}")
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("down")(down)
    app.command("gc")(gc)
