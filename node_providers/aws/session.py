"""AWS sessions, credentials and errors: botocore's exceptions become the typed errors the launcher acts on.

Capacity → `CapacityError` (the launcher tries the next offer), credentials/permissions →
`AuthError`, account limits → `QuotaError` (the spot instance limit → `SpotQuotaError`: only the
spot offers are skipped); throttling (`RequestLimitExceeded`) is retried by botocore's adaptive
mode (bounded, with backoff, and a client-side rate limit that slows down while throttled).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from skyward_ray.errors import AuthError, CapacityError, ProvisioningError, QuotaError, SpecError, SpotQuotaError


def retry_config(attempts: int = 8) -> Any:
    from botocore.config import Config

    return Config(retries={"mode": "adaptive", "max_attempts": attempts}, connect_timeout=5, read_timeout=30)


def session_for(profile: str | None, region: str | None) -> Any:
    import boto3

    with aws_errors("open an AWS session"):
        return boto3.Session(profile_name=profile, region_name=region)


def credentials_resolve_offline(profile: str | None = None) -> bool:
    """Do credentials resolve without the instance metadata / container endpoints?

    Offer listing uses this: it must be fast and must never send a request off this machine just to
    find out there are no credentials. Provisioning uses the full chain (instance roles included).
    """
    import botocore.session

    try:
        session = botocore.session.Session(profile=profile)
        resolver = session.get_component("credential_provider")
        for name in ("iam-role", "container-role"):
            with contextlib.suppress(Exception):
                resolver.remove(name)
        return resolver.load_credentials() is not None
    except Exception:
        return False


_CAPACITY_CODES = {"InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
                   "SpotMaxPriceTooLow", "Unsupported", "InsufficientReservedInstanceCapacity"}
_AUTH_CODES = {"UnauthorizedOperation", "AuthFailure", "InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken",
               "RequestExpired", "UnrecognizedClientException", "AccessDenied", "AccessDeniedException", "OptInRequired",
               "Blocked", "PendingVerification"}
_QUOTA_CODES = {"VcpuLimitExceeded", "InstanceLimitExceeded", "MaxSpotFleetRequestCountExceeded", "VolumeLimitExceeded",
                "SecurityGroupLimitExceeded", "KeyPairLimitExceeded", "ResourceLimitExceeded"}
_SPOT_QUOTA_CODES = {"MaxSpotInstanceCountExceeded"}
_THROTTLE_CODES = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException"}

_CREDENTIALS_FIX = ("Fix: run `aws configure` (or `aws sso login`), set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                    "AWS_PROFILE, or pass sky.AWS(profile=...).")


@contextlib.contextmanager
def aws_errors(what: str, where: str = "") -> Iterator[None]:
    """Turn botocore's exceptions into the typed errors the launcher acts on."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    place = f" ({where})" if where else ""
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as error:
        raise AuthError(f"AWS: could not {what}{place}: no usable credentials ({error}). {_CREDENTIALS_FIX}") from None
    except ProfileNotFound as error:
        raise AuthError(f"AWS: {error}. Fix: pass an existing profile to sky.AWS(profile=...) or unset AWS_PROFILE") from None
    except NoRegionError:
        raise SpecError("AWS: no region. Fix: pass sky.AWS(region='us-east-1') or set AWS_DEFAULT_REGION") from None
    except ClientError as error:
        info = error.response.get("Error", {})
        code, message = info.get("Code", "?"), info.get("Message", str(error))
        text = f"AWS: could not {what}{place}: {code}: {message}"
        if code in _SPOT_QUOTA_CODES:
            raise SpotQuotaError(f"{text}. The account's spot instance limit is reached: this provider's spot offers "
                                 "are skipped. Fix: request a higher spot limit in the Service Quotas console, or "
                                 "use allocation='on-demand'") from None
        if code in _CAPACITY_CODES:
            raise CapacityError(text) from None
        if code in _AUTH_CODES:
            raise AuthError(f"{text}. The credentials in use lack a permission or are invalid. {_CREDENTIALS_FIX}") from None
        if code in _QUOTA_CODES:
            raise QuotaError(f"{text}. Fix: request a higher limit in the Service Quotas console, or pick a smaller "
                             "instance or fewer nodes") from None
        if code in _THROTTLE_CODES:
            raise ProvisioningError(f"{text} (still throttled after botocore's retries with backoff)") from None
        raise ProvisioningError(text) from None
    except BotoCoreError as error:
        raise ProvisioningError(f"AWS: could not {what}{place}: {error}") from None


def check_credentials(session: Any) -> str:
    """One cheap call that proves the credentials work; returns the account id."""
    with aws_errors("check the credentials (sts:GetCallerIdentity)"):
        return session.client("sts", config=retry_config(3)).get_caller_identity()["Account"]
