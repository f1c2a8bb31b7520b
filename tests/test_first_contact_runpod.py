"""First contact with RunPod's published contract (issue 20): the fake holds RunPod's schemas and
limits, and the provider keeps to them. No Ray and no pod machines here (the fake API only).

- RunPod's GraphQL pod input has no global-networking field: a query naming one fails validation;
- the REST pod API refuses fields its published `PodCreateInput` lacks, and `globalNetworking` other
  than on-demand, Secure Cloud, in a data center that offers it;
- pools of 2+ pods are created through REST with `globalNetworking`, in those data centers only;
  where none has the GPU the launch is a `CapacityError` (the plan walk tries the next offer);
- spot pools of 2+ pods are rejected in the plan (with the reason) and refused by the cloud;
- a listing that meets HTTP 429 backs off and still lists every pod.
"""

from __future__ import annotations

import json

import pytest
import requests
from ray.autoscaler.tags import NODE_KIND_WORKER

import skyward_ray as sky
from node_providers.runpod.global_network import INTERNAL_DOMAIN
from node_providers.runpod.offers import GLOBAL_NETWORK_DATA_CENTERS, SPOT_REASON
from tests.provider_helpers import create
from tests.simrunpod import SIM_SETTINGS
from tests.test_runpod_provider import api, provider_for, sim  # noqa: F401 (the same fake account and provider)

GPU = "NVIDIA GeForce RTX 4090"
NO_NETWORK_DC = "US-KS-3"  # a data center of the fake without global networking (not in RunPod's list)


def post_pod(sim, body):
    return requests.post(f"{sim.url}/v1/pods", json=body, headers={"Authorization": f"Bearer {sim.user_key}"},
                         timeout=30)


def graphql(sim, query):
    return requests.post(f"{sim.url}/graphql", json={"query": query},
                         headers={"Authorization": f"Bearer {sim.user_key}"}, timeout=30)


# -- the fake holds RunPod's contract ---------------------------------------------------------------
def test_the_graphql_pod_input_has_no_global_networking_field(sim):
    answer = graphql(sim, 'mutation { podFindAndDeployOnDemand(input: {globalNetwork: true, name: "x", '
                          f'imageName: "i", gpuTypeId: "{GPU}", cloudType: SECURE}}) {{ id }} }}')
    assert answer.status_code == 400
    assert "globalNetwork" in answer.json()["errors"][0]["message"]
    assert sim.live_pods() == []


def test_the_rest_api_refuses_undocumented_fields_and_global_networking_outside_its_rules(sim):
    base = {"name": "p", "imageName": "runpod/base", "gpuTypeIds": [GPU]}
    for body, words in [({**base, "globalNetwork": True}, "Additional properties"),
                        ({**base, "dockerArgs": "bash"}, "Additional properties"),
                        ({**base, "gpuCount": 0}, "minimum"),
                        ({**base, "cloudType": "ALL"}, "is not one of"),
                        ({**base, "globalNetworking": True, "interruptible": True}, "on-demand"),
                        ({**base, "globalNetworking": True, "cloudType": "COMMUNITY"}, "Secure Cloud"),
                        ({**base, "globalNetworking": True, "dataCenterIds": [NO_NETWORK_DC]}, "global networking")]:
        answer = post_pod(sim, body)
        assert answer.status_code == 400 and words in answer.json()["error"], (body, answer.text)
    assert sim.live_pods() == []
    made = post_pod(sim, {**base, "globalNetworking": True, "dockerStartCmd": ["sleep", "1"], "env": {"A": "b"}})
    assert made.status_code == 201, made.text
    pod = made.json()
    assert pod["dataCenterId"] in GLOBAL_NETWORK_DATA_CENTERS and pod["env"] == {"A": "b"}
    headers = {"Authorization": f"Bearer {sim.user_key}"}
    assert [p["id"] for p in requests.get(f"{sim.url}/v1/pods", headers=headers, timeout=30).json()] == [pod["id"]]
    assert requests.get(f"{sim.url}/v1/pods/{pod['id']}", headers=headers, timeout=30).json()["name"] == "p"
    assert requests.delete(f"{sim.url}/v1/pods/{pod['id']}", headers=headers, timeout=30).status_code == 204
    assert requests.get(f"{sim.url}/v1/pods/{pod['id']}", headers=headers, timeout=30).status_code == 404


