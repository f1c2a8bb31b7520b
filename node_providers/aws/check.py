"""`skyward-ray check` for AWS: what the first real launch would meet, found with reads and a DryRun.

In order: the credentials and where boto3 found them; that they work (sts:GetCallerIdentity); the
region(s) a pool would use; per region, the vCPU quotas that gate GPU instances (Service Quotas, per
family and market: a new account often has 0, and a launch then fails only after planning);
`RunInstances(DryRun=True)` for the smallest GPU offer (EC2 answers `DryRunOperation` when the call
would be allowed, `UnauthorizedOperation` when not, and starts nothing); and the driver's public IPv4
as the pool's security group will see it (`network.driver_public_cidr`, as `prepare` finds it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from node_providers.aws import network
from node_providers.aws.session import aws_errors, check_credentials, retry_config, session_for
from skyward_ray.errors import SkywardError, SpecError
from skyward_ray.planning.check import Finding

if TYPE_CHECKING:
    from node_providers.aws.config import AWS

#: the EC2 vCPU quotas for GPU instances (Service Quotas codes), per family and market
GPU_QUOTAS: dict[tuple[str, str], str] = {
    ("G and VT", "on-demand"): "L-DB2E81BA",
    ("P", "on-demand"): "L-417A185B",
    ("G and VT", "spot"): "L-3819A6DF",
    ("P", "spot"): "L-7212CCBC",
}
MAX_REGIONS = 3  # a check stays a few seconds: more regions are named, not probed
CREDENTIALS_FIX = ("run `aws configure` (or `aws sso login`), set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                   "AWS_PROFILE, or pass sky.AWS(profile=...)")
_SOURCES = {"env": "the environment (AWS_ACCESS_KEY_ID)", "shared-credentials-file": "~/.aws/credentials",
            "config-file": "~/.aws/config", "sso": "AWS SSO", "iam-role": "the instance's role (metadata service)",
            "container-role": "the container's role", "assume-role": "an assumed role (profile)"}


def probe(config: "AWS") -> list[Finding]:
    """Every AWS finding, stopping where the rest could not be read (no credentials, refused keys)."""
    session = session_for(config.profile, None)
    credentials = session.get_credentials()
    if credentials is None:
        return [Finding.fail("credentials", "none found (environment, profile, SSO, instance role)", CREDENTIALS_FIX)]
    source = _SOURCES.get(credentials.method, credentials.method)
    profile = f", profile {config.profile}" if config.profile else ""
    findings = [Finding.ok("credentials", f"found in {source}{profile}")]
    try:
        account = check_credentials(session)
    except SkywardError as error:
        return [*findings, Finding.fail("valid", _first_sentence(error), CREDENTIALS_FIX)]
    findings.append(Finding.ok("valid", f"account {account} (sts:GetCallerIdentity)"))
    regions = config.search_regions()
    if not regions:
        return [*findings, Finding.warn(
            "regions", "no region configured: plans compare every region and quotas cannot be checked here",
            "set AWS_DEFAULT_REGION, or pass sky.AWS(region='us-east-1') (then run the check again)"),
            _public_address(config)]
    more = f" (checking the first {MAX_REGIONS})" if len(regions) > MAX_REGIONS else ""
    findings.append(Finding.ok("regions", ", ".join(regions) + more))
    for region in regions[:MAX_REGIONS]:
        regional = session_for(config.profile, region)
        findings.append(quota_finding(regional, region))
        findings.append(dry_run_finding(config, regional, region))
    findings.append(_public_address(config))
    return findings


def _first_sentence(error: BaseException) -> str:
    return str(error).split(". Fix:")[0].split(". The credentials")[0]


def quota_values(session: Any, region: str) -> dict[tuple[str, str], float | None]:
    """(family, market) → the region's vCPU quota; None where it could not be read."""
    client = session.client("service-quotas", region_name=region, config=retry_config(2))
    values: dict[tuple[str, str], float | None] = {}
    for key, code in GPU_QUOTAS.items():
        values[key] = _quota(client, code)
    return values


