"""A small user project written to a temp directory, outside this repository and off every node's
path, as a cloud node would see it: `jobs/` (a package with a submodule, an exception, a dataclass,
a pydantic model, `@sky.function`s, a `@ray.remote` function and actor, a Tune trainable) and
`textutil.py` (a single-file module `jobs` imports). Also junk that must never ship: a virtualenv
inside the package, `__pycache__`, `build/`, `*.egg-info`, `.git`.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

JOBS_INIT = '''
import dataclasses
import os
import sys

import pydantic
import ray

import skyward_ray as sky
import textutil
from jobs.maths import double


class JobError(Exception):
    """The user's own error type."""


@dataclasses.dataclass
class Result:
    value: int
    node: int


class Summary(pydantic.BaseModel):
    total: int
    label: str


def helper(x: int) -> int:
    return double(x) + 1


@sky.function
def run(x: int) -> Result:
    return Result(helper(x), sky.instance_info().node)


@sky.function
def summary(xs: list[int]) -> Summary:
    return Summary(total=sum(xs), label=textutil.shout("done"))


@sky.function
def fail(message: str) -> None:
    raise JobError(message)


@sky.function
def apply(fn, x):
    return fn(x)


@sky.function
def where_is_my_code() -> dict:
    # this function itself travels by value (the module's name now holds the sky.function), so
    # ask the module the node imports
    import importlib

    here = os.path.dirname(os.path.abspath(importlib.import_module("jobs").__file__))
    return {"jobs": here, "cwd": os.getcwd(), "path": list(sys.path),
            "venv_shipped": os.path.exists(os.path.join(here, ".venv")),
            "pycache_shipped": any(os.path.exists(os.path.join(here, d)) for d in ("build", "jobs.egg-info")),
            "files": sorted(os.listdir(here))}


@ray.remote
def remote_square(x: int) -> int:
    return double(x) * x // 2


@ray.remote
class Counter:
    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int) -> Result:
        self.count += n
        return Result(self.count, -1)


def trainable(config: dict) -> None:
    from ray import tune

    node = ray.get_runtime_context().get_node_id()
    for step in range(1, 4):
        tune.report({"score": config["x"] * step, "node": node, "marker": textutil.shout("t")})
'''

FILES = {
    "jobs/__init__.py": JOBS_INIT,
    "jobs/maths.py": "def double(x: int) -> int:\n    return 2 * x\n",
    "textutil.py": "def shout(text: str) -> str:\n    return text.upper() + '!'\n",
    "jobs/.venv/pyvenv.cfg": "home = /usr/bin\n",
    "jobs/.venv/lib/big.py": "# a virtualenv inside the package: never shipped\n",
    "jobs/__pycache__/junk.cpython-311.pyc": "x",
    "jobs/build/lib/jobs.py": "# build output\n",
    "jobs/jobs.egg-info/PKG-INFO": "Name: jobs\n",
    "jobs/.git/HEAD": "ref: refs/heads/main\n",
}


def write_user_project(root: Path) -> Path:
    """Write the project below `root/code` and return that directory (what goes on PYTHONPATH)."""
    code = root / "code"
    for relative, text in FILES.items():
        path = code / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return code
