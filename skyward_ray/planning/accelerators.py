"""Logical accelerators: `sky.accelerators.H100(count=8)`, or the string form "H100:8".

An `Accelerator` names a canonical family (from `catalog/accelerators.yaml`), how many per node,
and optionally the memory size and form factor that pin it to one variant. Leaving memory or
form factor out is deliberate breadth: `H100()` matches SXM, PCIe and NVL offers alike, and the
selector then simply picks the cheapest.

`count` is exact by default: a node with more accelerators than asked costs more and a call takes
all of its accelerators, so a larger machine is only bought when the user says so with
`larger_ok=True` (string form "H100:1+").
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Callable

from pydantic import ConfigDict, Field, field_validator, model_validator

from catalog.taxonomy import Variant, normalize_form_factor, normalize_name, taxonomy
from skyward_ray._validation import SpecModel
from skyward_ray.errors import SpecError, UnknownAcceleratorError

_HINTS = {
    "name": "a family such as H100, A100, L40S, RTX4090 (see sky.accelerators.families())",
    "count": "a whole number of accelerators per node, at least 1 (e.g. H100(count=8) or 'H100:8'; 'H100:1+' for 1 or more)",
    "memory": 'memory per accelerator, e.g. "80GB" or 80',
    "form_factor": 'one of "SXM", "PCIe", "NVL", "OAM", or leave it out to accept any',
    "larger_ok": "True or False: True also accepts nodes with more than `count` (string form 'H100:1+')",
}

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(GB|G|GIB|MB|MIB|M)?\s*$", re.IGNORECASE)


def families() -> tuple[str, ...]:
    """Every canonical family name the catalog knows, in catalog order."""
    return taxonomy().families


def parse_memory(value: str | float | int) -> float:
    """ "80GB", "80 GiB", 80, "81920MiB" → 80.0 (card memory is sold in binary GB, called GB)."""
    if isinstance(value, bool):
        raise ValueError("memory must be a size like '80GB'")
    if isinstance(value, (int, float)):
        number, unit = float(value), "GB"
    else:
        match = _MEMORY.match(value)
        if not match:
            raise ValueError(f"cannot read memory {value!r}; write it like '80GB'")
        number, unit = float(match.group(1)), (match.group(2) or "GB").upper()
    if unit in ("MB", "MIB", "M"):
        number /= 1024
    if number <= 0:
        raise ValueError("memory must be positive")
    return number


def memory_matches(asked_gb: float, have_gb: float) -> bool:
    """Same memory class: providers report 80 GB as 80, 79.6 or 81920 MiB; 80 and 94 differ."""
    return abs(have_gb - asked_gb) <= max(2.0, 0.06 * asked_gb)


class Accelerator(SpecModel):
    """A logical accelerator request: family, count per node, optional memory and form factor."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    _spec_hints = _HINTS

    name: str = Field(description="canonical family, e.g. 'H100'")
    count: int = Field(default=1, ge=1, description="accelerators per node (exactly, unless larger_ok)")
    larger_ok: bool = Field(
        default=False,
        description="also accept nodes with more than `count` accelerators (a larger, dearer machine whose "
                    "accelerators a call takes all of); exact matches still rank first in each market. "
                    "False = exactly `count` per node. String form: 'H100:1+'.",
    )
    memory: float | None = Field(default=None, description="GB per accelerator; None = any size")
    form_factor: str | None = Field(default=None, description="'SXM', 'PCIe', 'NVL', 'OAM'; None = any")

    @field_validator("name", mode="before")
    @classmethod
    def _canonical_name(cls, value: Any) -> str:
        if not isinstance(value, str):
            raise SpecError(f"Accelerator.name: expected a string, got {value!r}. Fix: {_HINTS['name']}")
        family = taxonomy().resolve_family(value)
        if family is None:
            raise unknown_accelerator(value)
        return family

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> float | None:
        if value is None:
            return None
        try:
            return parse_memory(value)
        except ValueError as error:
            raise SpecError(f"Accelerator.memory: {error} (got {value!r}). Fix: {_HINTS['memory']}") from None

    @field_validator("form_factor", mode="before")
    @classmethod
    def _form_factor(cls, value: Any) -> str | None:
        if value is None:
            return None
        form_factor = normalize_form_factor(str(value))
        if form_factor is None:
            raise SpecError(f"Accelerator.form_factor: unknown form factor {value!r}. Fix: {_HINTS['form_factor']}")
        return form_factor

    @model_validator(mode="after")
    def _variant_exists(self) -> "Accelerator":
        if not self.variants():
            sold = ", ".join(v.label for v in taxonomy().by_family[self.name])
            asked = " ".join(
                part for part in (self.form_factor, f"{self.memory:g}GB" if self.memory else None) if part
            )
            raise SpecError(
                f"Accelerator: there is no {self.name} {asked}. Known {self.name} variants: {sold}. "
                "Fix: pick one of those memory sizes / form factors, or leave them out to accept any."
            )
        return self

    def variants(self) -> tuple[Variant, ...]:
        """The concrete catalog variants this request accepts."""
        return tuple(
            v
            for v in taxonomy().by_family[self.name]
            if (self.form_factor is None or v.form_factor == self.form_factor)
            and (self.memory is None or memory_matches(self.memory, v.memory_gb))
        )

    @property
    def memory_gb(self) -> float | None:
        return self.memory

    def __str__(self) -> str:
        parts = [self.name]
        if self.form_factor:
            parts.append(self.form_factor)
        if self.memory:
            parts.append(f"{self.memory:g}GB")
        return f"{'-'.join(parts)}:{self.count}{'+' if self.larger_ok else ''}"


