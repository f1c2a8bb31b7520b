"""RunPod's API through the runpod SDK: the key, the GraphQL calls, and SDK errors → typed errors.

Every call is `POST {RUNPOD_API_BASE_URL or https://api.runpod.io}/graphql` with the query text
pasted in (the SDK sends no variables), so everything put into a query here is checked to be safe
to paste: no `"`, `\\` or newline (boot scripts travel base64-encoded). The key is passed to every
call (`run_graphql_query(query, api_key=...)`), never set as the SDK's process-wide `runpod.api_key`,
never logged, and never sent to a pod.

Errors: HTTP 401 (a bad or revoked key) → `AuthError`; RunPod's "no longer any instances
available" and a bid under the floor → `CapacityError` (the launcher tries the next offer); any
other → `ProvisioningError`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from skyward_ray.errors import AuthError, CapacityError, ProvisioningError, QuotaError

CAPACITY_MESSAGE = "There are no longer any instances available with the requested specifications"
_BID_PATTERN = re.compile(r"\bbid\b.*\b(low|minimum|below|lower)\b|\b(low|minimum|below|lower)\b.*\bbid\b", re.I | re.S)
_QUOTA_PATTERN = re.compile(r"\b(balance|spend limit|quota|too many pods)\b", re.I)
_AUTH_FIX = ("Fix: pass sky.RunPod(api_key=...) or set RUNPOD_API_KEY to a key from "
             "https://www.console.runpod.io/user/settings (API Keys)")
_UNSAFE = re.compile(r'["\\\n\r]')


def api_key(configured: str | None) -> str | None:
    """The key to use: the config's, else RUNPOD_API_KEY, else the SDK's credentials file; None without one."""
    if configured:
        return configured
    if os.environ.get("RUNPOD_API_KEY"):
        return os.environ["RUNPOD_API_KEY"]
    path = Path.home() / ".runpod" / "config.toml"
    if path.is_file():
        with contextlib.suppress(Exception):
            import tomllib

            return (tomllib.loads(path.read_text()).get("default") or {}).get("api_key") or None
    return None


def require_key(configured: str | None) -> str:
    key = api_key(configured)
    if not key:
        raise AuthError(f"RunPod: no API key. {_AUTH_FIX}")
    return key


def safe(value: str, what: str) -> str:
    """A value that may be pasted into the SDK's query text as is."""
    if _UNSAFE.search(value):
        raise ProvisioningError(f"RunPod: {what} contains a quote, backslash or newline, which the SDK's query "
                                f"text cannot carry: {value[:60]!r}")
    return value


@contextlib.contextmanager
def runpod_errors(what: str, where: str = "") -> Iterator[None]:
    """The SDK's exceptions (and the HTTP layer's) as the typed errors the launcher acts on."""
    import requests
    from runpod import error as sdk_error

    place = f" ({where})" if where else ""
    try:
        yield
    except sdk_error.AuthenticationError as error:
        raise AuthError(f"RunPod: could not {what}{place}: the API key was refused ({error}). {_AUTH_FIX}") from None
    except sdk_error.QueryError as error:
        message = str(error)
        if CAPACITY_MESSAGE.lower() in message.lower():
            raise CapacityError(f"RunPod: no capacity to {what}{place}: {message}") from None
        if _BID_PATTERN.search(message):
            raise CapacityError(f"RunPod: the interruptible bid was refused to {what}{place}: {message}. The "
                                "market moved above the listed price; another offer is tried") from None
        if _QUOTA_PATTERN.search(message):
            raise QuotaError(f"RunPod: could not {what}{place}: {message}") from None
        raise ProvisioningError(f"RunPod: could not {what}{place}: {message}") from None
    except requests.RequestException as error:
        raise ProvisioningError(f"RunPod: could not {what}{place}: {type(error).__name__}: {error}") from None
    except ValueError as error:  # the SDK's own argument checks, or a body that is not JSON
        raise ProvisioningError(f"RunPod: could not {what}{place}: {error}") from None


def graphql(key: str, query: str) -> dict[str, Any]:
    """One GraphQL call with this key; returns the response's `data`."""
    from runpod.api.graphql import run_graphql_query

    return run_graphql_query(query, api_key=key).get("data") or {}
