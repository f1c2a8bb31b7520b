"""Accelerator names, factories, the taxonomy, and Spec validation messages."""

from __future__ import annotations

import pytest

from catalog.taxonomy import taxonomy
from skyward_ray import accelerators
from skyward_ray.planning.accelerators import parse_accelerator
from skyward_ray.errors import SpecError, UnknownAcceleratorError
from skyward_ray import AWS, Local
from skyward_ray.planning.spec import Spec


def test_every_catalog_family_has_a_factory_and_required_families_exist():
    assert set(accelerators.FACTORIES) == set(taxonomy().families)
    required = {"H100", "H200", "B200", "A100", "L40S", "L40", "L4", "A10G", "A10", "T4", "V100", "A40",
                "RTXA6000", "RTX6000Ada", "RTX4090", "RTX5090", "RTX3090", "MI300X"}
    assert required <= set(taxonomy().families)
    h100 = {(v.form_factor, v.memory_gb) for v in taxonomy().by_family["H100"]}
    assert {("SXM", 80.0), ("PCIe", 80.0), ("NVL", 94.0)} <= h100
    assert {(v.form_factor, v.memory_gb) for v in taxonomy().by_family["A100"]} == {
        ("SXM", 40.0), ("SXM", 80.0), ("PCIe", 40.0), ("PCIe", 80.0)}


def test_factory_fields_and_string_form():
    acc = accelerators.H100(count=8, memory="80GB", form_factor="sxm5")
    assert (acc.name, acc.count, acc.memory, acc.form_factor) == ("H100", 8, 80.0, "SXM")
    assert str(accelerators.H100(count=8)) == "H100:8"
    assert parse_accelerator(str(acc)) == acc
    assert accelerators.RTX4090().count == 1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("H100:8", ("H100", 8, None, None)),
        ("A100-80GB:8", ("A100", 8, 80.0, None)),
        ("h100 pcie:2", ("H100", 2, None, "PCIe")),
        ("A100-SXM4-40GB", ("A100", 1, 40.0, "SXM")),
        ("RTX 4090", ("RTX4090", 1, None, None)),
        ("rtx_6000_ada:4", ("RTX6000Ada", 4, None, None)),
    ],
)
def test_string_forms(text, expected):
    acc = parse_accelerator(text)
    assert (acc.name, acc.count, acc.memory, acc.form_factor) == expected


def test_parse_passes_through_none_and_instances():
    acc = accelerators.L4()
    assert parse_accelerator(acc) is acc
    assert parse_accelerator(None) is None


def test_unknown_name_lists_closest_names():
    with pytest.raises(UnknownAcceleratorError) as info:
        parse_accelerator("H1000:8")
    message = str(info.value)
    assert "Unknown accelerator 'H1000'" in message
    assert "Closest: H100" in message
    assert isinstance(info.value, SpecError) and isinstance(info.value, ValueError)


def test_bad_count_names_the_field():
    with pytest.raises(SpecError, match="count 'x' is not a whole number"):
        parse_accelerator("H100:x")
    with pytest.raises(SpecError, match=r"Accelerator\.count.*Fix:"):
        accelerators.H100(count=0)


def test_impossible_variant_lists_the_real_ones():
    with pytest.raises(SpecError, match="there is no A100 99GB.*A100 SXM 40GB"):
        accelerators.A100(memory="99GB")
    with pytest.raises(SpecError, match="A10G PCIe 24GB"):
        accelerators.A10G(form_factor="SXM")
    with pytest.raises(SpecError, match="form_factor"):
        accelerators.H100(form_factor="socket")


def test_provider_names_are_different_cards():
    tax = taxonomy()
    assert tax.lookup("aws", "H100").form_factor == "SXM"
    assert tax.lookup("runpod", "NVIDIA H100 PCIe").form_factor == "PCIe"
    assert tax.lookup("runpod", "NVIDIA H100 80GB HBM3").form_factor == "SXM"
    assert tax.lookup("vastai", "A100 SXM4", 40.0).memory_gb == 40
    assert tax.lookup("vastai", "A100 SXM4", 80.0).memory_gb == 80
    assert tax.lookup("aws", "A100", 80.0).instance_types["aws"] == ("p4de.24xlarge",)
    assert tax.lookup_instance_type("aws", "p5.48xlarge").label == "H100 SXM 80GB"


def test_spec_defaults_and_coercions():
    spec = Spec()
    assert isinstance(spec.provider, Local) and spec.accelerator is None and spec.allocation == "spot-if-available"
    spec = Spec(provider="aws", accelerator="H100:8")
    assert isinstance(spec.provider, AWS) and spec.accelerator == accelerators.H100(count=8)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"allocation": "spotty"}, r"Spec\.allocation.*Fix: one of \"spot-if-available\""),
        ({"max_hourly_cost": -1}, r"Spec\.max_hourly_cost.*greater than 0.*Fix: a positive number"),
        ({"acelerator": "H100"}, r"Spec\.acelerator: unknown field; did you mean 'accelerator'"),
        ({"provider": "gcp"}, r"Unknown provider 'gcp'. Known providers: aws, .*runpod, vastai"),
        ({"vcpus": 0}, r"Spec\.vcpus"),
    ],
)
def test_spec_errors_name_the_field_and_the_fix(kwargs, pattern):
    with pytest.raises(SpecError, match=pattern):
        Spec(**kwargs)


def test_spec_unknown_accelerator_keeps_its_type():
    with pytest.raises(UnknownAcceleratorError, match="Closest: H100"):
        Spec(accelerator="H1OO")


# Made-up device lists (what nvidia-smi could print): matching is by exact catalog name, never substring.
def test_local_gpus_are_named_by_the_catalog_not_by_substring():
    from node_providers.local.offers import canonical_gpu, gpu_offers

    base = dict(provider="local", market="on-demand", price=0.0, region="local", price_source="test")
    a100 = gpu_offers(((0, "NVIDIA A100-SXM4-80GB", 80.0), (1, "NVIDIA A100-SXM4-80GB", 80.0)), base)
    assert [(o.accelerator, o.count, o.form_factor) for o in a100] == [("A100", 2, "SXM")]
    assert canonical_gpu("NVIDIA A10", 24).family == "A10" and canonical_gpu("NVIDIA A10G", 24).family == "A10G"
    l40s = gpu_offers(((0, "NVIDIA L40S", 48.0),), base)
    assert [o.accelerator for o in l40s] == ["L40S"]
    assert canonical_gpu("NVIDIA L4", 24).family == "L4"
    unknown = gpu_offers(((0, "NVIDIA Some Future Card", 96.0),), base)
    assert [o.accelerator for o in unknown] == ["NVIDIA Some Future Card"]  # never passes for a known card
    # an A100 host offers no A10, an L40S host no L4
    from skyward_ray.planning.selector import select

    for offers, asked in ((a100, "A10"), (l40s, "L4")):
        plan = select([Spec(provider=Local(), accelerator=asked)], [offers], nodes=1)
        assert plan.offers == [] and {r.filter for r in plan.rejected} == {"accelerator"}
