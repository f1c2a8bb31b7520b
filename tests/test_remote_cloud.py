"""What the remote clouds share, without a cloud: the tag encoding of tag-less clouds (lossless,
within a budget), the typed `NotFoundError` handled once by `RemoteCloud.terminate`, the log tail,
the boot environment from class-level snippets, the in-container sshd snippet, and the offer-source
helper (TTL cache, live-else-snapshot, market pairs whose implausible spot prices reach the selector)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from typing import Any

import pytest

import skyward_ray as sky
from skyward_ray import names
from skyward_ray.cluster.contract import ClusterParams, Machine, MachineRequest, NotFoundError
from skyward_ray.cluster.machine_tags import MachineName, MachineNaming, TagCodec
from skyward_ray.cluster.remote_cloud import RemoteCloud
from skyward_ray.cluster.ssh_keys import printed_host_keys
from skyward_ray.node.sshd import sshd_lines, state_dir_lines
from skyward_ray.planning import offer_source
from skyward_ray.planning.offers import Offer
from skyward_ray.planning.selector import select
from skyward_ray.planning.spec import Spec
from tests.provider_helpers import node_tags

LAUNCH_TAGS = {
    **node_tags("sky-0123abcd", "worker"), names.CLUSTER: "sky-0123abcd", names.NODE_INDEX: "3",
    "ray-node-name": "sky-0123abcd-worker-3", names.OFFER: "g4dn.12xlarge.us-east-1a.spot",
    names.OWNER: "build-runner-17.internal.example.com/4194303/1767225600.25", names.STARTED: "1767225600",
    names.PRICE: "1.2345", names.LAUNCH_TOKEN: "sky-0123abcd-3-r1",
}
WORKER_3 = MachineName("sky-0123abcd", "worker", 3)


# -- tag encoding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", [TagCodec(), TagCodec(ascii_armor=True)])
def test_the_tag_encoding_is_lossless_and_leaves_out_what_the_identity_says(codec):
    text = codec.encode(WORKER_3, LAUNCH_TAGS)
    assert codec.decode(WORKER_3, text) == LAUNCH_TAGS
    odd = {"s": "one letter", "~x": "tilde", "_": "underscore", names.NODE_INDEX: "7", "ray-node-type": "head"}
    assert codec.decode(WORKER_3, codec.encode(WORKER_3, odd)) == odd, "values the identity does not give stay"
    assert codec.decode(WORKER_3, "not ours") == {} and codec.decode(WORKER_3, "") == {}


def test_a_pools_tags_fit_a_vast_label_and_an_overflow_is_refused_not_cut():
    label_room = 256 - len(MachineNaming(":", "/").name(WORKER_3)) - 1
    assert len(TagCodec().encode(WORKER_3, LAUNCH_TAGS, budget=label_room)) <= label_room
    with pytest.raises(sky.ProvisioningError, match=r"take \d+ characters encoded, over the 256"):
        TagCodec(budget=256).encode(WORKER_3, {**LAUNCH_TAGS, "note": "z" * 200})


def test_machine_names_parse_back_and_a_longer_cluster_name_is_another_cluster():
    for naming in (MachineNaming("-", "-"), MachineNaming(":", "/")):
        assert naming.parse(naming.name(WORKER_3)) == WORKER_3
        lookalike = naming.name(MachineName("sky-a-b", "head", 0))
        assert naming.parse(lookalike).cluster == "sky-a-b" and not lookalike.startswith(naming.cluster_prefix("sky-b"))
        assert naming.parse("my-notebook") is None and naming.parse(naming.any_prefix + "x") is None


# -- RemoteCloud -------------------------------------------------------------------------------------
class Config(sky.RunPod):
    """A remote config to build the test cloud with (RunPod's fields; nothing is sent anywhere)."""


class BatchCloud(RemoteCloud):
    """A cloud whose API ends machines in one call that fails for any unknown id (like EC2's)."""

    config_class = Config
    instance_id_shell, node_ip_shell, shutdown_command = "${ID}", "${IP}", "poweroff"
    known = {"a", "b"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[list[str]] = []
        self.log: str | Exception | None = None

    def end_machines(self, instance_ids: list[str]) -> None:
        self.calls.append(list(instance_ids))
        if set(instance_ids) - self.known:
            raise NotFoundError("unknown id")

    def read_log(self, instance_id: str, lines: int) -> str | None:
        if isinstance(self.log, Exception):
            raise self.log
        return self.log

    def prepare(self) -> dict[str, Any]:
        return {}

    def cleanup(self) -> None:
        pass

    def launch(self, request: MachineRequest) -> Machine:
        raise NotImplementedError

    def describe(self) -> list[Machine]:
        return []

    def set_tags(self, instance_id: str, tags: Mapping[str, str]) -> None:
        pass


def cloud(**config: Any) -> BatchCloud:
    return BatchCloud("sky-test", Config(api_key="k", **config), ClusterParams(), {})


def test_an_unknown_id_is_handled_once_a_refused_batch_is_retried_id_by_id():
    c = cloud()
    c.terminate(["b", "a", "a"])
    assert c.calls == [["a", "b"]]
    c.calls.clear()
    c.terminate(["a", "gone", "b"])
    assert c.calls == [["a", "b", "gone"], ["a"], ["b"], ["gone"]]
    c.terminate([])
    assert len(c.calls) == 4


def test_the_log_tail_is_trimmed_here_and_never_raises():
    c = cloud()
    assert c.log_tail("a") == c.no_log
    c.log = "\n".join(f"line {i}" for i in range(100))
    assert c.log_tail("a", lines=3) == "line 97\nline 98\nline 99"
    c.log = ""
    assert c.log_tail("a") == "(the log is empty so far)"
    c.log = sky.ProvisioningError("throttled")
    assert c.log_tail("a") == "(no log: throttled)"


def test_the_boot_environment_comes_from_the_class_snippets_and_the_config():
    env = cloud(num_cpus=3, resources={"x": 1.0}).boot_environment("worker", 2)
    assert (env.instance_id_shell, env.node_ip_shell, env.shutdown_command) == ("${ID}", "${IP}", "poweroff")
    assert env.num_cpus == 3 and env.resources == {"x": 1.0}
    assert (sky.AWS().ssh_user, sky.RunPod().ssh_user, sky.VastAI().live_offers_ttl) == ("ubuntu", "root", 60.0)
    assert sky.AWS(ssh_user="ec2-user").ssh_user == "ec2-user"


def test_the_sshd_snippet_makes_its_own_host_key_prints_it_and_lets_one_user_in_by_key(tmp_path):
    text = "\n".join(state_dir_lines() + sshd_lines(2222, "root", "ssh-ed25519 AAA c"))
    for line in ("Port 2222", "AllowUsers root", "PasswordAuthentication no", "AuthenticationMethods publickey"):
        assert line in text.splitlines()
    assert "echo 'ssh-ed25519 AAA c' > \"$S/ssh/authorized_keys\"" in text
    # Run it with HOME here and a stand-in sshd binary (it records how it was started): the real
    # ssh-keygen makes the key, and what the snippet prints is exactly that key, as the driver parses it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sshd").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sshd-args\n')
    (bin_dir / "sshd").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", "-c", text + "\nwait"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    made = (tmp_path / ".skyward/ssh/host_ed25519_key.pub").read_text().split()
    assert printed_host_keys(done.stdout) == {f"{made[0]} {made[1]}"} and made[0] == "ssh-ed25519"
    assert (tmp_path / ".skyward/ssh/host_ed25519_key").stat().st_mode & 0o077 == 0  # ssh-keygen's 0600
    assert f"-f {tmp_path}/.skyward/ssh/sshd_config" in (tmp_path / "sshd-args").read_text()


# -- offer sources -----------------------------------------------------------------------------------
def test_the_live_listing_is_reused_for_its_ttl_and_a_failure_falls_back_to_the_snapshot():
    answers = iter([["first"], ["second"]])
    key = ("test", object())
    assert offer_source.live_listing(key, 60, lambda: next(answers)) == ["first"]
    assert offer_source.live_listing(key, 60, lambda: next(answers)) == ["first"]
    assert offer_source.live_listing(key, 0, lambda: next(answers)) == ["second"]

    def broken() -> list[str]:
        raise ConnectionError("down")

    assert offer_source.live_or_snapshot("test", broken, lambda: ["snapshot"]) == ["snapshot"]
    assert offer_source.live_or_snapshot("test", None, lambda: ["snapshot"]) == ["snapshot"]


def test_every_listed_spot_price_becomes_an_offer_and_the_selector_alone_rejects_it_with_a_reason():
    facts = dict(provider="runpod", accelerator="T4", count=1, instance_type="t4", price_source="live:runpod")
    offers: list[Offer] = []
    for index, spot in enumerate([0.0, 0.5, 0.7, 0.2, None]):
        offers += offer_source.market_offers(0.5, spot, **{**facts, "instance_type": f"t4-{index}"})
    assert [(o.instance_type, o.market) for o in offers if o.market == "spot"] == [
        ("t4-0", "spot"), ("t4-1", "spot"), ("t4-2", "spot"), ("t4-3", "spot")]
    plan = select([Spec(provider=sky.RunPod(), accelerator="T4", allocation="spot")], [offers])
    assert [o.instance_type for o in plan.offers] == ["t4-3"]
    reasons = {r.offer.instance_type: r.reason for r in plan.rejected if r.filter == "no_discount"}
    assert set(reasons) == {"t4-0", "t4-1", "t4-2"} and "not a real price" in reasons["t4-0"]
    assert offer_source.market_offers(None, None, **facts) == []


@pytest.mark.parametrize("cloud", ["AWS", "RunPod", "VastAI"])
def test_a_config_round_trips_through_its_non_default_fields(cloud):
    # A driver hands its config to another process as `model_dump(exclude_defaults=True)` (the leak
    # matrix's drivers, a keeper): a value the user set must survive, even one that is another
    # cloud's default (AWS's login user is "ubuntu"; a simulated AWS machine's is "root").
    cls = getattr(sky, cloud)
    for user in ("root", "ubuntu", "ec2-user"):
        config = cls(ssh_user=user)
        assert cls(**config.model_dump(exclude_defaults=True)).ssh_user == user
    assert cls.model_fields["ssh_user"].default == cls().ssh_user
