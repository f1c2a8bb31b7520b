"""A bad `sky.Image(pip=...)` is refused on the driver, naming the package, before anything starts.

pip's resolver runs here for the nodes' Python and platform (`skyward_ray.planning.image_resolve`):
a package or version that does not exist, or two pins that conflict, is a `SpecError` in about a
second, instead of a node that ends itself (or Ray's `RuntimeEnvSetupError`) minutes later. A set
that resolved is cached; an index that cannot be reached is a warning, never a refusal.

These ask the package index this machine's pip is configured with; where it cannot be reached the
tests that need its answers are skipped (the offline behaviour has its own test).
"""

from __future__ import annotations

import logging
import os
import time
import warnings

import pytest

import skyward_ray as sky
from skyward_ray.planning.image_resolve import NodePlatform, cache_dir, check_requirements, manylinux_tags
from tests.conftest import pool_processes

MISSING = "no-such-package-skyward-xyz==1.0"
GOOD = "tabulate==0.9.0"  # what the other tests put in Image.pip


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test starts with an empty resolution cache of its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def index_answers():
    """Skip where this machine's pip cannot reach its package index."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_requirements([GOOD], NodePlatform.this_machine())
    if caught:
        pytest.skip(f"the package index does not answer here: {caught[0].message}")


def test_a_missing_package_on_local_is_a_spec_error_naming_it_within_seconds_and_starts_nothing(
        index_answers, capsys, caplog):
    before = {p.pid for p in pool_processes()}
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="skyward_ray"):
        with pytest.raises(sky.SpecError, match="Image.pip") as caught:
            with sky.Compute(provider=sky.Local(), image=sky.Image(pip=[MISSING])):
                pass
    assert time.monotonic() - started < 30
    assert MISSING in str(caught.value) and "No matching distribution" in str(caught.value)
    assert len(str(caught.value).splitlines()) <= 6, "the reason in a few lines, not pip's whole output"
    assert [p for p in pool_processes() if p.pid not in before] == []
    assert "starting" not in capsys.readouterr().err and "starting" not in caplog.text


@pytest.mark.parametrize("platform", [NodePlatform.this_machine(), NodePlatform.linux()], ids=["local", "cloud"])
def test_a_version_that_does_not_exist_and_a_conflict_are_named(index_answers, platform):
    with pytest.raises(sky.SpecError, match=r"'numpy==99\.0'.*cannot be installed") as missing:
        check_requirements(["numpy==99.0"], platform)
    assert "from versions: ..., " in str(missing.value), "pip's list of versions, cut to its newest"
    with pytest.raises(sky.SpecError, match=r"'numpy==2\.1\.0' and 'numpy<2'") as conflict:
        check_requirements([GOOD, "numpy==2.1.0", "numpy<2"], platform)
    assert "conflicting" in str(conflict.value) and GOOD not in str(conflict.value)


def test_a_good_set_resolves_once_then_comes_from_the_cache(index_answers):
    check_requirements([GOOD], NodePlatform.linux())
    [entry] = list(cache_dir().iterdir())
    written = entry.stat().st_mtime_ns
    check_requirements([GOOD], NodePlatform.linux())  # a cache hit writes nothing and runs no pip
    assert entry.stat().st_mtime_ns == written and list(cache_dir().iterdir()) == [entry]
    check_requirements([GOOD], NodePlatform.this_machine())  # another target: its own entry
    assert len(list(cache_dir().iterdir())) == 2


def test_an_empty_image_runs_no_resolve():
    check_requirements([], NodePlatform.linux())
    assert not cache_dir().exists()


def test_an_index_out_of_reach_is_a_warning_not_a_refusal(package_index_unreachable):
    with pytest.warns(UserWarning, match="could not be checked before provisioning"):
        check_requirements([MISSING], NodePlatform.linux())
    assert not cache_dir().exists(), "an unchecked set is not remembered as resolved"


def test_cloud_nodes_are_resolved_for_manylinux_x86_64_up_to_their_glibc():
    tags = NodePlatform.linux().tags
    assert tags[0] == "manylinux_2_35_x86_64" and "manylinux2014_x86_64" in tags and "manylinux_2_17_x86_64" in tags
    assert manylinux_tags("aarch64", "2.31")[0] == "manylinux_2_31_aarch64"
    assert not any(tag.endswith("x86_64") for tag in manylinux_tags("aarch64", "2.31"))


def test_a_refused_pool_prints_no_starting_line(capsys, caplog):
    """The machine's own limit (a cloud's credentials likewise) is checked before "starting" is said."""
    too_many = 2 * (os.cpu_count() or 1) + 1
    before = {p.pid for p in pool_processes()}
    with caplog.at_level(logging.INFO, logger="skyward_ray"):
        with pytest.raises(sky.SpecError, match="more than this machine can run"):
            with sky.Compute(provider=sky.Local(), nodes=too_many, max_pool_nodes=too_many):
                pass
    assert "starting" not in capsys.readouterr().err and "starting" not in caplog.text
    assert [p for p in pool_processes() if p.pid not in before] == []
