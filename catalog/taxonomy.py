"""The accelerator taxonomy: canonical variants and every provider's names for them.

Why a taxonomy: "H100" on AWS (SXM5, p5) and "H100 PCIe" on RunPod are different cards at
different prices; comparing offers is only honest on canonical (family, memory, form factor).
Loaded once per process from `accelerators.yaml` (a few ms with libyaml).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

TAXONOMY_PATH = Path(__file__).with_name("accelerators.yaml")

_FORM_FACTORS = {"SXM": "SXM", "PCIE": "PCIe", "NVL": "NVL", "OAM": "OAM"}


def normalize_name(name: str) -> str:
    """Key for tolerant matching: case, spaces, dashes and underscores do not matter."""
    return re.sub(r"[\s_\-]+", "", name).upper()


def normalize_form_factor(value: str) -> str | None:
    """"sxm5" → "SXM", "pcie" → "PCIe"; None when it is not a form factor we know."""
    key = normalize_name(value)
    key = re.sub(r"\d+$", "", key)  # SXM4, SXM5, SXM2 are all SXM sockets
    return _FORM_FACTORS.get(key)


@dataclass(frozen=True, slots=True)
class Variant:
    """One concrete card: a family in one memory size and form factor."""

    family: str
    vendor: str
    architecture: str
    memory_gb: float
    form_factor: str
    aliases: tuple[str, ...] = ()
    provider_names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    instance_types: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: str = ""

    @property
    def label(self) -> str:
        """Human name, e.g. "H100 SXM 80GB"."""
        return f"{self.family} {self.form_factor} {self.memory_gb:g}GB"


@dataclass(frozen=True, slots=True)
class Taxonomy:
    """Indexed view of the variants, built once."""

    variants: tuple[Variant, ...]
    families: tuple[str, ...]
    by_family: dict[str, tuple[Variant, ...]]
    family_keys: dict[str, str]  # normalized family name or alias -> family
    by_provider_name: dict[tuple[str, str], tuple[Variant, ...]]  # (provider, normalized name)
    by_instance_type: dict[tuple[str, str], Variant]

    def resolve_family(self, name: str) -> str | None:
        """Canonical family for a user-typed name or alias; None if unknown."""
        return self.family_keys.get(normalize_name(name))

    def lookup(self, provider: str, name: str, memory_gb: float | None = None) -> Variant | None:
        """The variant a provider means by `name`; memory breaks ties (Vast "A100 SXM4" is 40 or 80 GB)."""
        candidates = self.by_provider_name.get((provider, normalize_name(name)), ())
        if len(candidates) <= 1 or memory_gb is None:
            return candidates[0] if candidates else None
        return min(candidates, key=lambda v: abs(v.memory_gb - memory_gb))

    def lookup_instance_type(self, provider: str, instance_type: str) -> Variant | None:
        return self.by_instance_type.get((provider, instance_type))

    def canonical_provider_name(self, provider: str, name: str, memory_gb: float | None = None) -> str | None:
        """The first (deploy) name a provider uses for the variant behind `name`."""
        variant = self.lookup(provider, name, memory_gb)
        if variant is None:
            return None
        return variant.provider_names[provider][0]


def _variant(raw: dict[str, Any]) -> Variant:
    provider_names: dict[str, tuple[str, ...]] = {}
    instance_types: dict[str, tuple[str, ...]] = {}
    for provider in ("aws", "runpod", "vastai"):
        value = raw.get(provider)
        if value is None:
            continue
        if isinstance(value, dict):  # {gpu_name: ..., instance_types: [...]}
            provider_names[provider] = (value["gpu_name"],)
            instance_types[provider] = tuple(value.get("instance_types", ()))
        else:
            provider_names[provider] = tuple(value)
    form_factor = normalize_form_factor(raw["form_factor"])
    if form_factor is None:
        raise ValueError(f"accelerators.yaml: unknown form_factor {raw['form_factor']!r} for {raw['family']}")
    return Variant(
        family=raw["family"],
        vendor=raw["vendor"],
        architecture=raw["architecture"],
        memory_gb=float(raw["memory_gb"]),
        form_factor=form_factor,
        aliases=tuple(raw.get("aliases", ())),
        provider_names=provider_names,
        instance_types=instance_types,
        notes=raw.get("notes", ""),
    )


@lru_cache(maxsize=1)
def taxonomy() -> Taxonomy:
    """Parse and index `accelerators.yaml` (cached for the process)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with TAXONOMY_PATH.open(encoding="utf-8") as handle:
        raw = yaml.load(handle, Loader=loader)
    variants = tuple(_variant(item) for item in raw["variants"])
    families: list[str] = []
    by_family: dict[str, list[Variant]] = {}
    family_keys: dict[str, str] = {}
    by_provider_name: dict[tuple[str, str], list[Variant]] = {}
    by_instance_type: dict[tuple[str, str], Variant] = {}
    for variant in variants:
        if variant.family not in by_family:
            families.append(variant.family)
            by_family[variant.family] = []
        by_family[variant.family].append(variant)
        for key in (variant.family, *variant.aliases):
            family_keys[normalize_name(key)] = variant.family
        for provider, names in variant.provider_names.items():
            for name in names:
                by_provider_name.setdefault((provider, normalize_name(name)), []).append(variant)
        for provider, types in variant.instance_types.items():
            for instance_type in types:
                by_instance_type[(provider, instance_type)] = variant
    return Taxonomy(
        variants=variants,
        families=tuple(families),
        by_family={k: tuple(v) for k, v in by_family.items()},
        family_keys=family_keys,
        by_provider_name={k: tuple(v) for k, v in by_provider_name.items()},
        by_instance_type=by_instance_type,
    )
