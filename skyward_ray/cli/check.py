"""`skyward-ray check`: per provider, whether a pool could launch and what to do when not.

The work is `skyward_ray.planning.check` (also `sky.check()`); this module prints it as a table (or
JSON) and sets the exit code: 1 when a provider named with `-p` cannot launch (none named: when no
provider can), so a script or CI step can stop before it asks a cloud for a machine.
"""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from skyward_ray.errors import SpecError
from skyward_ray.planning.check import CheckReport, check

_STYLES = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[bold red]FAIL[/bold red]"}


def report_table(report: CheckReport) -> Table:
    """One row per finding, grouped by provider; under a failed or warned finding, what to do."""
    table = Table(title="skyward-ray check")
    for column in ("provider", "check", "status", "detail"):
        table.add_column(column, overflow="fold")
    for provider in report.providers:
        verdict = "[green]can launch[/green]" if provider.can_launch else "[bold red]cannot launch[/bold red]"
        table.add_row(f"[bold]{escape(provider.provider)}[/bold]", "", verdict, f"checked in {provider.seconds:.1f}s")
        for finding in provider.findings:
            detail = escape(finding.detail)
            if finding.fix and finding.status != "ok":
                detail += f"\n[cyan]fix: {escape(finding.fix)}[/cyan]"
            table.add_row("", escape(finding.what), _STYLES[finding.status], detail)
        table.add_section()
    return table


def check_command(
    providers: Optional[str] = typer.Option(
        None, "--provider", "-p", help="providers to check, comma-separated (aws,runpod,vastai,container,local); "
                                       "default: every one"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Check, for each provider, that a pool could launch: SDK, credentials, quotas, balance. Costs nothing."""
    try:
        report = check(providers)
    except SpecError as error:
        typer.echo(f"SpecError: {error}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        Console(soft_wrap=False).print(report_table(report))
    raise typer.Exit(0 if report.ok else 1)


def register(app: typer.Typer) -> None:
    """Add `check` to the main CLI app."""
    app.command("check")(check_command)
