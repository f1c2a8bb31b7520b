"""The provider contract, the generic node provider and the launcher against an in-memory cloud.

No Ray process starts here: these run in about a second. They pin down what every cloud gets
from the generic layer (indexes, tags and labels, boot scripts, teardown order, cleanup on a
partial launch failure) and the typed refusal of providers that cannot provision yet.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, TAG_RAY_CLUSTER_NAME, TAG_RAY_NODE_KIND

import skyward_ray as sky
from skyward_ray import names
from skyward_ray.cluster import launcher, provisioning, teardown
from skyward_ray.cluster.contract import ClusterParams
from skyward_ray.planning.offers import Offer
from skyward_ray.planning.providers import ProviderConfig
from tests import layering
from tests.fakecloud import Fake, FakeCloud, FakeNodeProvider

REPO = Path(__file__).resolve().parent.parent
OFFER = Offer(provider="fake", accelerator="T4", count=1, market="spot", price=0.2, on_demand_price=0.5,
              spot_price=0.2, region="r1", zone="r1a", instance_type="f1.small", price_source="test")


@pytest.fixture(autouse=True)
def clean_cloud():
    FakeCloud.reset()
    yield
    FakeCloud.reset()


def params(nodes: int = 3, **kw) -> ClusterParams:
    return ClusterParams(nodes=nodes, instance_type="f1.small", market="spot", region="r1", offer=OFFER.label,
                         accelerator="T4", accelerator_count=1, **kw)


def new_cluster(nodes: int = 3) -> launcher.Cluster:
    name = launcher.new_cluster_name()
    provider = provisioning.load_node_provider(Fake(), params(nodes), name)
    return launcher.Cluster(name=name, provider=provider, offer=OFFER, instance_ids=[])


def tags(name: str, kind: str) -> dict[str, str]:
    return {TAG_RAY_CLUSTER_NAME: name, TAG_RAY_NODE_KIND: kind}


def test_prepare_runs_once_and_every_cluster_gets_a_fresh_token():
    first, second = new_cluster(), new_cluster()
    assert FakeCloud.prepared_clusters == [first.name, second.name]
    tokens = {c.provider.params.auth_token for c in (first, second)}
    assert len(tokens) == 2 and all(len(t) == 64 for t in tokens)
    assert first.provider.provider_config["prepared"] == {"network": f"net-{first.name}"}


def test_provision_gives_the_head_index_0_and_workers_1_to_n_with_one_spelling_of_every_name():
    cluster = new_cluster(4)
    provisioning.provision(cluster, 4)
    provider = cluster.provider
    assert provider.non_terminated_nodes({}) == cluster.instance_ids  # head first, then by index
    assert [provider.node_tags(i)[names.NODE_INDEX] for i in cluster.instance_ids] == ["0", "1", "2", "3"]
    assert provider.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}) == cluster.instance_ids[:1]
    head, worker = (FakeCloud.scripts[i] for i in cluster.instance_ids[:2])
    for index, script in ((0, head), (1, worker)):
        assert f"{names.NODE_INDEX}={index}" in script and f"{names.PROVIDER}=fake" in script
        assert f"{names.OFFER}={OFFER.label}" in script and f"{names.ACCELERATOR}=T4" in script
        assert f'{names.INSTANCE_ID}=$SKYWARD_INSTANCE_ID' in script
        assert "RAY_AUTH_TOKEN=" + provider.params.auth_token in script
        assert "RAY_NODE_MARKET_TYPE=spot" in script and "SKYWARD_SPOT=1" in script
        assert script.rstrip().endswith("poweroff"), "when Ray exits, the machine ends itself"
    head_ip = provider.internal_ip(cluster.instance_ids[0])
    assert "--head" in head and f"--address={head_ip}:6379" in worker  # workers join the head's private address
    assert provider.node_tags(cluster.instance_ids[1])[names.CLUSTER] == cluster.name


def test_a_partial_launch_failure_ends_everything_it_started_and_cleans_up():
    FakeCloud.fail_launch[2] = sky.CapacityError("no f1.small capacity in r1a")
    name = launcher.new_cluster_name()
    with pytest.raises(sky.CapacityError, match="no f1.small capacity"):
        launcher.launch(Fake(), params(4), name, OFFER, boot_timeout=5, runtime_env=None)
    machines = FakeCloud.machines[name]
    assert 1 <= len(machines) <= 3, "the head, and the workers that launched before the failure"
    assert {m.state for m in machines.values()} == {"terminated"}, "and every one of them was ended"
    assert FakeCloud.cleaned_clusters == [name], "what prepare made was removed"


def test_the_first_failure_cancels_the_creates_not_yet_started():
    FakeCloud.launch_delay = 0.05
    FakeCloud.fail_launch[1] = sky.CapacityError("no f1.small capacity in r1a")
    name = launcher.new_cluster_name()
    with pytest.raises(sky.CapacityError):
        launcher.launch(Fake(), params(60), name, OFFER, boot_timeout=5, runtime_env=None)
    machines = FakeCloud.machines[name]
    assert len(machines) <= 1 + 2 * 16, "only creates already in flight (about one per thread) went on, not all 60"
    assert {m.state for m in machines.values()} == {"terminated"}


def test_a_machine_whose_create_response_was_lost_is_found_by_its_tag_and_ended():
    from tests.fakecloud import LaggyFake

    FakeCloud.listing_lag = 3.0  # the cloud lists it only 3 s later
    FakeCloud.lose_response[2] = sky.ProvisioningError("connection reset by peer")
    name = launcher.new_cluster_name()
    started = time.monotonic()
    with pytest.raises(sky.ProvisioningError, match="connection reset"):
        launcher.launch(LaggyFake(), params(3), name, OFFER, boot_timeout=5, runtime_env=None)
    took = time.monotonic() - started
    machines = FakeCloud.machines[name]
    assert len(machines) == 3 and {m.state for m in machines.values()} == {"terminated"}
    assert teardown.CONFIRM_INTERVAL <= took < teardown.CONFIRM_INTERVAL + 5, \
        "two empty listings, the later one CONFIRM_INTERVAL after the last create"
    assert FakeCloud.cleaned_clusters == [name]


def test_a_teardown_error_is_reported_beside_the_launch_error_and_never_replaces_it():
    FakeCloud.fail_launch[1] = sky.CapacityError("no f1.small capacity in r1a")
    name = launcher.new_cluster_name()
    original = FakeCloud.cleanup

    def broken_cleanup(self):
        raise RuntimeError("the cloud's API is down")

    FakeCloud.cleanup = broken_cleanup
    try:
        with pytest.raises(sky.CapacityError, match="no f1.small capacity") as caught:
            launcher.launch(Fake(), params(2), name, OFFER, boot_timeout=5, runtime_env=None)
    finally:
        FakeCloud.cleanup = original
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert f"the teardown of {name} failed too" in notes and "the cloud's API is down" in notes


def test_teardown_ends_workers_before_the_head_and_waits_until_none_is_listed():
    cluster = new_cluster(3)
    provisioning.provision(cluster, 3)
    head, *workers = cluster.instance_ids
    assert teardown.teardown(cluster) == []
    terminations = [ids for call, ids in FakeCloud.calls if call == "terminate"]
    assert terminations == [tuple(sorted(workers)), (head,)]
    assert cluster.provider.non_terminated_nodes({}) == []
    assert FakeCloud.cleaned_clusters == [cluster.name]


def test_indexes_are_unique_under_concurrency_and_a_free_index_is_reused():
    cluster = new_cluster()
    provider, name = cluster.provider, cluster.name
    provider.create_node_with_resources_and_labels({}, tags(name, NODE_KIND_HEAD), 1, {}, {})
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # as Ray's autoscaler would: no index given
        created = list(pool.map(lambda _: provider.create_node_with_resources_and_labels(
            {}, tags(name, NODE_KIND_WORKER), 1, {}, {}), range(6)))
    indexes = sorted(info["index"] for batch in created for info in batch.values())
    assert indexes == [1, 2, 3, 4, 5, 6]
    lost = next(i for batch in created for i, info in batch.items() if info["index"] == 3)
    provider.terminate_nodes([lost])
    [again] = provider.create_node_with_resources_and_labels({}, tags(name, NODE_KIND_WORKER), 1, {}, {}).values()
    assert again["index"] == 3, "the lowest free index is taken"
    [replacement] = provider.create_node_with_resources_and_labels(
        {}, tags(name, NODE_KIND_WORKER), 1, {}, {names.NODE_INDEX: "5"}).values()
    assert replacement["index"] == 5, "a replacement keeps the index it is given"


def test_state_lives_in_the_cloud_so_a_re_created_provider_sees_the_same_machines():
    cluster = new_cluster(2)
    provisioning.provision(cluster, 2)
    again = FakeNodeProvider(cluster.provider.provider_config, cluster.name)  # what Ray's autoscaler does
    assert again.non_terminated_nodes({}) == cluster.instance_ids
    again.set_node_tags(cluster.instance_ids[1], {"extra": "yes"})
    assert cluster.provider.node_tags(cluster.instance_ids[1])["extra"] == "yes"
    head = cluster.instance_ids[0]
    assert again.internal_ip(head) == FakeCloud.machines[cluster.name][head].private_ip


class OffersOnly(ProviderConfig):
    """A provider that lists offers but cannot start machines yet (made up for this test)."""

    name: ClassVar[str] = "offers-only"

    def list_offers(self, accelerator=None):
        return []


@pytest.mark.parametrize("provider", [OffersOnly(), [OffersOnly(), "aws"]])
def test_providers_without_provisioning_refuse_with_a_typed_error_before_anything_happens(provider):
    with pytest.raises(sky.ProviderUnavailableError, match="cannot start .* machines yet") as caught:
        sky.Compute(provider=provider, accelerator="RTX4090")
    assert "Fix: choose another provider" in str(caught.value)
    assert isinstance(caught.value, sky.SpecError)


def test_provider_configs_are_typed_and_a_typo_names_the_field():
    with pytest.raises(sky.SpecError, match=r"AWS.regoin: unknown field; did you mean 'region'"):
        sky.AWS(regoin="us-east-1")
    with pytest.raises(sky.SpecError, match=r"AWS.disk_gb"):
        sky.AWS(disk_gb=-5)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_planning_and_the_offers_command_never_import_ray():
    plan = _run("import sys, skyward_ray as sky\n"
                "@sky.function\ndef f(x): return x\n"
                "sky.plan(provider='aws', accelerator='H100:8'); sky.plan(provider='aws,runpod,vastai', accelerator='A100')\n"
                "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))[:5]")
    assert plan.returncode == 0, plan.stderr
    cli = _run("import sys\nfrom typer.testing import CliRunner\nfrom skyward_ray.cli import app\n"
               "r = CliRunner().invoke(app, ['offers', '--accelerator', 'H100:8', '--provider', 'aws'])\n"
               "assert r.exit_code == 0, r.output\nassert 'p5.48xlarge' in r.output, r.output\n"
               "assert 'ray' not in sys.modules")
    assert cli.returncode == 0, cli.stderr


# -- the layout: no module imports "upwards", no import circles, no private reach-ins ------------
# Every import counts, wherever it stands (inside functions too); only imports of third parties
# (the documented lazy loads of Ray and the cloud SDKs) are free. Edit the rules here, and in
# docs/architecture.md ("Who may import what"), together.
LAYERS = {  # a package may import only from the packages listed for it (and the standard library/third parties)
    "skyward_ray.planning": {"skyward_ray.planning", "catalog"},
    "skyward_ray.node": {"skyward_ray.node"},
    "skyward_ray.cluster": {"skyward_ray.cluster", "skyward_ray.node", "skyward_ray.planning"},
    "node_providers": {"node_providers", "skyward_ray.cluster", "skyward_ray.node", "skyward_ray.planning", "catalog"},
    "skyward_ray.api": {"skyward_ray.api", "skyward_ray.cluster", "skyward_ray.planning"},
    # the CLI is a front end: its pool commands load api/cluster inside the command (lazily: Ray)
    "skyward_ray.cli": {"skyward_ray.cli", "skyward_ray.planning", "skyward_ray.cluster", "skyward_ray.api"},
    "catalog": {"catalog"},
}
# Anyone may import the base; it imports only itself. skyward_ray/__init__.py (the public face) may import anything.
BASE = {"skyward_ray.errors", "skyward_ray.names", "skyward_ray._validation", "skyward_ray.console"}


def test_no_module_imports_upwards_even_inside_a_function():
    wrong = layering.package_violations(layering.read_modules(REPO), LAYERS, BASE)
    assert wrong == [], "\n".join(wrong)


def test_there_are_no_import_circles_counting_imports_inside_functions():
    circles = layering.import_circles(layering.read_modules(REPO))
    assert circles == [], "\n".join(circles)


def test_no_module_reaches_into_another_modules_private_names():
    modules = layering.read_modules(REPO)
    reach_ins = layering.private_reach_ins(modules) + layering.private_attribute_reach_ins(modules)
    assert reach_ins == [], "\n".join(reach_ins)


def test_the_layering_checks_catch_what_they_are_for():
    """The rules are only worth anything if they can fail: synthetic modules that break each one."""
    modules = {
        "skyward_ray.planning.low": "import os\n\ndef later():\n    from skyward_ray.api import high\n",
        "skyward_ray.api.high": ("from skyward_ray.planning.low import _hidden\nimport skyward_ray.planning.low as low\n"
                                 "import ray._raylet\nfrom ray.autoscaler._private import util\n"
                                 "def f(obj):\n    obj._state = 1\n    return low._CACHE, ray._raylet\n"),
        "skyward_ray.api.owner": "class Owner:\n    def __init__(self):\n        self._state = 0\n",
        "skyward_ray.errors": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from skyward_ray.api import high\n",
    }
    assert layering.package_violations(modules, LAYERS, BASE) == [
        "skyward_ray.errors:3 imports skyward_ray.api.high", "skyward_ray.planning.low:4 imports skyward_ray.api.high"]
    assert layering.import_circles(modules) == [
        "skyward_ray.api.high → skyward_ray.planning.low → skyward_ray.api.high"]  # the type-only import closes none
    assert layering.private_reach_ins(modules) == [
        "skyward_ray.api.high:1 imports skyward_ray.planning.low._hidden",
        "skyward_ray.api.high:7 reads skyward_ray.planning.low._CACHE"]  # ray's private names are not ours
    assert layering.private_attribute_reach_ins(modules) == [
        "skyward_ray.api.high:6 uses obj._state (defined in skyward_ray.api.owner)"]
