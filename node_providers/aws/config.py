"""`sky.AWS(...)`: Amazon EC2. Every setting a user may make is a typed field (no free-form dict)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import re

from pydantic import Field, model_validator

from node_providers.aws.session import configured_region
from skyward_ray.errors import SpecError
from skyward_ray.planning.providers import RemoteMachineConfig

if TYPE_CHECKING:
    from skyward_ray.planning.accelerators import Accelerator
    from skyward_ray.planning.offers import Offer

#: `region=ANY_REGION` compares offers from every region (an explicit choice: latency to the driver costs too)
ANY_REGION = "any"
_REGION_NAME = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")  # us-east-1, ap-southeast-2, us-gov-west-1


class AWS(RemoteMachineConfig):
    """Amazon EC2. Credentials come from the usual boto3 chain (env, profile, SSO, instance role).

    Offers come from the region you configured for AWS tools (`region=`, else AWS_DEFAULT_REGION,
    the profile's region in ~/.aws/config, AWS_REGION), or from several (`regions=[...]`);
    `region="any"` compares every region. With no region configured anywhere every region is
    compared too, and the plan says so in a note.
    """

    name: ClassVar[str] = "aws"
    defaults: ClassVar[dict[str, object]] = {"ssh_user": "ubuntu"}  # the login user of the default AMI (Ubuntu)
    node_provider: ClassVar[str | None] = "node_providers.aws.node_provider:AWSNodeProvider"
    extra: ClassVar[str | None] = "aws"
    required_modules: ClassVar[tuple[str, ...]] = ("boto3",)

    region: str | None = Field(
        default=None, description="a region such as 'us-east-1' (offers and launches); default: your AWS "
                                  "configuration's region; 'any': every region")
    regions: tuple[str, ...] | None = Field(default=None, description="several regions to compare offers across")
    profile: str | None = Field(default=None, description="an AWS profile name from ~/.aws/config")
    ami: str | None = Field(default=None, description="an image id 'ami-...'; default: the newest Deep Learning Base AMI")
    vpc_id: str | None = Field(default=None, description="a VPC id 'vpc-...'; default: the region's default VPC")
    subnet_id: str | None = Field(default=None, description="a subnet id 'subnet-...'; default: one in the offer's zone")
    ssh_cidr: str | None = Field(
        default=None, description="source of the cluster's SSH rule, e.g. your address '/32' (default: no SSH rule)")
    driver_security_group: str | None = Field(
        default=None, description="a security group 'sg-...' whose members (a driver inside the VPC) may reach the nodes")
    disk_gb: int | None = Field(default=None, gt=0, description="root volume size in GB (default: the AMI's)")

    @model_validator(mode="after")
    def _one_region_choice(self) -> "AWS":
        if self.region == ANY_REGION and self.regions:
            raise SpecError(f"AWS: region='any' and regions={list(self.regions)} contradict each other. Fix: pass "
                            "region='any' for every region, or regions=[...] for those regions")
        return self

    def search_regions(self) -> tuple[str, ...] | None:
        """The regions to list offers in: `regions` and `region`, else the configured region (as
        boto3 resolves it); None means every region (`region='any'`, or no region configured)."""
        if self.region == ANY_REGION:
            return None
        chosen = tuple(dict.fromkeys((*(self.regions or ()), *((self.region,) if self.region else ()))))
        if chosen:
            return chosen
        configured = configured_region(self.profile)
        return (configured,) if configured else None

    def for_region(self, region: str | None) -> "AWS":
        """A plan that asks for a region (`sky.plan(region='eu-central-1')`, `offers --region us`) looks
        there rather than in the configured region: that exact region, or every region for a prefix
        or country the plan's filter then matches. Regions set on this config are kept."""
        if region is None or self.region is not None or self.regions:
            return self
        return self.model_copy(update={"region": region if _REGION_NAME.fullmatch(region) else ANY_REGION})

    def offer_notes(self) -> list[str]:
        if self.region is None and not self.regions and self.search_regions() is None:
            return ["aws: no AWS region is configured (AWS_DEFAULT_REGION, the profile's region, AWS_REGION): "
                    "offers from every region. Set one, or pass sky.AWS(region='us-east-1'), or "
                    "sky.AWS(region='any') to compare every region on purpose"]
        return []

    def list_offers(self, accelerator: "Accelerator | None" = None) -> "list[Offer]":
        from node_providers.aws.offers import list_offers

        return list_offers(self, accelerator)
