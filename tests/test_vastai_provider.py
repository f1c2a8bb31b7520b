"""The Vast.ai node provider against the local Vast.ai REST fake, through the real `vastai` SDK: no Ray boot.

Offers (live with a key, the snapshot without), what each create_instance sends (onstart, env,
label, bid), identity in labels (a new provider finds the same instances; other clusters' and
other tools' instances are not ours), error mapping, the ask-gone re-search, self-destroy with the
instance's own key only, states from actual_status, and the plan refusing multi-node Vast pools.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, TAG_RAY_NODE_KIND

import skyward_ray as sky
from node_providers.vastai import VastAINodeProvider
from node_providers.vastai.cloud import LABEL_LIMIT
from node_providers.vastai.offers import SINGLE_NODE_REASON
from skyward_ray import names
from skyward_ray.cluster import provisioning
from skyward_ray.planning.accelerators import parse_accelerator
from tests import provider_helpers
from tests.provider_helpers import cluster_name, cluster_params, node_tags
from tests.simvast import SIM_SETTINGS, USER_KEY, SimVast, ask_row
from tests.simvast.server import decode_onstart


def asks():
    return [
        ask_row(101, dph_total=0.20, min_bid=0.08),
        ask_row(102, dph_total=0.21, min_bid=0.09),
        ask_row(103, dph_total=0.20, min_bid=0.08),
        ask_row(104, dph_total=0.50, min_bid=0.30),                     # same card, far dearer
        ask_row(105, gpu_name="RTX 4090", gpu_ram=24564, dph_total=0.19),  # another card, cheaper
        ask_row(106, reliability=0.5, dph_total=0.05),                  # below the reliability floor
        ask_row(107, verified=False, dph_total=0.06),                   # unverified host
        ask_row(108, direct_port_count=0, dph_total=0.07),              # no direct port for skyward's sshd
    ]


@pytest.fixture
def sim(monkeypatch):
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    server = SimVast(asks(), loading_delay=0.2).start()
    yield server
    server.stop()


def config(sim, tmp_path=None, **fields):
    settings = {**SIM_SETTINGS, "api_key": sim.user_key, "server_url": sim.url, "live_offers_ttl": 0, **fields}
    if tmp_path is not None:
        settings["key_dir"] = str(tmp_path)
    return sky.VastAI(**settings)


def t4(cfg, market="on-demand", ask="101"):
    return next(o for o in cfg.list_offers(parse_accelerator("T4")) if o.market == market and o.instance_type == ask)


def provider_for(sim, tmp_path, offer, cfg=None, name=None):
    """Prepare a cluster the way the launcher does; returns (provider, cluster name)."""
    name = name or cluster_name()
    return provisioning.load_node_provider(cfg or config(sim, tmp_path), cluster_params(offer), name), name


def create(provider, name, kind=NODE_KIND_HEAD, index=None):
    [created] = provider_helpers.create(provider, name, kind, index=index)
    return created


def onstart_text(payload):
    """The onstart script and the boot payload it joins (gzip + base64, in env), as one text."""
    return decode_onstart(payload)


# -- offers ------------------------------------------------------------------------------------------
def test_without_a_key_offers_come_from_the_snapshot_and_no_request_is_sent(sim):
    offers = sky.VastAI(server_url=sim.url).list_offers(None)
    assert offers and {o.price_source for o in offers} == {"snapshot:vastai"}
    assert sim.calls == []


def test_with_a_key_offers_are_live_filtered_by_reliability_verification_and_direct_ports(sim):
    cfg = config(sim)
    offers = cfg.list_offers(parse_accelerator("T4"))
    assert {o.price_source for o in offers} == {"live:vastai"}
    assert {o.instance_type for o in offers} == {"101", "102", "103", "104"}
    assert all(o.accelerator == "T4" and o.count == 1 and o.region == "Texas-US" for o in offers)
    spot = {o.instance_type: o.price for o in offers if o.market == "spot"}
    assert spot == {"101": 0.08, "102": 0.09, "103": 0.08, "104": 0.30}  # min_bid: the interruptible floor
    [search] = [c for c in sim.calls if c.path == "/api/v0/bundles/"]
    assert search.body["reliability"] == {"gte": 0.95} and search.body["verified"] == {"eq": True}
    assert search.body["direct_port_count"] == {"gte": 1}
    loose = config(sim, verified_only=False, min_reliability=0.4).list_offers(parse_accelerator("T4"))
    assert {"106", "107"} <= {o.instance_type for o in loose}


def test_live_offers_are_cached_for_the_ttl(sim):
    cfg = config(sim, live_offers_ttl=60)
    cfg.list_offers(parse_accelerator("T4"))
    cfg.list_offers(parse_accelerator("RTX4090"))
    assert len([c for c in sim.calls if c.path == "/api/v0/bundles/"]) == 1
    config(sim, live_offers_ttl=0).list_offers(None)
    assert len([c for c in sim.calls if c.path == "/api/v0/bundles/"]) == 2


def test_the_plan_rejects_every_vast_offer_for_two_nodes_and_says_why(sim):
    cfg = config(sim)
    one = sky.plan(provider=cfg, accelerator="T4", nodes=1)
    assert one.offers and one.offers[0].provider == "vastai"
    with pytest.raises(sky.NoOffersError) as caught:
        sky.plan(provider=cfg, accelerator="T4", nodes=2)
    assert "share no private network" in str(caught.value)
    snapshot = sky.plan(provider=sky.VastAI(), accelerator="H100:8", nodes=1).offers
    assert snapshot and all(o.single_node_reason == SINGLE_NODE_REASON for o in snapshot)


# -- instances ---------------------------------------------------------------------------------------
def test_create_sends_onstart_label_and_direct_port_and_identity_lives_in_labels(sim, tmp_path):
    cfg = config(sim, tmp_path)
    provider, name = provider_for(sim, tmp_path, t4(cfg))
    other, other_name = provider_for(sim, tmp_path, t4(cfg, ask="103"))
    head = create(provider, name, index=0)
    worker = create(provider, name, NODE_KIND_WORKER)  # ask 101 is rented now: re-search → 102
    theirs = create(other, other_name, index=0)
    foreign = sim.add_ask(ask_id=120)
    sim.handle("PUT", "/api/v0/asks/120/", {}, {"image": "nginx", "label": "my-own-box"},
               {"Authorization": f"Bearer {USER_KEY}"})
    assert foreign["id"] in sim.rented
    payloads = {p["label"].split(" ")[0]: p for p in sim.payloads()}
    assert set(payloads) == {f"skyward:{name}/head/0", f"skyward:{name}/worker/1", f"skyward:{other_name}/head/0",
                             "my-own-box"}
    head_payload = payloads[f"skyward:{name}/head/0"]
    assert head_payload["image"] == cfg.image and head_payload["disk"] == cfg.disk_gb
    env = head_payload["env"]  # the direct port, and the boot payload in chunks (onstart holds 4,048 characters)
    assert {k: v for k, v in env.items() if not k.startswith("SKYWARD_BOOT_")} == {"-p 2222:2222": "1"}
    assert len(head_payload["onstart"]) <= 4048 and all(len(f"{k}={v}") <= 256 for k, v in env.items())
    assert head_payload["runtype"] == "ssh_direc ssh_proxy" and head_payload["price"] is None
    text = onstart_text(head_payload)
    # the head makes its own host key and prints it on its log; no private key travels
    assert "ssh-keygen" in text and "BEGIN SSH HOST KEY KEYS" in text and "PRIVATE KEY" not in text
    assert provider.params.ssh_public_key.strip() in text and "Port 2222" in text
    assert "host_ed25519_key" not in onstart_text(payloads[f"skyward:{name}/worker/1"])  # the head's sshd only
    # state is in labels: a fresh provider (as Ray's autoscaler makes) finds the same instances
    again = VastAINodeProvider(provider.provider_config, name)
    assert again.non_terminated_nodes({}) == [head, worker]
    assert again.non_terminated_nodes({TAG_RAY_NODE_KIND: NODE_KIND_HEAD}) == [head]
    tags = again.node_tags(worker)
    assert tags[names.CLUSTER] == name and tags[names.NODE_INDEX] == "1" and tags["ray-launch-request"] == "r1"
    again.set_node_tags(worker, {"ray-node-status": "terminating"})
    assert provider.node_tags(worker)["ray-node-status"] == "terminating"
    assert other.non_terminated_nodes({}) == [theirs]
    provider.terminate_nodes(provider.non_terminated_nodes({}))
    assert provider.non_terminated_nodes({}) == [] and other.non_terminated_nodes({}) == [theirs]
    other.cleanup_cluster_resources()
    assert [i.label for i in sim.live()] == ["my-own-box"]


def test_no_user_credential_in_any_payload_and_self_destroy_uses_the_instances_own_key(sim, tmp_path):
    cfg = config(sim, tmp_path)
    provider, name = provider_for(sim, tmp_path, t4(cfg, "spot"))
    head = create(provider, name, index=0)
    worker = create(provider, name, NODE_KIND_WORKER)
    for payload in sim.payloads():
        assert USER_KEY not in json.dumps(payload) and USER_KEY not in onstart_text(payload)
        assert "Bearer ${CONTAINER_API_KEY:-}" in onstart_text(payload)  # the instance's own key, even unset
    time.sleep(0.3)  # running
    instances = {str(i.id): i for i in sim.live()}
    assert USER_KEY not in {i.api_key for i in instances.values()}
    shutdown = provider.cloud.boot_environment("head", 0).shutdown_command
    base = {"PATH": "/usr/bin:/bin"}
    # another instance's key cannot end this one
    wrong = subprocess.run(["bash", "-c", shutdown], capture_output=True, text=True, timeout=60,
                           env={**base, "CONTAINER_ID": head, "CONTAINER_API_KEY": instances[worker].api_key})
    assert head in {str(i.id) for i in sim.live()}, wrong.stdout + wrong.stderr
    done = subprocess.run(["bash", "-c", shutdown], capture_output=True, text=True, timeout=60,
                          env={**base, "CONTAINER_ID": head, "CONTAINER_API_KEY": instances[head].api_key})
    assert '"success": true' in done.stdout
    assert provider.non_terminated_nodes({}) == [worker]
    deletes = [c for c in sim.calls if c.method == "DELETE"]
    assert [(c.key_kind, c.status) for c in deletes] == [(f"instance:{worker}", 403), (f"instance:{head}", 200)]
    provider.terminate_nodes([worker, head])  # the gone head is not an error
    assert sim.live() == []


def test_spot_bids_the_asks_minimum_and_a_raised_floor_is_a_capacity_error(sim, tmp_path):
    cfg = config(sim, tmp_path)
    provider, name = provider_for(sim, tmp_path, t4(cfg, "spot"))
    create(provider, name, index=0)
    assert sim.payloads()[-1]["price"] == 0.08
    offer = t4(cfg, "spot", ask="103")
    provider, name = provider_for(sim, tmp_path, offer)
    sim.raise_floor(103, 0.15)
    with pytest.raises(sky.CapacityError, match="minimum bid"):
        create(provider, name, index=0)
    assert len(sim.live()) == 1  # the refused bid left no instance


def test_an_ask_gone_at_launch_is_replaced_by_the_cheapest_same_card_ask_within_the_ceiling(sim, tmp_path):
    cfg = config(sim, tmp_path)
    listed = t4(cfg)
    provider, name = provider_for(sim, tmp_path, listed)
    sim.take(101)  # someone else rents it between the plan and the launch
    create(provider, name, index=0)
    creates = [(c.path, c.status) for c in sim.calls if c.method == "PUT" and c.path.startswith("/api/v0/asks/")]
    assert creates == [("/api/v0/asks/101/", 404), ("/api/v0/asks/103/", 200)]  # 103: same card and price
    # nothing within 10% of the gone ask's price is left (102 went too; 104 is dearer, 105 another card)
    sim.take(102)
    other, other_name = provider_for(sim, tmp_path, listed)
    with pytest.raises(sky.CapacityError, match="no_such_ask.*no other T4×1 on-demand ask"):
        create(other, other_name, index=0)
    assert other.non_terminated_nodes({}) == []
    # the replacement is gone too: one retry only, then CapacityError
    generous = config(sim, tmp_path, replacement_price_margin=5.0)
    third, third_name = provider_for(sim, tmp_path, t4(generous, ask="104"), cfg=generous)
    sim.add_ask(ask_id=130, dph_total=0.6)  # a replacement exists, but it is rented before the retry too
    sim.fail_next_create("no_such_ask", times=2)
    with pytest.raises(sky.CapacityError, match="and so was ask 104"):
        create(third, third_name, index=0)
    assert third.non_terminated_nodes({}) == []


def test_errors_become_typed_errors(sim, tmp_path):
    cfg = config(sim, tmp_path)
    offer = t4(cfg)
    with pytest.raises(sky.AuthError, match="API key was refused") as caught:
        provider_for(sim, tmp_path, offer, cfg=config(sim, tmp_path, api_key="not-the-key"))
    assert "not-the-key" not in str(caught.value)
    with pytest.raises(sky.AuthError, match="no API key"):
        provider_for(sim, tmp_path, offer, cfg=sky.VastAI(server_url=sim.url, key_dir=str(tmp_path)))
    provider, name = provider_for(sim, tmp_path, offer)
    sim.fail_next_create("insufficient_credit")
    with pytest.raises(sky.ProvisioningError, match="insufficient_credit") as caught:
        create(provider, name, index=0)
    assert not isinstance(caught.value, sky.CapacityError)
    assert sim.live() == []


def test_states_follow_actual_status_and_an_interrupted_instance_is_still_ended(sim, tmp_path):
    cfg = config(sim, tmp_path)
    provider, name = provider_for(sim, tmp_path, t4(cfg))
    stuck, stuck_name = provider_for(sim, tmp_path, t4(cfg, ask="102"))
    sim.stuck_loading = True
    never = create(stuck, stuck_name, index=0)
    time.sleep(0.3)
    assert [m.state for m in stuck.cloud.describe()] == ["pending"] and not stuck.is_running(never)
    stuck.cleanup_cluster_resources()
    sim.stuck_loading = False
    head = create(provider, name, index=0)
    worker = create(provider, name, NODE_KIND_WORKER)
    time.sleep(0.3)
    assert provider.is_running(worker)
    machine = next(m for m in provider.cloud.describe() if m.instance_id == worker)
    endpoint = provider.cloud.ssh_endpoint(machine)
    row = next(i for i in sim.live() if str(i.id) == worker)
    assert (endpoint.host, endpoint.port, endpoint.user) == (row.public_ip, row.host_ports[2222], "root")
    sim.interrupt(worker)
    time.sleep(VastAINodeProvider.cloud_class.describe_ttl + 0.1)
    assert provider.is_terminated(worker)
    assert provider.non_terminated_nodes({}) == [head, worker], "a stopped instance still bills its disk"
    provider.terminate_nodes(provider.non_terminated_nodes({}))
    assert sim.live() == []


def test_labels_hold_identity_and_every_tag_within_vasts_256_characters_and_too_much_is_refused(sim, tmp_path):
    cfg = config(sim, tmp_path)
    provider, name = provider_for(sim, tmp_path, t4(cfg), name="sky-" + "n" * 40)
    head = create(provider, name, index=0)
    [payload] = sim.payloads()
    assert len(payload["label"]) <= LABEL_LIMIT == 256  # with the pool's owner, start, price and launch token
    tags = provider.node_tags(head)
    assert tags[names.OWNER] and tags[names.PRICE] == "0.2000" and tags[names.LAUNCH_TOKEN].startswith(f"{name}-0-")
    with pytest.raises(sky.ProvisioningError, match="over the .* this cloud's field holds"):
        provider.set_node_tags(head, {"note": "x" * 200})
    assert provider.node_tags(head) == tags, "a refused label change leaves the label as it was"
    huge = {**node_tags(name), "note": "y" * 300}
    with pytest.raises(sky.ProvisioningError, match="over the"):
        provider.create_node_with_resources_and_labels({}, huge, 1, {}, {names.NODE_INDEX: "1"})
    assert len(sim.payloads()) == 1, "a label over the budget is refused before anything is rented"
    provider.terminate_nodes([head])
