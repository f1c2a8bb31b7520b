"""What a detached pool (`skyward-ray up`, `sky.Compute(...).up()`) is: its name and its two clocks.

A detached pool outlives the command that made it, so it is the pool a user can forget. Both of
its clocks are therefore finite unless the user writes "none" for one of them: it ends after
`idle_timeout` with no task running and no client attached, or after `max_lifetime`, whichever
comes first. Durations are written the way people say them: `45s`, `30m`, `8h`, `2d` (a bare
number is seconds).

Pure data: checked before anything is provisioned, never imports Ray.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import Field, field_validator

from skyward_ray._validation import SpecModel
from skyward_ray.errors import SpecError

DEFAULT_IDLE_TIMEOUT = 30 * 60.0
DEFAULT_MAX_LIFETIME = 8 * 3600.0
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_INFINITE = ("none", "inf", "infinity", "never")
# A name is a cloud resource name (security group, key pair, tag), a file name and a Ray label value.
_NAME = re.compile(r"[a-z][a-z0-9-]{0,38}[a-z0-9]")


def is_pool_name(value: object) -> bool:
    """The one rule for a pool's name, whoever gives it: the user (`DetachedSpec`), the launcher
    (`sky-<hex>`), or a cloud's listing read back by `skyward-ray gc`/`down`. A name read back is
    never trusted as is: it becomes a file and a directory name on the driver (`fullmatch`: no
    `/`, no `..`, no trailing newline)."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def parse_duration(value: Any, field: str) -> float | None:
    """'30m' → 1800.0; None/'none'/'inf' → None (no limit, asked for explicitly); bad input → SpecError."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value == math.inf:
            return None
        if value > 0:
            return float(value)
    elif isinstance(value, str):
        if value.strip().lower() in _INFINITE:
            return None
        match = _DURATION.match(value)
        if match and float(match.group(1)) > 0:
            return float(match.group(1)) * _UNITS[match.group(2).lower()]
    raise SpecError(f"{field}={value!r} is not a duration. Fix: write a positive duration such as 90s, 30m, 8h or 2d, "
                    f"or 'none' for no limit")


def describe_duration(seconds: float | None) -> str:
    """1800 → '30m'; None → 'none'."""
    if seconds is None:
        return "none"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


class DetachedSpec(SpecModel):
    """A detached pool's name and clocks (`None` = no limit, only when asked for)."""

    _spec_hints = {
        "name": "a lower-case name of letters, digits and '-' (2 to 40 characters, starting with a letter)",
        "idle_timeout": "a duration such as 10m or 1h, or 'none' for no idle limit",
        "max_lifetime": "a duration such as 8h or 2d, or 'none' for no lifetime limit",
        "dashboard": "True to run Ray's dashboard on the head (needed by `ray job submit`)",
    }

    name: str
    idle_timeout: float | None = Field(default=DEFAULT_IDLE_TIMEOUT)
    max_lifetime: float | None = Field(default=DEFAULT_MAX_LIFETIME)
    dashboard: bool = False

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        if not is_pool_name(value):
            raise SpecError(f"name={value!r} cannot name a pool. Fix: use {cls._spec_hints['name']}, e.g. 'train-1'")
        return value

    @field_validator("idle_timeout", "max_lifetime", mode="before")
    @classmethod
    def _duration(cls, value: Any, info: Any) -> float | None:
        return parse_duration(value, info.field_name)


__all__ = ["DEFAULT_IDLE_TIMEOUT", "DEFAULT_MAX_LIFETIME", "DetachedSpec", "describe_duration", "is_pool_name",
           "parse_duration"]
