"""The Vast.ai SDK client, and its errors as the typed errors the launcher acts on.

The SDK raises `requests.HTTPError` (after its own retries of 429/5xx and connection errors); the
body names the reason (`{"success": false, "error": "no_such_ask", "msg": ...}`). An ask already
taken → `CapacityError` (the launcher tries the next offer), a bid under the ask's floor →
`CapacityError`, a rejected key → `AuthError`, anything else → `ProvisioningError`. The key is
never part of a message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

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


@contextlib.contextmanager
def vast_errors(what: str, where: str = "") -> Iterator[None]:
    """Turn the SDK's HTTP and transport errors into typed errors."""
    import requests

    place = f" ({where})" if where else ""
    try:
        yield
    except requests.HTTPError as error:
        response = error.response
        status = response.status_code if response is not None else 0
        code, message = _reason(response) if response is not None else ("", str(error))
        text = f"Vast.ai: could not {what}{place}: HTTP {status} {code}: {message}".rstrip(": ")
        if status in (401, 403):
            raise AuthError(f"{text}. The API key was refused. {KEY_FIX}") from None
        if code == "no_such_ask":
            raise AskGoneError(f"{text} (the offer was rented by someone else)") from None
        if code == "invalid_price":
            raise CapacityError(f"{text}. The interruptible bid is under this offer's current minimum bid; "
                                "the market moved since it was listed. Fix: retry (offers are listed again), "
                                "or use allocation='on-demand'") from None
        raise ProvisioningError(text) from None
    except (requests.ConnectionError, requests.Timeout) as error:
        raise AnswerLostError(f"Vast.ai: could not {what}{place}: {type(error).__name__}: {error}") from None
    except requests.RequestException as error:
        raise ProvisioningError(f"Vast.ai: could not {what}{place}: {type(error).__name__}: {error}") from None
