"""The provider conformance suite's seam: what a cloud's test stand-in must expose.

Every cloud that ships (local, Container, AWS, RunPod, Vast.ai) passes the same suite,
`tests/test_conformance.py`, driven through its real SDK against its local stand-in for the
network peer. A cloud joins the suite with one module `tests/conformance/harness_<name>.py`
holding a context manager `harness()` that yields a `Harness`; `HARNESSES` below lists them.

The harness only observes and perturbs the stand-in (the cloud's side of the wire): the code
under test is always skyward_ray's own node provider and launcher, unpatched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from skyward_ray.cluster.contract import ClusterParams
from skyward_ray.planning.providers import ProviderConfig

# cloud name → "module:function" of a context manager yielding a Harness
HARNESSES: dict[str, str] = {
    "local": "tests.conformance.harness_local:harness",
    "container": "tests.conformance.harness_container:harness",
    "aws": "tests.conformance.harness_aws:harness",
    "runpod": "tests.conformance.harness_runpod:harness",
    "vastai": "tests.conformance.harness_vastai:harness",
}


@dataclass
class Harness:
    """One cloud and its stand-in, as the conformance suite sees them."""

    name: str
    config: ProviderConfig
    """The provider config a user would pass as `provider=` (pointing at the stand-in)."""
    params: Callable[..., ClusterParams]
    """`params(nodes=2)`: cluster params for a cheap offer of this cloud (instance type, market, region)."""
    accelerator: str | None
    """What to ask `sky.Compute(accelerator=...)` for in pool-level tests (None: CPU-only)."""
    billable: Callable[[], dict[str, list[str]]]
    """Everything at the cloud that bills or holds per-cluster state, by kind ("instances",
    "security_groups", "key_pairs", "pods", "volumes", "processes", ...), skyward's or not: after a
    teardown every list that skyward touched must be empty of its resources."""
    boot_payloads: Callable[[], list[str]]
    """Every payload the cloud received to start machines (user data, container command and env,
    onstart script), decoded to text."""
    secrets: list[str]
    """The user's credentials as the stand-in knows them: none may appear in a boot payload."""
    interrupt: Callable[[str], None] | None
    """The cloud takes one machine away by instance id (spot reclaim, pod EXITED, instance gone)."""
    fail_capacity: Callable[[str], AbstractContextManager[Any]] | None
    """`with fail_capacity(instance_type):` every launch of that type gets the cloud's real
    capacity error. None where the cloud has a single offer (the local machine)."""
    foreign_machine: Callable[[], str] | None
    """Make a machine skyward did not create (another tool's, another user's); returns its id."""
    compute_settings: dict[str, Any] = field(default_factory=dict)
    """Extra keywords for `sky.Compute` in pool-level tests (e.g. a boot timeout)."""
    pool_nodes: int = 2
    """Nodes of the pool-level test: 1 for a cloud whose machines share no private network (its
    offers serve one-node pools only, and losing that node loses the pool)."""
    bare_machines: bool = False
    """Each machine has its own root filesystem from the cloud's image (`tests.simhost`, bare): none
    of the driver's files, its interpreter or its virtualenv is visible on a node."""
    image_has_python: bool = True
    """The cloud's image has a system `python3` (Vast.ai's `ubuntu:22.04` has none: the boot installs one)."""
    explain: Callable[[str], str] | None = None
    """What the stand-in knows of one machine (its state, its log's end, kept after the cloud forgets
    the machine): why a machine is left where none should be, or why one ended during a launch."""


def open_harness(name: str) -> AbstractContextManager[Harness]:
    import importlib

    module, _, function = HARNESSES[name].partition(":")
    factory: Callable[[], Iterator[Harness]] = getattr(importlib.import_module(module), function)
    return factory()  # type: ignore[return-value]
