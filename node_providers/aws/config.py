"""`sky.AWS(...)`: Amazon EC2. Every setting a user may make is a typed field (no free-form dict)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from skyward_ray.planning.providers import RemoteMachineConfig

if TYPE_CHECKING:
    from skyward_ray.planning.accelerators import Accelerator
    from skyward_ray.planning.offers import Offer


class AWS(RemoteMachineConfig):
    """Amazon EC2. Credentials come from the usual boto3 chain (env, profile, SSO, instance role)."""

    name: ClassVar[str] = "aws"
    defaults: ClassVar[dict[str, object]] = {"ssh_user": "ubuntu"}  # the login user of the default AMI (Ubuntu)
    node_provider: ClassVar[str | None] = "node_providers.aws.node_provider:AWSNodeProvider"
    extra: ClassVar[str | None] = "aws"
    required_modules: ClassVar[tuple[str, ...]] = ("boto3",)

    region: str | None = Field(default=None, description="a region such as 'us-east-1' (offers and launches)")
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

    def list_offers(self, accelerator: "Accelerator | None" = None) -> "list[Offer]":
        from node_providers.aws.offers import list_offers

        return list_offers(self, accelerator)
