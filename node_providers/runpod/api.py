"""RunPod's API: the key, the GraphQL and REST calls (`transport.py`), and their errors → typed errors.

GraphQL calls are `POST {RUNPOD_API_BASE_URL or https://api.runpod.io}/graphql` with query text
the SDK's generators write with arguments pasted in (no variables), so everything put into a query
here is checked to be safe to paste: no `"`, `\\` or newline (boot scripts travel base64-encoded).
REST calls (`rest.runpod.io/v1`, the only API with global networking) carry JSON bodies. The key is
passed to every call, never set as the SDK's process-wide `runpod.api_key`, never logged, and never
sent to a pod. HTTP 429 is waited out in `transport.py`.

Errors: HTTP 401 (a bad or revoked key) → `AuthError`; RunPod's "no longer any instances
available", a bid under the floor, and global networking unavailable where asked → `CapacityError`
(the launcher tries the next offer); any other → `ProvisioningError`; RunPod's "not found" for a pod
id (or REST 404) → `NotFoundError`; still rate-limited after the backoff → `ProvisioningError`.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from node_providers.runpod import transport
from node_providers.runpod.transport import RateLimited, RestError
from skyward_ray.cluster.contract import NotFoundError
from skyward_ray.cluster.remote_cloud import typed_errors
from skyward_ray.errors import AuthError, CapacityError, ProvisioningError, QuotaError

CAPACITY_MESSAGE = "There are no longer any instances available with the requested specifications"
_BID_PATTERN = re.compile(r"\bbid\b.*\b(low|minimum|below|lower)\b|\b(low|minimum|below|lower)\b.*\bbid\b", re.I | re.S)
_QUOTA_PATTERN = re.compile(r"\b(balance|spend limit|quota|too many pods)\b", re.I)
_AUTH_FIX = ("Fix: pass sky.RunPod(api_key=...) or set RUNPOD_API_KEY to a key from "
             "https://www.console.runpod.io/user/settings (API Keys)")
_UNSAFE = re.compile(r'["\\\n\r]')
_NOT_FOUND_PATTERN = re.compile(r"not found|does not exist", re.I)
_NO_NETWORK_PATTERN = re.compile(r"global ?networking", re.I)


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


def runpod_errors(what: str, where: str = "") -> contextlib.AbstractContextManager[None]:
    """The SDK's exceptions (and the HTTP layer's) as the typed errors the launcher acts on."""
    doing = what + (f" ({where})" if where else "")
    return typed_errors(lambda error: _typed(error, doing))


def _typed(error: BaseException, doing: str) -> BaseException | None:
    import requests
    transport.load_sdk()
    from runpod import error as sdk_error

    message = str(error)
    if isinstance(error, sdk_error.AuthenticationError):
        return AuthError(f"RunPod: could not {doing}: the API key was refused ({error}). {_AUTH_FIX}")
    if isinstance(error, RestError):
        return _typed_rest(error, doing)
    if isinstance(error, RateLimited):
        return ProvisioningError(f"RunPod: could not {doing}: {error}. Fix: fewer pools on this key at once")
    if isinstance(error, sdk_error.QueryError):
        if CAPACITY_MESSAGE.lower() in message.lower():
            return CapacityError(f"RunPod: no capacity to {doing}: {message}")
        if _BID_PATTERN.search(message):
            return CapacityError(f"RunPod: the interruptible bid was refused to {doing}: {message}. The market "
                                 "moved above the listed price; another offer is tried")
        kind = QuotaError if _QUOTA_PATTERN.search(message) else (
            NotFoundError if _NOT_FOUND_PATTERN.search(message) else ProvisioningError)
        return kind(f"RunPod: could not {doing}: {message}")
    if isinstance(error, requests.RequestException):
        return ProvisioningError(f"RunPod: could not {doing}: {type(error).__name__}: {error}")
    if isinstance(error, ValueError):  # the SDK's own argument checks, or a body that is not JSON
        return ProvisioningError(f"RunPod: could not {doing}: {error}")
    return None


def _typed_rest(error: RestError, doing: str) -> BaseException:
    message = error.message
    if error.status in (401, 403) and not _NOT_FOUND_PATTERN.search(message):
        return AuthError(f"RunPod: could not {doing}: the API key was refused ({message}). {_AUTH_FIX}")
    if error.status == 404:
        return NotFoundError(f"RunPod: could not {doing}: {message}")
    if CAPACITY_MESSAGE.lower() in message.lower() or _NO_NETWORK_PATTERN.search(message):
        return CapacityError(f"RunPod: no capacity to {doing}: {message}")
    kind = QuotaError if error.status == 402 or _QUOTA_PATTERN.search(message) else ProvisioningError
    return kind(f"RunPod: could not {doing}: {error}")


def graphql(key: str, query: str) -> dict[str, Any]:
    """One GraphQL call with this key; returns the response's `data`."""
    return transport.graphql(key, query)


def pod_log(key: str, pod_id: str, lines: int) -> str:
    """The pod's container log, its last `lines` lines (RunPod's v2 log stream, `transport.pod_log`)."""
    return "\n".join(transport.pod_log(key, pod_id, lines))


def rest(key: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One REST pod API call with this key; returns the decoded body."""
    return transport.rest(key, method, path, body)
