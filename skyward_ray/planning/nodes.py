"""Pool size (`sky.Nodes`) and what the pool is made of (`NodeInfo`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from skyward_ray._validation import SpecModel
from skyward_ray.errors import SpecError

_HINTS = {
    "desired": "a whole number of nodes, 1 or more",
    "min": "a whole number of nodes between 1 and desired (work starts once this many are up)",
    "max": "a whole number of nodes >= desired (the most an elastic pool may grow to)",
}


class Nodes(SpecModel):
    """How many nodes: `desired` to launch; work may start at `min`; elastic pools may grow to `max`."""

    model_config = ConfigDict(frozen=True)
    _spec_hints = _HINTS

    desired: int = Field(ge=1)
    min: int | None = Field(default=None, ge=1)
    max: int | None = Field(default=None, ge=1)

    def __init__(self, desired: int | None = None, /, **data: object) -> None:
        if desired is not None:
            data["desired"] = desired
        super().__init__(**data)

    @model_validator(mode="after")
    def _ordered(self) -> "Nodes":
        if self.min is not None and self.min > self.desired:
            raise ValueError(f"Nodes: min={self.min} is more than desired={self.desired}; lower min")
        if self.max is not None and self.max < self.desired:
            raise ValueError(f"Nodes: max={self.max} is less than desired={self.desired}; raise max")
        return self


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
