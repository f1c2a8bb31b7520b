"""AWS sessions, credentials and errors: botocore's exceptions become the typed errors the launcher acts on.

Capacity → `CapacityError` (the launcher tries the next offer), credentials/permissions →
`AuthError`, account limits → `QuotaError` (the spot instance limit → `SpotQuotaError`: only the
spot offers are skipped), an unknown instance id → `NotFoundError`; throttling
(`RequestLimitExceeded`) is retried by botocore's adaptive mode (bounded, with backoff, and a
client-side rate limit that slows down while throttled).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from skyward_ray.cluster import api_log
from skyward_ray.cluster.contract import NotFoundError
from skyward_ray.cluster.remote_cloud import typed_errors
from skyward_ray.errors import AuthError, CapacityError, ProvisioningError, QuotaError, SpecError, SpotQuotaError


def retry_config(attempts: int = 8) -> Any:
    from botocore.config import Config

    return Config(retries={"mode": "adaptive", "max_attempts": attempts}, connect_timeout=5, read_timeout=30)


def session_for(profile: str | None, region: str | None) -> Any:
    import boto3

    with aws_errors("open an AWS session"):
        session = boto3.Session(profile_name=profile, region_name=region)
    log_calls(session)
    return session


_STARTED = "skyward_started"  # the request context's key for when a call began


def log_calls(session: Any) -> None:
    """Every API call of clients made from `session` goes to the first-contact log (`api_log`):
    service, operation, duration and outcome, from botocore's own events (no parameter, no header:
    nothing signed or secret is read)."""
    session.events.register("before-call", _call_started)
    session.events.register("after-call", _call_answered)
    session.events.register("after-call-error", _call_failed)


def _operation(event_name: str) -> str:
    _, service, operation = (event_name.split(".", 2) + ["?", "?"])[:3]
    return f"{service}:{operation}"


def _elapsed(context: Any) -> float:
    started = context.get(_STARTED) if isinstance(context, dict) else None
    return time.monotonic() - started if started is not None else 0.0


def _call_started(context: Any = None, **_: Any) -> None:
    if isinstance(context, dict):
        context[_STARTED] = time.monotonic()


def _call_answered(event_name: str = "", http_response: Any = None, parsed: Any = None, context: Any = None,
                   **_: Any) -> None:
    status = getattr(http_response, "status_code", 0)
    error = (parsed or {}).get("Error", {}) if isinstance(parsed, dict) else {}
    outcome = "ok" if status < 300 else f"HTTP {status} {error.get('Code', '?')}: {error.get('Message', '')}"
    api_log.record_call("aws", _operation(event_name), _elapsed(context), outcome)


def _call_failed(event_name: str = "", exception: BaseException | None = None, context: Any = None,
                 **_: Any) -> None:
    outcome = api_log.outcome_of(exception) if exception is not None else "error"
    api_log.record_call("aws", _operation(event_name), _elapsed(context), outcome)


def configured_region(profile: str | None = None) -> str | None:
    """The region the user configured for AWS tools, resolved as boto3 resolves it: AWS_DEFAULT_REGION,
    then the profile's `region` in the AWS config file; then AWS_REGION (the other AWS SDKs' variable,
    which boto3 itself ignores). None when none is set. Reads no network and needs no credentials;
    without botocore (the `aws` extra) only the two variables are read."""
    try:
        import botocore.session
    except ImportError:
        return os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or None
    try:
        region = botocore.session.Session(profile=profile).get_config_variable("region")
    except Exception:  # an unknown profile: the launch names that error; planning falls back to the variables
        region = os.environ.get("AWS_DEFAULT_REGION")
    return region or os.environ.get("AWS_REGION") or None


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


_NOT_FOUND_CODES = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}


def aws_errors(what: str, where: str = "") -> contextlib.AbstractContextManager[None]:
    """Turn botocore's exceptions into the typed errors the launcher acts on."""
    doing = what + (f" ({where})" if where else "")
    return typed_errors(lambda error: _typed(error, doing))


def _typed(error: BaseException, doing: str) -> BaseException | None:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return AuthError(f"AWS: could not {doing}: no usable credentials ({error}). {_CREDENTIALS_FIX}")
    if isinstance(error, ProfileNotFound):
        return AuthError(f"AWS: {error}. Fix: pass an existing profile to sky.AWS(profile=...) or unset AWS_PROFILE")
    if isinstance(error, NoRegionError):
        return SpecError("AWS: no region. Fix: pass sky.AWS(region='us-east-1') or set AWS_DEFAULT_REGION")
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        code, message = info.get("Code", "?"), info.get("Message", str(error))
        return _client_error(code, f"AWS: could not {doing}: {code}: {message}")
    if isinstance(error, BotoCoreError):
        return ProvisioningError(f"AWS: could not {doing}: {error}")
    return None


def _client_error(code: str, text: str) -> BaseException:
    if code in _SPOT_QUOTA_CODES:
        return SpotQuotaError(f"{text}. The account's spot instance limit is reached: this provider's spot offers "
                              "are skipped. Fix: request a higher spot limit in the Service Quotas console, or "
                              "use allocation='on-demand'")
    if code in _CAPACITY_CODES:
        return CapacityError(text)
    if code in _AUTH_CODES:
        return AuthError(f"{text}. The credentials in use lack a permission or are invalid. {_CREDENTIALS_FIX}")
    if code in _QUOTA_CODES:
        return QuotaError(f"{text}. Fix: request a higher limit in the Service Quotas console, or pick a smaller "
                          "instance or fewer nodes")
    if code in _THROTTLE_CODES:
        return ProvisioningError(f"{text} (still throttled after botocore's retries with backoff)")
    if code in _NOT_FOUND_CODES:
        return NotFoundError(text)
    return ProvisioningError(text)


def check_credentials(session: Any) -> str:
    """One cheap call that proves the credentials work; returns the account id."""
    with aws_errors("check the credentials (sts:GetCallerIdentity)"):
        return session.client("sts", config=retry_config(3)).get_caller_identity()["Account"]
