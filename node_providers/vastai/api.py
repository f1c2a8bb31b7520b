"""The Vast.ai SDK client, and its errors as the typed errors the launcher acts on.

The SDK raises `requests.HTTPError` (after its own retries of 429/5xx and connection errors); the
body names the reason (`{"success": false, "error": "no_such_ask", "msg": ...}`). An ask already
taken → `CapacityError` (the launcher tries the next offer), a bid under the ask's floor →
`CapacityError`, a rejected key → `AuthError`, an unknown instance (404) → `NotFoundError`,
anything else → `ProvisioningError`. The key is
never part of a message.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from skyward_ray.cluster import api_log
from skyward_ray.cluster.contract import NotFoundError
from skyward_ray.cluster.remote_cloud import typed_errors
from skyward_ray.errors import AuthError, CapacityError, ProvisioningError

if TYPE_CHECKING:
    from node_providers.vastai.config import VastAI

KEY_FIX = ("Fix: create a key at https://cloud.vast.ai/manage-keys/ and set VAST_API_KEY, or pass "
           "sky.VastAI(api_key=...)")


class AskGoneError(CapacityError):
    """The ask (offer) was rented by someone else between listing and launch (`no_such_ask`)."""


class AnswerLostError(ProvisioningError):
    """No answer came (connection dropped, timeout): the request may or may not have taken effect."""


def client(config: "VastAI", retry: int = 3) -> Any:
    """A `vastai.VastAI` for this config's key and server (the key is never logged).

    The SDK resends a request after a transport error; `retry=1` turns that off for calls that
    are not idempotent (renting an instance): a resent rental whose first answer was lost rents a
    second instance.
    """
    key = config.resolved_api_key()
    if not key:
        raise AuthError(f"Vast.ai: no API key. {KEY_FIX}")
    api_log.register_secret(key)  # never in the first-contact log (the SDK puts it in its URLs)
    from vastai import VastAI as VastSDK

    return VastSDK(api_key=key, server_url=config.server_url.rstrip("/"), retry=retry, raw=True, quiet=True)


def _reason(response: Any) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", (response.text or "")[:200]
    if not isinstance(body, dict):
        return "", str(body)[:200]
    return str(body.get("error") or ""), str(body.get("msg") or body.get("detail") or "")


def vast_errors(what: str, where: str = "") -> contextlib.AbstractContextManager[None]:
    """Turn the SDK's HTTP and transport errors into typed errors."""
    doing = what + (f" ({where})" if where else "")
    return typed_errors(lambda error: _typed(error, doing))


def _typed(error: BaseException, doing: str) -> BaseException | None:
    import requests

    if isinstance(error, requests.HTTPError):
        response = error.response
        status = response.status_code if response is not None else 0
        code, message = _reason(response) if response is not None else ("", str(error))
        text = f"Vast.ai: could not {doing}: HTTP {status} {code}: {message}".rstrip(": ")
        if status in (401, 403):
            return AuthError(f"{text}. The API key was refused. {KEY_FIX}")
        if code == "no_such_ask":
            return AskGoneError(f"{text} (the offer was rented by someone else)")
        if code == "invalid_price":
            return CapacityError(f"{text}. The interruptible bid is under this offer's current minimum bid; the "
                                 "market moved since it was listed. Fix: retry (offers are listed again), or use "
                                 "allocation='on-demand'")
        return (NotFoundError if status == 404 else ProvisioningError)(text)
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return AnswerLostError(f"Vast.ai: could not {doing}: {type(error).__name__}: {error}")
    if isinstance(error, requests.RequestException):
        return ProvisioningError(f"Vast.ai: could not {doing}: {type(error).__name__}: {error}")
    return None
