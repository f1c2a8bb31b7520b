"""The `skyward-ray` command. Commands live in their own modules and register themselves here."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import typer

from skyward_ray.cli import check as cli_check
from skyward_ray.cli import detached as cli_detached
from skyward_ray.cli import offers as cli_offers
from skyward_ray.cli import pools as cli_pools
from skyward_ray.console import set_verbosity

app = typer.Typer(
    name="skyward-ray",
    help="Run Python on the cheapest accelerators any cloud offers, on an ephemeral Ray cluster.",
    no_args_is_help=True,
    add_completion=False,
)



def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"skyward-ray {version('skyward-ray')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            typer.echo("skyward-ray (not installed: version unknown)")
        raise typer.Exit()


@app.callback()
def main(
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="print the version and exit"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="diagnostics (the skyward_ray logger at DEBUG) and "
                                                                 "the nodes' logs on stderr"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress lines (SKYWARD_QUIET=1); errors still show"),
) -> None:
    """Run Python on the cheapest accelerators any cloud offers, on an ephemeral Ray cluster."""
    set_verbosity(verbose=verbose, quiet=quiet)


cli_offers.register(app)
cli_pools.register(app)
cli_detached.register(app)
cli_check.register(app)

if __name__ == "__main__":
    app()
