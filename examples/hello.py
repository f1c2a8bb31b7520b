"""The main demo: a 3-node Ray pool on this machine, every way of sending work to it.

Run:  python examples/hello.py     (no cloud account needed)
"""

import os
import socket

import ray

import skyward_ray as sky


@sky.function
def square(x: int) -> int:
    return x * x


@sky.function
def where() -> dict:
    info = sky.instance_info()
    return {"node": info.node, "of": info.total_nodes, "ip": info.ip, "pid": os.getpid()}


@sky.function
def my_part(data: list[int]) -> list[int]:
    return list(sky.shard(data))


@ray.remote
def existing_ray_code() -> str:
    return f"plain @ray.remote ran on {ray.util.get_node_ip_address()} ({socket.gethostname()})"


def main() -> None:
    print(sky.plan(nodes=3))
    with sky.Compute(nodes=3) as pool:
        print("nodes:", [(n.index, n.ip) for n in pool.nodes])
        print("square(7) >> pool        =", square(7) >> pool)
        print("where() @ pool           =", where() @ pool)
        print("(square(2) & square(3))  =", (square(2) & square(3)) >> pool)
        total = sum(sky.gather(*[square(i) for i in range(100)]) >> pool)
        print("sum of 100 squares       =", total)
        future = square(5) > pool
        print("future.result()          =", future.result(timeout=60))
        print("pool.map(square, 0..19)  =", pool.map(square, range(20)))
        print("shards of range(10)      =", my_part(list(range(10))) @ pool)
        print(ray.get(existing_ray_code.remote()))
        print(f"cost so far: ${pool.cost:.2f} (local is free)")
    print("pool gone: every node process has ended")


if __name__ == "__main__":
    main()
