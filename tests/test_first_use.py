"""What a new user meets first: a cloud without its extra, `help(sky.Compute)`, `dir(sky)`.

A missing cloud SDK is simulated in a subprocess the honest way: `sys.modules[<sdk>] = None`
before skyward_ray is imported makes `import <sdk>` fail exactly as if it were not installed.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest

import skyward_ray as sky
from tests.conftest import REPO

_WITHOUT_SDK = """
import sys
sys.modules[{module!r}] = None
import skyward_ray as sky
try:
    with sky.Compute(provider={provider!r}, nodes=1):
        pass
except sky.ProviderUnavailableError as error:
    print("REFUSED:", error)
"""


@pytest.mark.parametrize("provider, module", [("aws", "boto3"), ("runpod", "runpod"), ("vastai", "vastai")])
def test_a_cloud_without_its_extra_names_the_pip_command_before_anything(tmp_path, provider, module):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "RUNPOD_", "VAST_", "SKYWARD_QUIET"))}
    env["HOME"] = str(tmp_path)  # no cloud credentials or state of the user's: nothing can be reached
    done = subprocess.run([sys.executable, "-c", _WITHOUT_SDK.format(module=module, provider=provider)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    # the refusal is the first and only thing said: no "starting 1 node(s)", no plan, no traceback
    assert output.startswith("REFUSED: "), output
    assert f"pip install 'skyward-ray[{provider}]'" in output
    assert f"provider={provider!r}" in output and module in output
    assert output.count("\n") == 1, output


def test_compute_signature_is_typed_and_every_argument_documented():
    signature = inspect.signature(sky.Compute)
    for name in ("provider", "accelerator", "nodes", "allocation"):
        assert "Any" not in str(signature.parameters[name].annotation), name
    assert "ProviderConfig" in str(signature.parameters["provider"].annotation)
    assert "Accelerator" in str(signature.parameters["accelerator"].annotation)
    doc = inspect.getdoc(sky.Compute) or ""
    for name in signature.parameters:
        assert f"{name}:" in doc, f"sky.Compute's docstring does not document {name}"


def test_the_namespace_shows_the_public_api_only():
    names = dir(sky)
    for leaked in ("Any", "annotations", "importlib"):
        assert leaked not in names
    assert set(sky.__all__) <= set(names)  # the lazy names too, before their first use
    assert sky.shard.__name__ == "shard" and sky.Compute.__name__ == "Compute"  # lazy loading still works
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        sky.nothing_here  # noqa: B018
