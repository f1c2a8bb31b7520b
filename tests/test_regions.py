"""AWS offers come from the region the user configured (issue 22, item 2): boto3's resolution
(AWS_DEFAULT_REGION, the profile's region in the AWS config file, then AWS_REGION),
`sky.AWS(region=...)` / `regions=[...]`; every region only when asked (`region="any"`), and the
plan table shows each offer's region. Snapshot prices only: no credentials in these tests."""

from __future__ import annotations

import os

import pytest

import skyward_ray as sky
from skyward_ray.errors import SpecError
from skyward_ray.planning.offer_table import render_plan

UNSET = ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
         "AWS_SESSION_TOKEN")


@pytest.fixture(autouse=True)
def no_aws_configuration(monkeypatch, tmp_path):
    """No region and no credentials unless a test sets them (the user's real ~/.aws stays out)."""
    for name in UNSET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def regions(result) -> set[str]:
    return {offer.region for offer in result.offers}


def test_the_environment_region_is_honoured(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    result = sky.plan(provider="aws", accelerator="H100:8")
    assert regions(result) == {"us-west-2"}
    assert not any("every region" in note for note in result.notes)


def test_aws_region_variable_is_honoured(monkeypatch):
    monkeypatch.setenv("AWS_REGION", "eu-west-2")
    assert regions(sky.plan(provider=sky.AWS(), accelerator="H100:8")) == {"eu-west-2"}


def test_the_config_files_profile_region_is_honoured(monkeypatch, tmp_path):
    (tmp_path / "aws-config").write_text("[default]\nregion = eu-north-1\n[profile work]\nregion = ap-northeast-1\n")
    assert regions(sky.plan(provider=sky.AWS(), accelerator="H100:8")) == {"eu-north-1"}
    assert regions(sky.plan(provider=sky.AWS(profile="work"), accelerator="H100:8")) == {"ap-northeast-1"}
    monkeypatch.setenv("AWS_PROFILE", "work")
    assert regions(sky.plan(provider=sky.AWS(), accelerator="H100:8")) == {"ap-northeast-1"}


def test_explicit_regions_win_over_the_configuration(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert regions(sky.plan(provider=sky.AWS(region="eu-west-2"), accelerator="H100:8")) == {"eu-west-2"}
    both = sky.plan(provider=sky.AWS(regions=("eu-west-2", "ap-south-1")), accelerator="H100:8")
    assert regions(both) == {"eu-west-2", "ap-south-1"}


def test_a_plans_region_filter_looks_there_not_in_the_configured_region(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert regions(sky.plan(provider="aws", accelerator="H100:8", region="eu-west-2")) == {"eu-west-2"}
    europe = regions(sky.plan(provider="aws", accelerator="H100:8", region="eu"))
    assert len(europe) > 1 and all(region.startswith("eu-") for region in europe)


def test_every_region_is_an_explicit_choice(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    everywhere = sky.plan(provider=sky.AWS(region="any"), accelerator="H100:8")
    assert len(regions(everywhere)) > 3
    assert not any("every region" in note for note in everywhere.notes)
    with pytest.raises(SpecError, match="contradict"):
        sky.AWS(region="any", regions=("us-east-1",))


def test_no_region_anywhere_compares_every_region_and_says_so():
    result = sky.plan(provider="aws", accelerator="H100:8")
    assert len(regions(result)) > 3
    assert any("no AWS region is configured" in note and "region='any'" in note for note in result.notes)
    assert "no AWS region is configured" in render_plan(result)


def test_the_plan_table_shows_each_offers_region(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    result = sky.plan(provider="aws", accelerator="H100:8", allocation="spot")
    assert result.chosen.zone and not result.chosen.zone.startswith("ap-south-1")  # a zone id, e.g. aps1-az1
    text = render_plan(result, width=200)
    assert f"ap-south-1 {result.chosen.zone}" in text
    assert f"in ap-south-1 {result.chosen.zone}" in text.splitlines()[1]


def test_the_environment_is_isolated():
    assert "AWS_DEFAULT_REGION" not in os.environ