def unknown_accelerator(value: str) -> UnknownAcceleratorError:
    """An error that lists the closest known names (difflib over families and aliases)."""
    tax = taxonomy()
    keys = {normalize_name(k): family for k, family in tax.family_keys.items()}
    close = difflib.get_close_matches(normalize_name(value), list(keys), n=8, cutoff=0.5)
    closest = list(dict.fromkeys(keys[key] for key in close))[:5]
    hint = f"Closest: {', '.join(closest)}. " if closest else ""
    return UnknownAcceleratorError(
        f"Unknown accelerator {value!r}. {hint}Known families: {', '.join(tax.families)}. "
        'Write it like "H100", "H100:8" or "A100-80GB:8".'
    )


def parse_accelerator(value: "str | Accelerator | dict[str, Any] | None") -> Accelerator | None:
    """ "H100:8", "H100:1+" or "H100+" (1 or more), "A100-80GB:8", "H100 SXM", an `Accelerator`, a dict of its fields, or None."""
    if value is None or isinstance(value, Accelerator):
        return value
    if isinstance(value, dict):
        return Accelerator(**value)
    if not isinstance(value, str):
        raise SpecError(
            f"accelerator: expected a string like 'H100:8' or sky.accelerators.H100(count=8), got {value!r}"
        )
    text, _, count_text = value.strip().partition(":")
    count = 1
    count_text = count_text.strip()
    larger_ok = count_text.endswith("+") or (not _ and text.endswith("+"))  # "H100:1+", or "H100+" for 1+
    text = text.removesuffix("+").strip() if not _ else text
    if _:
        try:
            count = int(count_text.removesuffix("+").strip())
        except ValueError:
            raise SpecError(
                f"accelerator {value!r}: count {count_text!r} is not a whole number. Fix: {_HINTS['count']}"
            ) from None
    name, memory, form_factor = _split_qualifiers(text, value)
    return Accelerator(name=name, count=count, memory=memory, form_factor=form_factor, larger_ok=larger_ok)


def _split_qualifiers(text: str, original: str) -> tuple[str, float | None, str | None]:
    """ "A100-80GB-SXM" → ("A100", 80.0, "SXM"); the longest token prefix naming a family wins."""
    tax = taxonomy()
    if tax.resolve_family(text):
        return text, None, None
    tokens = [t for t in re.split(r"[\s_\-]+", text) if t]
    for cut in range(len(tokens), 0, -1):
        if tax.resolve_family("".join(tokens[:cut])):
            memory: float | None = None
            form_factor: str | None = None
            for token in tokens[cut:]:
                if normalize_form_factor(token):
                    form_factor = normalize_form_factor(token)
                elif _MEMORY.match(token) and re.search(r"[A-Za-z]", token):
                    memory = parse_memory(token)
                else:
                    raise SpecError(
                        f"accelerator {original!r}: cannot read {token!r}. Fix: qualifiers are memory "
                        "like 80GB or a form factor SXM/PCIe/NVL, e.g. 'A100-80GB-SXM:8'"
                    )
            return "".join(tokens[:cut]), memory, form_factor
    raise unknown_accelerator(text)


def _family(name: str) -> Callable[..., Accelerator]:
    def factory(count: int = 1, memory: str | float | None = None, form_factor: str | None = None,
                larger_ok: bool = False) -> Accelerator:
        return Accelerator(name=name, count=count, memory=memory, form_factor=form_factor, larger_ok=larger_ok)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"`count` {name} accelerators per node (exactly; `larger_ok=True` also accepts larger nodes); "
        "`memory` (e.g. '80GB') and `form_factor` ('SXM', 'PCIe', ...) narrow it to one variant, leaving "
        "them out accepts any."
    )
    return factory


# One factory per catalog family (tests check this list against catalog/accelerators.yaml).
H100 = _family("H100")
H200 = _family("H200")
B200 = _family("B200")
A100 = _family("A100")
A40 = _family("A40")
A10 = _family("A10")
A10G = _family("A10G")
L40S = _family("L40S")
L40 = _family("L40")
L4 = _family("L4")
T4 = _family("T4")
V100 = _family("V100")
RTXA6000 = _family("RTXA6000")
RTX6000Ada = _family("RTX6000Ada")
RTX5090 = _family("RTX5090")
RTX4090 = _family("RTX4090")
RTX3090 = _family("RTX3090")
MI300X = _family("MI300X")

FACTORIES: dict[str, Callable[..., Accelerator]] = {
    f.__name__: f
    for f in (H100, H200, B200, A100, A40, A10, A10G, L40S, L40, L4, T4, V100,
              RTXA6000, RTX6000Ada, RTX5090, RTX4090, RTX3090, MI300X)
}

__all__ = ["Accelerator", "parse_accelerator", "families", "memory_matches", "parse_memory", *FACTORIES]