# -- the provider keeps to it -----------------------------------------------------------------------
def test_a_two_pod_pool_is_created_through_rest_with_global_networking_in_its_data_centers(sim, tmp_path):
    provider, name = provider_for(tmp_path, nodes=2)
    since = len(sim.calls())
    [head] = create(provider, name)
    [worker] = create(provider, name, NODE_KIND_WORKER)
    creates = [c for c in sim.calls()[since:] if c.operation == "POST /v1/pods"]
    assert [c.status for c in creates] == [201, 201]
    for call in creates:
        body = json.loads(call.query)
        assert body["globalNetworking"] is True and body["interruptible"] is False and body["cloudType"] == "SECURE"
        assert set(body["dataCenterIds"]) == GLOBAL_NETWORK_DATA_CENTERS
    pods = {p.id: p for p in sim.live_pods()}
    assert all(pods[i].global_network and pods[i].data_center in GLOBAL_NETWORK_DATA_CENTERS for i in (head, worker))
    assert provider.internal_ip(worker) == f"{worker}.{INTERNAL_DOMAIN}"
    provider.cleanup_cluster_resources()
    assert sim.live_pods() == []


def test_no_gpu_where_global_networking_exists_is_a_capacity_error_and_one_pod_still_launches(sim, tmp_path):
    sim.capacity[GPU] = (NO_NETWORK_DC,)
    provider, name = provider_for(tmp_path, nodes=2)
    with pytest.raises(sky.CapacityError, match="no longer any instances available"):
        create(provider, name)
    assert sim.live_pods() == []
    single, single_name = provider_for(tmp_path / "one", nodes=1)
    [pod] = create(single, single_name)
    assert sim.pods[pod].data_center == NO_NETWORK_DC and not sim.pods[pod].global_network
    single.cleanup_cluster_resources()


def test_a_spot_pool_of_two_pods_is_rejected_in_the_plan_and_refused_by_the_cloud(sim, tmp_path):
    with pytest.raises(sky.NoOffersError, match="on-demand pods only"):
        sky.plan(provider=sky.RunPod(**SIM_SETTINGS), accelerator="RTX4090", nodes=2, allocation="spot")
    plan = sky.plan(provider=sky.RunPod(**SIM_SETTINGS), accelerator="RTX4090", nodes=2,
                    allocation="spot-if-available")
    assert {o.market for o in plan.offers} == {"on-demand"}
    assert any(SPOT_REASON in r.reason for r in plan.rejected if r.offer.market == "spot")
    assert sky.plan(provider=sky.RunPod(**SIM_SETTINGS), accelerator="RTX4090", nodes=1, allocation="spot").offers
    with pytest.raises(sky.SpecError, match="on-demand pods only"):
        provider_for(tmp_path, nodes=2, market="spot")
    assert sim.live_pods() == []


def test_a_rate_limited_listing_backs_off_and_still_lists_every_pod(sim, tmp_path):
    provider, name = provider_for(tmp_path, nodes=1)
    ids = create(provider, name)
    sim.limit_rate(3, 2.0)  # three calls per key in any two seconds
    since = len(sim.calls())
    for _ in range(5):
        assert sorted(m.instance_id for m in provider.machines(fresh=True) if m.active) == sorted(ids)
    assert any(c.status == 429 for c in sim.calls()[since:]), "the fake's limit was met"
    sim.limit_rate(1000, 1.0)
    provider.cleanup_cluster_resources()
    assert sim.live_pods() == []
