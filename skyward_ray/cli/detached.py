"""`skyward-ray up`, `skyward-ray env NAME`, `skyward-ray yaml`: pools that exist between commands.

`up` brings a pool up through the same plan, providers and boot path as `sky.Compute`, owned by a
keeper process (`skyward_ray.api.keeper`), and prints how existing Ray code reaches it. `env`
prints the variables for `eval`. `yaml` (or `up --ray-yaml FILE`) writes a Ray cluster config on
skyward's node providers, for `ray up`. `status`, `down` and `gc` (`cli/pools.py`) cover these
pools too.
"""

from __future__ import annotations

import os
import shlex
from typing import Any, Optional

import typer
from rich.console import Console

from skyward_ray.console import output_console
from skyward_ray.errors import NoOffersError, SkywardError, SpecError
from skyward_ray.planning import plan as planning
from skyward_ray.planning.detached import DetachedSpec, describe_duration
from skyward_ray.planning.image import Image

NameArg = typer.Argument(None, help="the pool's name (default: a fresh sky-xxxxxxxx)")
AcceleratorOpt = typer.Option(None, "--accelerator", "-a", help='e.g. "H100:8", "A100-80GB:8"; omit for CPU nodes')
NodesOpt = typer.Option(1, "--nodes", "-n", min=1, help="nodes in the pool")
ProviderOpt = typer.Option("local", "--provider", "-p", help="local, aws, runpod, vastai (comma-separated: compare)")
AllocationOpt = typer.Option("spot-if-available", "--allocation", help="spot-if-available | spot | on-demand | cheapest")
RegionOpt = typer.Option(None, "--region", "-r", help="region, or a prefix (us, eu)")
MaxPriceOpt = typer.Option(None, "--max-price", help="max USD per node per hour")
SetOpt = typer.Option(None, "--set", "-s", help="a provider setting FIELD=VALUE, e.g. --set heartbeat_grace=10 "
                                                "(repeatable; one provider only)")
IdleOpt = typer.Option("30m", "--idle-timeout", help="end after this long with no task and no client (30s, 10m, 1h; "
                                                     "'none' for no limit)")
LifetimeOpt = typer.Option("8h", "--max-lifetime", help="end this long after it came up (8h, 2d; 'none' for no limit)")


def _console() -> Console:
    return output_console(120)


