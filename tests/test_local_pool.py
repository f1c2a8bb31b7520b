"""A real 3-node local pool, shared by the tests of this module: every way of sending work to it."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
import time
from pathlib import Path

import psutil
import pytest
import ray

import skyward_ray as sky
from node_providers.local.process_host import processes_with_marker


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


@sky.function
def meet(directory: str, name: str, parties: int) -> str:
    """Wait (bounded) until `parties` calls have started: they must be running at once, on different nodes."""
    Path(directory, name).touch()
    deadline = time.monotonic() + 60
    while len(list(Path(directory).iterdir())) < parties and time.monotonic() < deadline:
        time.sleep(0.05)
    return ray.get_runtime_context().get_node_id()


@sky.function(max_retries=0)
def long_task(directory: str, name: str) -> str:
    """Marks its start, then runs until cancelled (marking that) or for 60 s."""
    Path(directory, f"{name}.started").write_text(str(os.getpid()))
    try:
        for _ in range(600):  # Python code: the interrupt lands between two short sleeps
            time.sleep(0.1)
    except KeyboardInterrupt:  # what ray.cancel raises inside a running task
        Path(directory, f"{name}.interrupted").touch()
        raise
    Path(directory, f"{name}.finished").touch()
    return "finished"


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear within {timeout:g}s"
        time.sleep(0.05)


@ray.remote
def plain_ray(x: int) -> tuple[int, str]:
    return x + 1, ray.get_runtime_context().get_node_id()


@pytest.fixture(scope="module")
def pool():
    with sky.Compute(nodes=3) as pool:
        yield pool


def test_one_call_returns_its_value(pool):
    assert square(7) >> pool == 49


@pytest.mark.parametrize("operator", [">>", "@", ">"])
def test_an_uncalled_function_names_the_operator_in_its_error(pool, operator):
    with pytest.raises(TypeError, match=rf"write square\(\.\.\.\) {operator} pool"):
        if operator == ">>":
            square >> pool
        elif operator == "@":
            square @ pool
        else:
            square > pool


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


@pytest.mark.parametrize("operator", [">>", ">"])
def test_a_group_spreads_over_the_nodes_whichever_operator_sends_it(pool, tmp_path: Path, operator):
    group = sky.gather(*[meet(str(tmp_path), f"p{i}", 3) for i in range(3)])
    used = group >> pool if operator == ">>" else (group > pool).result(timeout=120)
    assert len(set(used)) == 3  # all three were running at once, one per node


def test_greater_than_gives_a_future(pool):
    future = square(5) > pool
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=60) == 25
    group_future = sky.gather(square(1), square(2)) > pool
    assert group_future.result(timeout=60) == [1, 4]
    futures = [square(i) > pool for i in range(10)]
    done, _ = concurrent.futures.wait(futures, timeout=60)
    assert len(done) == 10
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=60)) == [i * i for i in range(10)]


def test_a_returned_exception_is_a_value_not_a_failure(pool):
    @sky.function
    def give_error(message: str) -> ValueError:
        return ValueError(message)

    [returned] = sky.gather(give_error("kept")) >> pool
    assert isinstance(returned, ValueError) and str(returned) == "kept"
    assert str((give_error("also") > pool).result(timeout=60)) == "also"


def test_futures_need_no_thread_each(pool):
    before = threading.active_count()
    futures = [square(i) > pool for i in range(200)]
    during = threading.active_count()
    assert [f.result(timeout=120) for f in futures] == [i * i for i in range(200)]
    assert during - before < 10, f"{during - before} threads for 200 futures"


@sky.function(max_retries=0)
def stuck_in_c(directory: str) -> None:
    """One long call into C: a Python-level interrupt cannot land until it returns."""
    Path(directory, "stuck.started").write_text(str(os.getpid()))
    time.sleep(60)
    Path(directory, "stuck.finished").touch()


def test_cancel_ends_a_task_stuck_in_a_long_c_call(pool, tmp_path: Path):
    future = stuck_in_c(str(tmp_path)) > pool
    wait_for(tmp_path / "stuck.started")
    pid = int((tmp_path / "stuck.started").read_text())
    assert future.cancel() is True
    deadline = time.monotonic() + 30
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the worker running the cancelled task was not ended"
        time.sleep(0.1)
    assert not (tmp_path / "stuck.finished").exists()


def test_cancel_stops_the_running_task(pool, tmp_path: Path):
    future = long_task(str(tmp_path), "solo") > pool
    wait_for(tmp_path / "solo.started")
    assert future.cancel() is True and future.cancelled()
    wait_for(tmp_path / "solo.interrupted", timeout=30)
    assert not (tmp_path / "solo.finished").exists()
    assert square(4) >> pool == 16


@pytest.mark.parametrize("operator", [">>", ">"])
def test_a_failure_in_a_group_cancels_the_rest_and_raises_the_first_cause(pool, tmp_path: Path, operator):
    @sky.function(max_retries=0)
    def fail_when_started(directory: str) -> None:
        wait_for(Path(directory, "other.started"))
        raise ValueError("first cause")

    group = sky.gather(long_task(str(tmp_path), "other"), fail_when_started(str(tmp_path)))
    started = time.monotonic()
    with pytest.raises(ValueError, match="first cause"):
        group >> pool if operator == ">>" else (group > pool).result(timeout=120)
    assert time.monotonic() - started < 50, "the group did not wait for its slowest member"
    wait_for(tmp_path / "other.interrupted", timeout=30)


def test_a_timeout_in_a_group_cancels_the_rest(pool, tmp_path: Path):
    with pytest.raises(sky.FunctionTimeoutError, match="sleepy ran longer than its timeout=1.5s"):
        sky.gather(long_task(str(tmp_path), "peer"), sleepy(30)) >> pool
    wait_for(tmp_path / "peer.interrupted", timeout=30)


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
    future = sleepy(30) > pool
    # the task's own timeout, not the wait's: the wait below would allow 60 s
    with pytest.raises(sky.FunctionTimeoutError, match="timeout=1.5s"):
        future.result(timeout=60)
    assert time.monotonic() - started < 30


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
    assert pool.cost == 0.0  # the local machine is free; a priced pool's cost is tested on simulated AWS


@sky.function
def say_hello() -> None:
    print("hello from node " + ("zero", "one", "two")[sky.instance_info().node], flush=True)


def test_what_a_call_prints_on_any_node_reaches_the_driver_through_one_log_monitor(pool, capfd):
    say_hello() @ pool
    seen, deadline = "", time.monotonic() + 30
    while not all(f"hello from node {n}" in seen for n in ("zero", "one", "two")) and time.monotonic() < deadline:
        time.sleep(0.2)
        seen += "".join(capfd.readouterr())
    assert all(f"hello from node {n}" in seen for n in ("zero", "one", "two")), seen[-2000:]
    commands = []
    for process in processes_with_marker(pool.name + "-*"):
        with contextlib.suppress(psutil.NoSuchProcess):
            commands.append(" ".join(process.cmdline()))
    assert len([c for c in commands if "log_monitor.py" in c]) == 1, "one log monitor reads every node's logs"


def _exported_functions() -> int:
    worker = ray._private.worker.global_worker
    return len(worker.gcs_client.internal_kv_keys(b"RemoteFunction", b"fun"))


def test_function_is_exported_once(pool):
    @sky.function
    def cube(x: int) -> int:
        return x ** 3

    before = _exported_functions()
    assert cube(2) >> pool == 8
    after_first = _exported_functions()
    assert after_first == before + 1
    assert sky.gather(*[cube(i) for i in range(5)]) >> pool == [i ** 3 for i in range(5)]
    assert (cube(3) > pool).result(timeout=60) == 27 and len(cube(1) @ pool) == 3
    assert _exported_functions() == after_first, "later calls reuse the exported function"


def test_the_driver_holds_the_pools_own_token_while_it_is_open(pool):
    assert os.environ["RAY_AUTH_MODE"] == "token"
    token = os.environ["RAY_AUTH_TOKEN"]
    head = pool.nodes[0].instance_id
    booted_with = {proc.environ().get("RAY_AUTH_TOKEN") for proc in processes_with_marker(head)}
    assert token in booted_with, "the driver holds the very token the nodes were booted with (their environment)"
    assert token == pool._cluster.provider.params.auth_token and len(set(token)) > 8


@sky.function
def rendezvous(port: int) -> dict:
    """What torch.distributed's env:// rendezvous does, without torch: rank 0 listens on
    MASTER_ADDR:MASTER_PORT, every other rank connects to it and is told the world size."""
    import socket

    env = sky.instance_info().distributed_env(master_port=port)
    address, world = (env["MASTER_ADDR"], int(env["MASTER_PORT"])), int(env["WORLD_SIZE"])
    if env["RANK"] == "0":
        with socket.create_server(address) as server:
            server.settimeout(60)
            for _ in range(world - 1):
                peer, _ = server.accept()
                with peer:
                    peer.sendall(str(world).encode())
        return {**env, "told": str(world)}
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection(address, timeout=5) as conn:
                return {**env, "told": conn.recv(16).decode()}
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_distributed_env_gives_every_node_a_rank_and_a_reachable_master(pool):
    import random

    answers = rendezvous(random.randint(30000, 40000)) @ pool
    head = pool.nodes[0].ip
    assert [a["RANK"] for a in answers] == ["0", "1", "2"] and {a["WORLD_SIZE"] for a in answers} == {"3"}
    assert {a["MASTER_ADDR"] for a in answers} == {head} and {a["told"] for a in answers} == {"3"}
    assert [a["NODE_RANK"] for a in answers] == ["0", "1", "2"] and {a["LOCAL_RANK"] for a in answers} == {"0"}


def test_distributed_env_with_one_process_per_gpu_numbers_ranks_node_major():
    from skyward_ray.api.runtime import InstanceInfo

    info = InstanceInfo(node=1, total_nodes=2, is_head=False, head_ip="10.0.0.5", ip="10.0.0.6", instance_id="i-1",
                        ray_node_id="n", provider="aws", accelerator="H100", accelerator_count=8, spot=False,
                        cluster="sky-x")
    env = info.distributed_env(master_port=29400, processes_per_node=8, local_rank=3)
    assert env == {"MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29400", "WORLD_SIZE": "16", "RANK": "11",
                   "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8", "NODE_RANK": "1"}
    with pytest.raises(ValueError, match="local_rank=8 must be in 0..processes_per_node-1"):
        info.distributed_env(processes_per_node=8, local_rank=8)
