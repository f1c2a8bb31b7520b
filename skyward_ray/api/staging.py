"""What a pool's Ray job carries to the nodes: the user's code, staged, and the job's runtime_env.

One place for both kinds of driver: `sky.Compute` (this process launched the pool) and
`sky.attach` (it joins a detached pool). Each finds the user's modules (`user_code.collect`, size
checked before anything is provisioned), stages them in a directory of its own for the job's
`py_modules`, registers by value those found but excluded, and removes the directory when it
leaves the pool. What gets shipped by reference is the pool's (`StagedCode.shipped`, handed to its
`dispatch.Dispatcher`), not the process's.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from skyward_ray.api.user_code import OWN_PACKAGES, UserCode, collect
from skyward_ray.planning.image import Image


class StagedCode:
    """The user's code one pool ships: found now, staged by `stage()`, gone at `release()`."""

    def __init__(self, code: UserCode) -> None:
        self.code = code
        self.modules: list[str] = []  # the staged code, as py_modules entries
        self._directory: str | None = None

    @classmethod
    def find(cls, image: Image) -> "StagedCode":
        """The user's modules now plus `image.includes`; `SpecError` when too big (nothing started)."""
        return cls(collect(image))

    @classmethod
    def nothing(cls) -> "StagedCode":
        """No code at all (a keeper: it runs no task; its clients ship their own)."""
        return cls(UserCode())

    @property
    def shipped(self) -> frozenset[str]:
        """Top-level module names shipped by reference (the others of the user's go by value)."""
        return frozenset(self.code.roots)

    def stage(self) -> list[str]:
        """Copy the files to a directory of this pool's own and return the `py_modules` entries;
        register by value the user's modules that were found but excluded (a node cannot import them)."""
        if self.code.files and self._directory is None:
            self._directory = tempfile.mkdtemp(prefix="skyward-code-")
            self.modules = self.code.stage(Path(self._directory))
        if self.code.excluded:
            from ray import cloudpickle  # lazy: Ray

            for name in self.code.excluded:
                module = sys.modules.get(name)
                if module is not None:
                    cloudpickle.register_pickle_by_value(module)
        return self.modules

    def release(self) -> None:
        """The pool is left: remove the staged copy (registrations by value stay, as cloudpickle's do)."""
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None


def job_runtime_env(image: Image, nodes_share_driver_python: bool, code_modules: list[str]) -> dict[str, Any]:
    """The Ray job's runtime_env for a driver of a pool (this process's own pool, or an attached one):
    the Image's environment, the user's staged modules, and where nodes do not share this interpreter,
    this very copy of skyward_ray (tasks import it). Nothing it need not hold: a job whose runtime_env
    sets anything cannot use the workers each node started ahead, so its first call waits ~0.6 s for
    a fresh one (the pool's own facts, such as its size, come from each node's boot environment)."""
    runtime_env: dict[str, Any] = {"env_vars": dict(image.env)} if image.env else {}
    if nodes_share_driver_python and image.pip:
        runtime_env["pip"] = list(image.pip)  # nodes share this interpreter: Ray's per-node virtualenv
    py_modules = list(code_modules)  # the user's own code, staged (already without excludes)
    if not nodes_share_driver_python:
        # Tasks import skyward_ray (instance_info, shard, the operators' wrappers): the nodes get this
        # very copy through Ray's job runtime_env, whatever is installed there.
        py_modules += shipped_packages()
        runtime_env["excludes"] = ["__pycache__", "*.pyc"]
    if py_modules:
        runtime_env["py_modules"] = py_modules
    return runtime_env


def shipped_packages() -> list[str]:
    """The directories of the packages `import skyward_ray` needs on a node (it imports the provider
    configs and the catalog)."""
    return [os.path.dirname(importlib.import_module(name).__file__ or "") for name in sorted(OWN_PACKAGES)]
