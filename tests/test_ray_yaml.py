"""`skyward-ray yaml` / `skyward-ray up --ray-yaml`: a cluster config `ray up` takes, on skyward's node providers.

Checked with Ray's own config handling (`prepare_config`, then the JSON-schema `validate_config`
that `ray up` runs), with no cloud and nothing provisioned.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import stat
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.commands import _bootstrap_config
from ray.autoscaler._private.providers import _get_node_provider
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.node_provider import NodeProvider
from typer.testing import CliRunner

from skyward_ray.cli import app
from skyward_ray.cluster import pool_state
from skyward_ray.errors import SpecError


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


def test_the_token_is_in_a_0600_file_never_in_the_config_ray_up_caches_world_readable(tmp_path, monkeypatch):
    """`ray up` writes the config `bootstrap_config` returns to /tmp/ray-config-<hash> (mode 0644): the
    cluster's token must not be in it. The YAML names a 0600 file; the node provider reads the token there."""
    monkeypatch.setenv("SKYWARD_KEY_DIR", str(tmp_path / "keys"))
    path = tmp_path / "cluster.yaml"
    result = CliRunner().invoke(app, ["yaml", "sky-yamltoken", "-p", "local", "-n", "2", "--out", str(path)])
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(path.read_text())
    token_path = Path(config["provider"]["auth_token_file"])
    assert token_path == tmp_path / "keys" / "sky-yamltoken" / "ray_token" and not token_path.exists()
    assert not config["provider"]["cluster"]["auth_token"], "no token in the YAML"

    resolved = _bootstrap_config(prepare_config(config), no_config_cache=False)  # exactly what `ray up` does: it caches this
    cache = Path(resolved["provider"]["_config_cache_path"])
    provider = None
    try:
        token = token_path.read_text().strip()
        assert re.fullmatch(r"[0-9a-f]{64}", token), "a fresh 256-bit token was made"
        assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(token_path.parent.stat().st_mode) == 0o700
        assert token not in cache.read_text() and token not in json.dumps(resolved), "no token in Ray's cache file"
        assert resolved["provider"]["auth_token_file"] == str(token_path) and not resolved["provider"]["cluster"]["auth_token"]
        provider = _get_node_provider(resolved["provider"], resolved["cluster_name"], use_cache=False)  # as Ray makes it
        assert provider.params.auth_token == token, "the node provider still gets the token"
        again = type(provider).bootstrap_config(copy.deepcopy(resolved))  # bootstrapped again: the same token
        assert token_path.read_text().strip() == token and token not in json.dumps(again)
        token_path.chmod(0o644)
        with pytest.raises(SpecError, match="mode 0600"):  # a token others can read is refused, not used
            _get_node_provider(resolved["provider"], resolved["cluster_name"], use_cache=False)
        token_path.chmod(0o600)
    finally:
        if provider is not None:
            provider.cleanup_cluster_resources()
        cache.unlink(missing_ok=True)
    assert not token_path.exists(), "the token file goes with the cluster"
