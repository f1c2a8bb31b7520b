"""The `skyward-ray` command. Commands live in their own modules and register themselves here."""

from __future__ import annotations

import typer

from skyward_ray.cli import detached as cli_detached
from skyward_ray.cli import offers as cli_offers
from skyward_ray.cli import pools as cli_pools

app = typer.Typer(
    name="skyward-ray",
    help="Run Python on the cheapest accelerators any cloud offers, on an ephemeral Ray cluster.",
    no_args_is_help=True,
    add_completion=False,
)

cli_offers.register(app)
cli_pools.register(app)
cli_detached.register(app)

if __name__ == "__main__":
    app()