def _provider(provider: str, settings: list[str] | None) -> Any:
    """The provider argument for sky.Compute: a name, or a config built from `--set FIELD=VALUE`."""
    if not settings:
        return provider
    import yaml

    from skyward_ray.planning.providers import provider_class

    if "," in provider:
        raise SpecError(f"--set applies to one provider; got --provider {provider}. Fix: name one provider")
    fields: dict[str, Any] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r}: write FIELD=VALUE, e.g. --set heartbeat_grace=10")
        fields[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return provider_class(provider)(**fields)


def _fail(error: BaseException) -> None:
    typer.echo(f"{type(error).__name__}: {error}", err=True)
    raise typer.Exit(2 if isinstance(error, SpecError) else 1) from None


def up(
    name: Optional[str] = NameArg, accelerator: Optional[str] = AcceleratorOpt, nodes: int = NodesOpt,
    provider: str = ProviderOpt, allocation: str = AllocationOpt, region: Optional[str] = RegionOpt,
    max_price: Optional[float] = MaxPriceOpt, settings: Optional[list[str]] = SetOpt,
    idle_timeout: str = IdleOpt, max_lifetime: str = LifetimeOpt,
    dashboard: bool = typer.Option(False, "--dashboard/--no-dashboard",
                                   help="run Ray's dashboard on the head: needed by `ray job submit`"),
    ray_yaml: Optional[str] = typer.Option(None, "--ray-yaml", help="write a Ray cluster YAML to this file for "
                                                                     "`ray up` instead of bringing the pool up"),
) -> None:
    """Bring a pool up that outlives this command; print how Ray code reaches it (`RAY_ADDRESS`)."""
    if ray_yaml:
        return yaml_command(name, accelerator, nodes, provider, allocation, region, max_price, settings,
                            max_lifetime, ray_yaml)
    try:
        DetachedSpec(name=name or "sky-check", idle_timeout=idle_timeout, max_lifetime=max_lifetime)
        from skyward_ray.api.compute import Compute  # lazy: it loads Ray
        from skyward_ray.cluster import api_log

        if api_log.enabled():  # `--verbose`: the keeper, a process of its own, writes the pool's first-contact log too
            os.environ.setdefault(api_log.ENV_DEBUG, "1")

        compute = Compute(provider=_provider(provider, settings), accelerator=accelerator, nodes=nodes,
                              allocation=allocation, region=region, max_hourly_cost=max_price)
        pool = compute.up(name, idle_timeout=idle_timeout, max_lifetime=max_lifetime, dashboard=dashboard)
    except (SkywardError, NoOffersError) as error:
        _fail(error)
        return
    from skyward_ray.cluster import pool_state
    from skyward_ray.cluster.dashboard import Dashboard

    record = pool_state.read_record(pool.name)
    assert record is not None
    state = record.detached or {}
    console = _console()
    idle, lifetime = state.get("idle_timeout"), state.get("max_lifetime")
    ends = " or ".join([*([f"after {describe_duration(idle)} idle (no task, no client)"] if idle else []),
                        *([f"{describe_duration(lifetime)} after it came up"] if lifetime else [])])
    console.print(f"pool [bold]{pool.name}[/] is up: {record.nodes} node(s) on {record.provider} ({record.offer}), "
                  f"${record.hourly_cost:,.2f}/h; " + (f"it ends {ends}" if ends else
                                                       "[bold red]it has no idle or lifetime limit[/]: "
                                                       f"`skyward-ray down {pool.name}` ends it"))
    console.print(f"RAY_ADDRESS={pool.ray_address}  (with RAY_AUTH_MODE=token and the pool's RAY_AUTH_TOKEN: "
                  f"`skyward-ray env {pool.name}` prints all of them)")
    console.print(f'  eval "$(skyward-ray env {pool.name})"')
    console.print("  python train.py                       # plain ray.init() reads RAY_ADDRESS")
    if state.get("dashboard_address"):
        console.print("  ray job submit -- python train.py     # RAY_API_SERVER_ADDRESS="
                      f"{state['dashboard_address']}")
        console.print(Dashboard(state["dashboard_address"]).sign_in_hint(
            f"the pool's token: RAY_AUTH_TOKEN in `skyward-ray env {pool.name}`"))
    console.print(f"  skyward-ray down {pool.name}")


def env(name: str = typer.Argument(..., help="a detached pool's name")) -> None:
    """Print `export` lines for a detached pool (RAY_ADDRESS, the token): `eval "$(skyward-ray env NAME)"`."""
    from skyward_ray.api import detached

    try:
        record = detached.ready_record(name)
    except SkywardError as error:
        _fail(error)
        return
    for key, value in detached.environment(record).items():
        typer.echo(f"export {key}={shlex.quote(value)}")


def yaml_command(
    name: Optional[str] = NameArg, accelerator: Optional[str] = AcceleratorOpt, nodes: int = NodesOpt,
    provider: str = ProviderOpt, allocation: str = AllocationOpt, region: Optional[str] = RegionOpt,
    max_price: Optional[float] = MaxPriceOpt, settings: Optional[list[str]] = SetOpt,
    max_lifetime: str = LifetimeOpt,
    out: Optional[str] = typer.Option(None, "--out", "-o", help="write to this file (default: print it)"),
) -> None:
    """Write a Ray cluster YAML (`provider: type: external`, skyward's node providers) for `ray up`."""
    try:
        spec = DetachedSpec(name=name or "sky-check", max_lifetime=max_lifetime)
        from skyward_ray.cluster import ray_yaml  # lazy: it loads Ray
        from skyward_ray.cluster.running import new_cluster_name

        plan = planning.plan(provider=_provider(provider, settings), accelerator=accelerator, nodes=nodes,
                        allocation=allocation, region=region, max_hourly_cost=max_price)
        offer = plan.chosen
        config = ray_yaml.cluster_config(name or new_cluster_name(), plan.specs[offer.spec_index].provider,
                                         offer, nodes, Image(), spec.max_lifetime)
    except (SkywardError, NoOffersError) as error:
        _fail(error)
        return
    text = ray_yaml.render(config, spec.max_lifetime)
    if out is None:
        typer.echo(text)
        return
    with open(out, "w") as handle:
        handle.write(text)
    typer.echo(f"wrote {out}: {nodes} node(s) of {offer.provider} {offer.instance_type} ({offer.market}) as cluster "
               f"{config['cluster_name']}; `ray up {out}` starts it, `ray down {out}` ends it")
    typer.echo(f"its Ray token will be made by `ray up` in {config['provider'][ray_yaml.TOKEN_FILE_KEY]} (0600), "
               "never in the YAML or Ray's config cache")


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("env")(env)
    app.command("yaml")(yaml_command)
