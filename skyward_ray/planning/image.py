"""`sky.Image`: what every node has before the first task runs."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import TYPE_CHECKING

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import ConfigDict, Field, field_validator

from skyward_ray import names
from skyward_ray._validation import SpecModel
from skyward_ray.errors import SpecError

if TYPE_CHECKING:
    from skyward_ray.planning.providers import ProviderConfig

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.\-]*(=[A-Za-z0-9.+:~\-]+)?$")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


_HINTS = {
    "pip": 'a list of pip requirements, e.g. ["numpy>=2", "torch==2.4.1"]',
    "apt": 'a list of Debian package names, e.g. ["ffmpeg"]',
    "env": 'a dict of environment variables, e.g. {"HF_HOME": "/data/hf"}',
    "python": 'a Python version such as "3.11"',
    "includes": 'a list of paths (a package directory or a .py file) or module names, e.g. ["../lib/utils", "mylib"]',
    "excludes": 'a list of glob patterns, e.g. ["*.csv", "data", "jobs/checkpoints/*"]',
    "max_code_mib": "a size in MiB above 0, e.g. 250",
}


class Image(SpecModel):
    """Packages and environment for every node.

    On cloud nodes the startup script installs `apt` and `pip` before Ray starts. On the local
    provider nothing is installed into this machine's Python: `pip` goes through Ray's
    `runtime_env` (a cached virtualenv per node), `env` is set for every task.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    _spec_hints = _HINTS

    pip: tuple[str, ...] = Field(default=(), description='pip requirement specifiers, e.g. "numpy>=2"')
    apt: tuple[str, ...] = Field(default=(), description="Debian package names")
    env: dict[str, str] = Field(default_factory=dict, description="environment variables for every task")
    python: str | None = Field(default=None, description='Python version on the nodes, e.g. "3.11"')
    includes: tuple[str, ...] = Field(
        default=(), description="your code to ship besides what is found in sys.modules: paths (a package "
                                "directory or a .py file) or importable module names")
    excludes: tuple[str, ...] = Field(
        default=(), description="glob patterns of files or directories not to ship; without a '/' a pattern matches "
                                "a name at any depth (\"*.csv\", \"data\"), with one the path from the shipped "
                                "package's parent (\"jobs/data/*\"); a top-level name drops that whole package")
    max_code_mib: float = Field(default=100.0, gt=0, description="the most the shipped code may weigh, in MiB")

    @field_validator("pip", mode="before")
    @classmethod
    def _valid_pip(cls, value: object) -> tuple[str, ...]:
        items = (value,) if isinstance(value, str) else tuple(value or ())  # type: ignore[arg-type]
        for item in items:
            try:
                Requirement(str(item))
            except InvalidRequirement as exc:
                raise ValueError(
                    f"Image.pip: {item!r} is not a valid pip requirement ({exc}); "
                    'write it as pip would accept it, e.g. "numpy>=2.0" or "torch==2.4.1"'
                ) from None
        return tuple(str(i) for i in items)

    @field_validator("apt", mode="before")
    @classmethod
    def _valid_apt(cls, value: object) -> tuple[str, ...]:
        items = (value,) if isinstance(value, str) else tuple(value or ())  # type: ignore[arg-type]
        for item in items:
            if not _APT_NAME.match(str(item)):
                raise ValueError(f"Image.apt: {item!r} is not a Debian package name (lower case, e.g. \"ffmpeg\")")
        return tuple(str(i) for i in items)

    @field_validator("env")
    @classmethod
    def _valid_env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_NAME.match(key):
                raise ValueError(f"Image.env: {key!r} is not a valid environment variable name (letters, digits, _)")
            if key.startswith(names.ENV_PREFIX) or key in names.RAY_AUTH_ENV:
                raise SpecError(f"Image.env: {key!r} is reserved (skyward sets {names.ENV_PREFIX}* and the cluster's "
                                f"Ray auth, {', '.join(names.RAY_AUTH_ENV)}, on every node itself). Fix: drop {key!r} "
                                "from env=, or rename it")
        return {k: str(v) for k, v in value.items()}

    @field_validator("python")
    @classmethod
    def _valid_python(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^3\.\d+(\.\d+)?$", value):
            raise ValueError(f'Image.python: {value!r} is not a Python version; write e.g. "3.11"')
        return value

    @field_validator("includes", mode="before")
    @classmethod
    def _valid_includes(cls, value: object) -> tuple[str, ...]:
        items = (value,) if isinstance(value, (str, os.PathLike)) else tuple(value or ())  # type: ignore[arg-type]
        for item in items:
            text = os.fspath(item) if isinstance(item, (str, os.PathLike)) else None
            if not text:
                raise ValueError(f"{item!r} is neither a path nor a module name")
            if os.path.exists(text):
                if not (os.path.isdir(text) or text.endswith(".py")):
                    raise ValueError(f"{text!r} is a file but not a .py module; include its "
                                     "directory, or ship data through your own storage")
            elif not _MODULE_NAME.match(text) or importlib.util.find_spec(text.split(".")[0]) is None:
                raise ValueError(f"{text!r} is no existing path and no importable module; "
                                 "give a package directory, a .py file, or a module name this Python can import")
        return tuple(os.fspath(i) for i in items)  # type: ignore[arg-type]

    @field_validator("excludes", mode="before")
    @classmethod
    def _valid_excludes(cls, value: object) -> tuple[str, ...]:
        items = (value,) if isinstance(value, str) else tuple(value or ())  # type: ignore[arg-type]
        for item in items:
            if not isinstance(item, str) or not item.strip("/"):
                raise ValueError(f"{item!r} is not a glob pattern; write e.g. \"*.csv\" or \"data\"")
        return tuple(items)  # type: ignore[arg-type]

    def python_matches(self, version: str) -> bool:
        """Does `python=` (e.g. "3.11" or "3.11.7") name this X.Y.Z version? Compared by component,
        so "3.1" matches neither 3.11 nor 3.12."""
        if self.python is None:
            return True
        wanted = self.python.split(".")
        return version.split(".")[: len(wanted)] == wanted

    def check_for(self, provider: "ProviderConfig") -> None:
        """Refuse, before anything starts, what `provider`'s nodes cannot honour.

        Nodes that share the driver's interpreter (the local provider) cannot install system
        packages or run another Python; every node needs the driver's Python anyway (Ray checks
        versions between driver and nodes), so `python=` must name the driver's own version.
        """

        here = "%d.%d.%d" % sys.version_info[:3]
        if provider.nodes_share_driver_python and self.apt:
            raise SpecError(
                f"Image.apt={list(self.apt)!r}: sky.{type(provider).__name__}() nodes run on this machine and do not "
                "install system packages; install them yourself (apt-get install ...) and drop apt="
            )
        if not self.python_matches(here):
            raise SpecError(
                f"Image.python={self.python!r}: a Ray driver needs its nodes on its own Python ({here}); "
                f"drop python= or run your script with Python {self.python}"
            )