def _quota(client: Any, code: str) -> float | None:
    """The applied value; AWS's default where none was ever applied (NoSuchResourceException)."""
    from botocore.exceptions import ClientError

    try:
        return float(client.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchResourceException":
            return None
    try:
        return float(client.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
    except ClientError:
        return None


def quota_finding(session: Any, region: str) -> Finding:
    """One line per region: fail when no GPU family has vCPUs in any market, warn for each zero."""
    values = quota_values(session, region)
    what = f"quotas {region}"
    if all(value is None for value in values.values()):
        return Finding.warn(what, "could not read the EC2 vCPU quotas (servicequotas:GetServiceQuota)",
                            "allow servicequotas:GetServiceQuota, or look in the Service Quotas console")
    detail = "; ".join(f"{family} {market} {'?' if value is None else f'{value:g}'} vCPUs"
                       for (family, market), value in values.items())
    zero = [f"{family} {market} ({GPU_QUOTAS[(family, market)]})" for (family, market), value in values.items()
            if value == 0]
    fix = ("request an increase in the Service Quotas console (EC2) for " + ", ".join(zero)
           + f" in {region}; approval can take a day") if zero else ""
    if len(zero) == len(values):
        return Finding.fail(what, detail + ": no GPU instance can start", fix)
    return Finding.warn(what, detail, fix) if zero else Finding.ok(what, detail)


def smallest_gpu_type(config: "AWS", region: str) -> str | None:
    """The instance type of the region's smallest GPU offer (fewest vCPUs, then cheapest)."""
    offers = [o for o in config.model_copy(update={"region": region, "regions": None}).list_offers()
              if o.region == region and o.accelerator]
    if not offers:
        return None
    return min(offers, key=lambda o: (o.vcpus or 0.0, o.on_demand_price or o.price)).instance_type


def dry_run_finding(config: "AWS", session: Any, region: str) -> Finding:
    """RunInstances with DryRun=True for the smallest GPU offer: allowed, denied, or why not asked."""
    from botocore.exceptions import ClientError

    what = f"launch {region}"
    instance_type = smallest_gpu_type(config, region)
    if instance_type is None:
        return Finding.warn(what, "no GPU offer listed in this region", "pick another region: sky.AWS(region=...)")
    ec2 = session.client("ec2", region_name=region, config=retry_config(2))
    try:
        with aws_errors("find the boot image", region):
            image = network.boot_image(ec2, instance_type, config.ami).image_id
    except SkywardError as error:
        return Finding.fail(what, f"no image for {instance_type}: {error}", "pass sky.AWS(ami='ami-...')")
    try:
        ec2.run_instances(DryRun=True, ImageId=image, InstanceType=instance_type, MinCount=1, MaxCount=1)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code == "DryRunOperation":
            return Finding.ok(what, f"RunInstances {instance_type} would be allowed (DryRun)")
        message = error.response.get("Error", {}).get("Message", "")
        if code == "UnauthorizedOperation":
            return Finding.fail(what, f"RunInstances {instance_type} is denied (DryRun: {code})",
                                "grant these credentials ec2:RunInstances, ec2:CreateTags, ec2:CreateSecurityGroup, "
                                "ec2:AuthorizeSecurityGroupIngress, ec2:ImportKeyPair and ec2:TerminateInstances")
        return Finding.warn(what, f"RunInstances {instance_type} (DryRun) answered {code}: {message[:160]}")
    return Finding.warn(what, f"RunInstances {instance_type} (DryRun) answered without DryRunOperation")


def _public_address(config: "AWS") -> Finding:
    """The source address the cluster's SSH rule will admit."""
    if config.ssh_cidr:
        return Finding.ok("ssh source", f"{config.ssh_cidr} (sky.AWS(ssh_cidr=...))")
    if config.driver_security_group:
        return Finding.ok("ssh source", f"members of {config.driver_security_group} (driver_security_group)")
    try:
        cidr = network.driver_public_cidr()
    except SpecError as error:
        return Finding.fail("ssh source", str(error).split(" Fix: ")[0], "pass sky.AWS(ssh_cidr='<your public ip>/32')")
    return Finding.ok("ssh source", f"this machine's public IPv4 {cidr.removesuffix('/32')} (the SSH rule admits it)")
