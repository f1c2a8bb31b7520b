"""Bad input gets a clear error naming the field and the fix, before anything is started."""

from __future__ import annotations

import sys

import pytest

import skyward_ray as sky
from tests.conftest import pool_processes


@sky.function
def square(x: int) -> int:
    return x * x


def plain(x: int) -> int:
    return x


@pytest.fixture(autouse=True)
def nothing_starts():
    # this run's pools only: other test runs on the machine start (and their watchdogs spawn) processes meanwhile
    before = {p.pid for p in pool_processes()}
    yield
    assert [p for p in pool_processes() if p.pid not in before] == []


@pytest.mark.parametrize("nodes", [0, -2])
def test_nodes_must_be_at_least_one(nodes):
    with pytest.raises(sky.SpecError, match=rf"nodes={nodes}: a pool needs at least one node"):
        sky.Compute(nodes=nodes)


def test_nodes_must_be_a_number():
    with pytest.raises(sky.SpecError, match="nodes='3': pass a whole number"):
        sky.Compute(nodes="3")  # type: ignore[arg-type]
    with pytest.raises(sky.SpecError, match="min=3 is more than desired=2; lower min"):
        sky.Nodes(2, min=3)


def test_a_fraction_of_a_cpu_per_local_node_is_refused_before_any_boot():
    # `ray start --num-cpus` takes a whole number: 0.5 used to fail in every node's boot instead
    with pytest.raises(sky.SpecError, match=r"cpus_per_node=0.5: a node advertises a whole number.*Fix: cpus_per_node=1"):
        sky.Local(cpus_per_node=0.5)
    assert sky.Local(cpus_per_node=3).cpus_per_node == 3


def test_elastic_pool_bounds_are_checked():
    with pytest.raises(sky.SpecError, match="max=2 is less than desired=3; raise max"):
        sky.Compute(nodes=sky.Nodes(3, max=2))
    with pytest.raises(sky.SpecError, match="Nodes.idle_timeout: .*Fix: seconds"):
        sky.Compute(nodes=sky.Nodes(min=1, max=3, idle_timeout=-1))


def test_unknown_accelerator_lists_the_closest_names():
    with pytest.raises(sky.UnknownAcceleratorError) as caught:
        sky.Compute(accelerator="H1000:8")
    assert "H100" in str(caught.value)
    with pytest.raises(sky.UnknownAcceleratorError, match="A100"):
        sky.Compute(accelerator="A10O")


def test_sky_function_needs_a_function():
    with pytest.raises(sky.SpecError, match="sky.function decorates a function"):
        sky.function(5)
    with pytest.raises(sky.SpecError, match="max_retries"):
        sky.function(max_retries=-5)
    with pytest.raises(sky.SpecError, match="timeout"):
        sky.function(timeout=0)


def test_dispatching_a_plain_value_or_an_undecorated_function():
    pool = sky.Compute(nodes=1)  # never entered: the operator checks its left side first
    with pytest.raises(TypeError, match="got a plain int"):
        5 >> pool
    with pytest.raises(TypeError, match="plain is not a @sky.function: decorate it"):
        plain >> pool
    with pytest.raises(TypeError, match="plain is not a @sky.function"):
        plain @ pool
    with pytest.raises(TypeError, match="got a plain str"):
        "x" > pool
    with pytest.raises(TypeError, match=r"square is a @sky.function but was not called: write square\(...\) >> pool"):
        square >> pool
    with pytest.raises(TypeError, match="square was not called"):
        sky.gather(square)
    with pytest.raises(TypeError, match="pool.map takes a @sky.function"):
        pool.map(5, [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="right side of `>>` must be a sky.Compute pool"):
        square(1) >> 5


def test_dispatching_to_a_pool_never_entered():
    with pytest.raises(sky.PoolClosedError, match="has not been entered"):
        square(1) >> sky.Compute(nodes=1)


def test_instance_info_outside_a_task():
    with pytest.raises(sky.NotInTaskError, match="only inside a task"):
        sky.instance_info()
    with pytest.raises(sky.NotInTaskError):
        sky.shard([1, 2, 3])


def test_image_with_an_invalid_pip_spec():
    with pytest.raises(sky.SpecError, match=r"Image.pip.*'numpy>>=2' is not a valid pip requirement"):
        sky.Image(pip=["numpy>>=2"])
    with pytest.raises(sky.SpecError, match="Image.env"):
        sky.Image(env={"1BAD": "x"})
    with pytest.raises(sky.SpecError, match="Image.python"):
        sky.Image(python="three")


def test_image_the_local_provider_cannot_honour():
    with pytest.raises(sky.SpecError, match=r"Image.apt=\['ffmpeg'\]: sky.Local\(\) nodes run on this machine"):
        sky.Compute(image=sky.Image(apt=["ffmpeg"]))
    with pytest.raises(sky.SpecError, match="needs its nodes on its own Python"):
        sky.Compute(image=sky.Image(python="3.2"))
    here = "%d.%d" % sys.version_info[:2]
    with pytest.raises(sky.SpecError, match=r"Image.python='3.1'"):  # a prefix of 3.11 is not 3.11
        sky.Compute(image=sky.Image(python=here[:-1]))
    assert sky.Compute(image=sky.Image(python=here)).image.python == here  # nothing started before `with`
    with pytest.raises(sky.SpecError, match="image="):
        sky.Compute(image={"pip": ["numpy"]})  # type: ignore[arg-type]


def test_bad_function_resources():
    with pytest.raises(sky.SpecError, match="resources"):
        sky.function(resources={"GPU": -1})


def test_shard_arguments_outside_a_task():
    assert list(sky.shard(list(range(7)), node=1, total_nodes=3)) == [3, 4]
    with pytest.raises(ValueError, match="node=3 must be in 0..total_nodes-1"):
        sky.shard([1], node=3, total_nodes=3)



@sky.function
def scaled(x: int, /, factor: int = 2, *, offset: int = 0) -> int:
    return x * factor + offset


def test_a_call_that_does_not_fit_the_signature_fails_at_the_call():
    with pytest.raises(TypeError, match=r"square\(x\): too many positional arguments"):
        square(1, 2, 3)
    with pytest.raises(TypeError, match=r"square.*missing a required argument: 'x'"):
        square()
    with pytest.raises(TypeError, match=r"square.*unexpected keyword argument 'y'"):
        square(1, y=2)
    with pytest.raises(TypeError, match=r"scaled\(x, /, factor=2, \*, offset=0\): .*positional"):
        scaled(x=1)  # positional-only
    with pytest.raises(TypeError, match="scaled.*too many positional"):
        scaled(1, 2, 3)  # offset is keyword-only
    pending = scaled(1, 3, offset=4)  # a call that fits is still only pending
    assert (pending.args, pending.kwargs) == ((1, 3), {"offset": 4})
    assert square(x=5).kwargs == {"x": 5}
