"""Pool size (`sky.Nodes`) and what the pool is made of (`NodeInfo`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from skyward_ray._validation import SpecModel
from skyward_ray.errors import SpecError

_HINTS = {
    "desired": "a whole number of nodes, 1 or more",
    "min": "a whole number of nodes between 1 and desired (work starts once this many are up)",
    "max": "a whole number of nodes >= desired (the most an elastic pool may grow to)",
    "idle_timeout": "seconds a worker of an elastic pool may stay idle before it is ended (e.g. 60)",
}


class Nodes(SpecModel):
    """How many nodes: `desired` to launch; work may start at `min`; elastic pools may grow to `max`.

    A pool is elastic when `min` or `max` differs from `desired`: it launches `desired` nodes
    (default: `min`, else 1), grows up to `max` while Ray has work waiting for a node, and ends
    workers idle for `idle_timeout` seconds, never going below `min` (default: `desired`).

    >>> sky.Nodes(min=1, max=8, idle_timeout=120)   # 1 node now, up to 8 under load
    """

    model_config = ConfigDict(frozen=True)
    _spec_hints = _HINTS

    desired: int = Field(ge=1)
    min: int | None = Field(default=None, ge=1)
    max: int | None = Field(default=None, ge=1)
    idle_timeout: float = Field(default=60.0, gt=0)

    def __init__(self, desired: int | None = None, /, **data: object) -> None:
        if desired is not None:
            data["desired"] = desired
        elif data.get("desired") is None:  # sky.Nodes(min=1, max=8): start at min
            minimum = data.get("min")
            data["desired"] = minimum if isinstance(minimum, int) and not isinstance(minimum, bool) else 1
        super().__init__(**data)

    @model_validator(mode="after")
    def _ordered(self) -> "Nodes":
        if self.min is not None and self.min > self.desired:
            raise ValueError(f"Nodes: min={self.min} is more than desired={self.desired}; lower min")
        if self.max is not None and self.max < self.desired:
            raise ValueError(f"Nodes: max={self.max} is less than desired={self.desired}; raise max")
        return self

    @property
    def elastic(self) -> bool:
        """True when the pool may shrink below or grow beyond `desired`."""
        return self.floor != self.desired or self.ceiling != self.desired

    @property
    def floor(self) -> int:
        """The fewest nodes an elastic pool keeps (`min`, else `desired`)."""
        return self.min if self.min is not None else self.desired

    @property
    def ceiling(self) -> int:
        """The most nodes the pool may have (`max`, else `desired`): what the cost guard prices."""
        return self.max if self.max is not None else self.desired


def as_nodes(value: "int | Nodes") -> Nodes:
    """Accept an int or `Nodes`; reject anything else with a message naming `nodes=`."""
    if isinstance(value, Nodes):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"nodes={value!r}: pass a whole number of nodes (e.g. nodes=2) or sky.Nodes(2, min=1)")
    if value < 1:
        raise SpecError(f"nodes={value}: a pool needs at least one node; pass nodes=1 or more")
    return Nodes(value)


class NodeInfo(BaseModel):
    """One provisioned node, as `pool.nodes` lists them (head first)."""

    model_config = ConfigDict(frozen=True)

    index: int
    instance_id: str
    ray_node_id: str
    ip: str
    provider: str
    accelerator: str | None = None
    accelerator_count: int = 0
    spot: bool = False
