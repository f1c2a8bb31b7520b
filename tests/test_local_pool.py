"""A real 3-node local pool, shared by the tests of this module: every way of sending work to it."""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import pytest
import ray

import skyward_ray as sky


@sky.function
def square(x: int) -> int:
    return x * x


@sky.function
def where() -> dict:
    info = sky.instance_info()
    return {"node": info.node, "total": info.total_nodes, "ray_node_id": ray.get_runtime_context().get_node_id(),
            "is_head": info.is_head, "provider": info.provider, "ip": info.ip, "head_ip": info.head_ip,
            "instance_id": info.instance_id}


@sky.function
def fail(message: str) -> None:
    raise ValueError(message)


class CustomError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"custom failure {code}")
        self.code = code


@sky.function
def fail_custom(code: int) -> None:
    raise CustomError(code)


@sky.function(max_retries=3)
def count_attempts_then_fail(path: str) -> None:
    with open(path, "a") as f:
        f.write("attempt\n")
    raise RuntimeError("user code failed")


@sky.function(timeout=1.5)
def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


@sky.function
def my_shard(data: list[int]) -> list[int]:
    return list(sky.shard(data))


@ray.remote
def plain_ray(x: int) -> tuple[int, str]:
    return x + 1, ray.get_runtime_context().get_node_id()


@pytest.fixture(scope="module")
def pool():
    with sky.Compute(nodes=3) as pool:
        yield pool


def test_one_call_returns_its_value(pool):
    assert square(7) >> pool == 49


def test_every_node_runs_once_in_node_order(pool):
    results = where() @ pool
    assert [r["node"] for r in results] == [0, 1, 2]
    assert len({r["ray_node_id"] for r in results}) == 3
    assert [r["ray_node_id"] for r in results] == [n.ray_node_id for n in pool.nodes]
    assert [r["is_head"] for r in results] == [True, False, False]
    assert {r["total"] for r in results} == {3}
    assert {r["provider"] for r in results} == {"local"}
    assert {r["head_ip"] for r in results} == {pool.nodes[0].ip}
    assert [r["instance_id"] for r in results] == [n.instance_id for n in pool.nodes]


def test_and_group_returns_a_tuple_in_order(pool):
    assert (square(2) & square(3)) >> pool == (4, 9)
    assert (square(1) & square(2) & square(3)) >> pool == (1, 4, 9)


def test_gather_returns_a_list_in_argument_order(pool):
    assert sky.gather(*[square(i) for i in range(100)]) >> pool == [i * i for i in range(100)]


def test_gather_spreads_over_nodes(pool):
    @sky.function
    def node_of(_: int) -> str:
        time.sleep(0.3)
        return ray.get_runtime_context().get_node_id()

    used = set(sky.gather(*[node_of(i) for i in range(9)]) >> pool)
    assert len(used) == 3


def test_greater_than_gives_a_future(pool):
    future = square(5) > pool
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=60) == 25
    group_future = sky.gather(square(1), square(2)) > pool
    assert group_future.result(timeout=60) == [1, 4]


def test_map_keeps_input_order(pool):
    assert pool.map(square, range(20)) == [i * i for i in range(20)]


def test_local_runs_here():
    assert square.local(6) == 36
    assert isinstance(square(6), sky.PendingFunction)


def test_plain_ray_code_runs_on_the_pool(pool):
    node_ids = {n.ray_node_id for n in pool.nodes}
    value, node_id = ray.get(plain_ray.remote(1))
    assert value == 2 and node_id in node_ids
    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    ref = ray.put(list(range(1000)))
    assert ray.get(ref)[-1] == 999


def test_remote_exception_keeps_its_type_and_remote_traceback(pool):
    with pytest.raises(ValueError, match="bad learning rate") as caught:
        fail("bad learning rate") >> pool
    assert type(caught.value) is ValueError
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    assert "Raised on the remote node" in notes and "in fail" in notes
    with pytest.raises(CustomError) as custom:
        sky.gather(square(1), fail_custom(42)) >> pool
    assert custom.value.code == 42


def test_user_errors_are_not_retried(pool, tmp_path: Path):
    attempts = tmp_path / "attempts.txt"
    with pytest.raises(RuntimeError, match="user code failed"):
        count_attempts_then_fail(str(attempts)) >> pool
    assert attempts.read_text().count("attempt") == 1


def test_timeout_cancels_the_call(pool):
    assert sleepy(0.1) >> pool == "woke"
    started = time.monotonic()
    with pytest.raises(sky.FunctionTimeoutError, match="timeout=1.5s"):
        sleepy(30) >> pool
    assert time.monotonic() - started < 10
    with pytest.raises(TimeoutError):
        (sleepy(30) > pool).result(timeout=30)


def test_shard_splits_data_across_nodes(pool):
    parts = my_shard(list(range(10))) @ pool
    assert parts == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_pool_facts(pool):
    assert [n.index for n in pool.nodes] == [0, 1, 2]
    assert len({n.ip for n in pool.nodes}) == 3
    assert all(n.ip.startswith("127.") for n in pool.nodes)
    assert {n.provider for n in pool.nodes} == {"local"}
    assert pool.ray_address.startswith(pool.nodes[0].ip + ":")
    assert pool.plan.chosen.provider == "local"
    assert pool.plan.chosen.price == 0
    assert pool.cost == 0.0


def test_function_is_exported_once(pool):
    first = square.ray_function()
    square(1) >> pool
    assert square.ray_function() is first


def test_the_driver_holds_the_pools_own_token_while_it_is_open(pool):
    assert os.environ["RAY_AUTH_MODE"] == "token"
    assert len(os.environ["RAY_AUTH_TOKEN"]) == 64
