"""`skyward-ray yaml` / `skyward-ray up --ray-yaml`: a cluster config `ray up` takes, on skyward's node providers.

Checked with Ray's own config handling (`prepare_config`, then the JSON-schema `validate_config`
that `ray up` runs), with no cloud and nothing provisioned.
"""

from __future__ import annotations

import importlib

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.node_provider import NodeProvider
from typer.testing import CliRunner

from skyward_ray.cli import app
from skyward_ray.cluster import pool_state


@pytest.mark.parametrize("args", [
    ["yaml", "sky-yamlaws", "-p", "aws", "-a", "T4", "-n", "3", "--max-lifetime", "2h", "--region", "us-east-1"],
    ["up", "sky-yamllocal", "-p", "local", "-n", "2", "--max-lifetime", "none"],
])
def test_the_yaml_is_a_ray_cluster_config_on_skywards_node_providers(args, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret-0123456789")
    path = tmp_path / "cluster.yaml"
    flag = "--out" if args[0] == "yaml" else "--ray-yaml"
    result = CliRunner().invoke(app, [*args, flag, str(path)])
    assert result.exit_code == 0, result.output
    assert f"`ray up {path}` starts it" in result.output
    text = path.read_text()
    assert "not-a-real-secret" not in text, "no credential in the YAML"
    config = yaml.safe_load(text)

    provider = config["provider"]
    assert provider["type"] == "external"
    module, _, cls = provider["module"].rpartition(".")
    assert issubclass(getattr(importlib.import_module(module), cls), NodeProvider)
    assert config["head_node_type"] in config["available_node_types"]
    nodes = int(args[args.index("-n") + 1])
    assert config["max_workers"] == nodes - 1
    lifetime = provider["cluster"]["boot_deadline"]
    if "2h" in args:  # a `ray up` cluster has no keeper: its head ends its machine at the max lifetime
        assert lifetime == provider["cluster"]["first_heartbeat_grace"] == 7200
        assert provider["cluster"]["market"] in ("spot", "on-demand") and provider["cluster"]["instance_type"]
    else:
        assert lifetime > 10 * 3600 * 24 * 300

    prepared = prepare_config(config)  # what `ray up` does before anything else
    validate_config(prepared)
    assert not list((pool_state.runtime_root() / "pools").glob("sky-yaml*")), "nothing was brought up"
