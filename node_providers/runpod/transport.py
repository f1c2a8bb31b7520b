"""HTTP to RunPod's two APIs, GraphQL and the REST pod API, with `requests` (the runpod SDK's own HTTP
client), backing off when RunPod says "too many requests".

Why not the SDK's `run_graphql_query`: it never looks at the status code except 401, so an HTTP 429
whose body has no `errors` comes back as a success with no `data`, and a pod listing would read as
"no pods" (a teardown would then stop looking). Here every call sees its status:

- 429: wait and send again, `Retry-After` seconds when RunPod gives them (its v2 API documents the
  header, github.com/runpod/docs api-reference-v2/openapi.json `TooManyRequestsError`), else
  exponential backoff from `FIRST_WAIT_S`; at most `RATE_LIMIT_BUDGET_S` seconds of waiting per call,
  then `RateLimited`;
- GraphQL: 401 → the SDK's `AuthenticationError`, a body with `errors` → the SDK's `QueryError` (the
  same types the SDK raises, so `api.py` maps one set of errors);
- REST: any status outside 2xx → `RestError` with RunPod's message (`error` in the body, runpodctl's
  `APIError`).

Addresses: GraphQL at `RUNPOD_API_BASE_URL` (the SDK's variable) + `/graphql`; REST at
`RUNPOD_API_URL` (runpodctl's, `internal/configenv`), default `https://rest.runpod.io/v1`; a pod's log
at the v2 API on the GraphQL host (`GET /v2/pods/{id}/logs`, `pod_log`). All read on every call.
Requests carry `Authorization: Bearer <key>` and the SDK's User-Agent.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
import time
from typing import Any

from skyward_ray.cluster import api_log

GRAPHQL_URL_ENV = "RUNPOD_API_BASE_URL"
REST_URL_ENV = "RUNPOD_API_URL"
DEFAULT_GRAPHQL = "https://api.runpod.io"
DEFAULT_REST = "https://rest.runpod.io/v1"
TIMEOUT_S = 30.0
FIRST_WAIT_S = 1.0
MAX_WAIT_S = 16.0
RATE_LIMIT_BUDGET_S = 90.0
LOG_TAIL_MAX = 5000  # the most lines `getPodLogs` backfills (its `tail` parameter: 0..5000)
LOG_IDLE_S = 2.0  # the stream quiet for this long: the backfill is in
LOG_READ_CAP_S = 20.0  # a stream that keeps sending lines is read this long at most


class RateLimited(Exception):
    """RunPod kept answering 429 for longer than this call may wait."""


class RestError(Exception):
    """A REST call answered outside 2xx: its status and RunPod's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def load_sdk() -> None:
    """Import the runpod SDK once, undoing what its import does to this process's logging: it adds
    a StreamHandler to the root logger at INFO, which would print every `skyward_ray` status line a
    second time (and every other library's INFO records) in the user's program."""
    if "runpod" in sys.modules:
        return
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import runpod  # noqa: F401
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def graphql(key: str, query: str) -> dict[str, Any]:
    """One GraphQL call (the query text as the SDK sends it, no variables); returns its `data`."""
    load_sdk()
    from runpod import error as sdk_error

    url = os.environ.get(GRAPHQL_URL_ENV) or DEFAULT_GRAPHQL
    with api_log.timed_call("runpod", graphql_operation(query)):
        response = _send("POST", f"{url.rstrip('/')}/graphql", key, data=json.dumps({"query": query}))
        if response.status_code == 401:
            raise sdk_error.AuthenticationError("Unauthorized request, please check your API key.")
        body = _json(response)
        if isinstance(body, dict) and body.get("errors"):
            raise sdk_error.QueryError(str(body["errors"][0].get("message")), query)
        if not response.ok or not isinstance(body, dict):
            raise RestError(response.status_code, _message(body, response))
    return body.get("data") or {}


def rest(key: str, method: str, path: str, body: dict[str, Any] | None = None,
         params: dict[str, str] | None = None) -> Any:
    """One REST call (`path` under the REST base, e.g. "/pods"); returns the decoded body (None if empty)."""
    url = (os.environ.get(REST_URL_ENV) or DEFAULT_REST).rstrip("/") + path
    with api_log.timed_call("runpod", f"{method} {path}"):
        response = _send(method, url, key, data=None if body is None else json.dumps(body), params=params)
        decoded = _json(response) if response.content else None
        if not response.ok:
            raise RestError(response.status_code, _message(decoded, response))
    return decoded


def pod_log(key: str, pod_id: str, tail: int) -> list[str]:
    """The pod's container log, its last `tail` lines (RunPod sends at most `LOG_TAIL_MAX`).

    RunPod's v2 API streams it as Server-Sent Events (api-reference-v2/openapi.json `getPodLogs`:
    `GET /v2/pods/{id}/logs?source=container&tail=N`, each event's `data` a JSON `{ts, source, line}`)
    and keeps the stream open for new lines, so there is no end to wait for: reading stops once the
    stream was quiet for `LOG_IDLE_S` (the backfill is in), or after `LOG_READ_CAP_S`. A 404 is
    `RestError` like any REST call's."""
    import requests
    import urllib3

    url = f"{(os.environ.get(GRAPHQL_URL_ENV) or DEFAULT_GRAPHQL).rstrip('/')}/v2/pods/{pod_id}/logs"
    params = {"source": "container", "tail": str(max(0, min(tail, LOG_TAIL_MAX)))}
    lines: list[str] = []
    with api_log.timed_call("runpod", "GET /v2/pods/{id}/logs"):
        response = _send("GET", url, key, params=params, stream=True, timeout=(TIMEOUT_S, LOG_IDLE_S),
                         extra_headers={"Accept": "text/event-stream", "Accept-Encoding": "identity"})
        try:
            if not response.ok:
                raise RestError(response.status_code, _message(_json(response), response))
            raw = response.raw
            # one read of what has arrived (urllib3 2's `read1`; a byte at a time on an older urllib3), not a
            # wait for a full buffer of a stream that never ends
            read = getattr(raw, "read1", None) or (lambda size: raw.read(1))
            pending, started = b"", time.monotonic()
            while time.monotonic() - started < LOG_READ_CAP_S:
                try:
                    chunk = read(65536)
                except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError):
                    break  # quiet for LOG_IDLE_S: the backfill is in
                if not chunk:
                    break  # the stream ended
                *complete, pending = (pending + chunk).split(b"\n")
                for event_line in complete:
                    line = _event_line(event_line)
                    if line is not None:
                        lines.append(line)
        finally:
            response.close()
    return lines


def _event_line(raw: bytes) -> str | None:
    """The log line of one SSE `data:` field (None for an `id:`, a comment, a blank line, other JSON)."""
    text = raw.decode(errors="replace").rstrip("\r")
    if not text.startswith("data:"):
        return None
    try:
        event = json.loads(text[5:].strip())
    except ValueError:
        return None
    line = event.get("line") if isinstance(event, dict) else None
    return line if isinstance(line, str) else None


_OPERATION = re.compile(r"^\s*(query|mutation)\b\s*(\w*)[^{]*\{\s*(\w+)")


def graphql_operation(query: str) -> str:
    """A GraphQL call's name for the first-contact log: `query myPods`, `mutation podTerminate`
    (the named operation, else its first field); never the arguments (an env, a key)."""
    match = _OPERATION.match(query)
    return f"{match.group(1)} {match.group(2) or match.group(3)}" if match else "graphql"


def _send(method: str, url: str, key: str, timeout: Any = TIMEOUT_S, extra_headers: dict[str, str] | None = None,
          **kwargs: Any) -> Any:
    """One call, 429s waited out (within `RATE_LIMIT_BUDGET_S`)."""
    import requests
    load_sdk()
    from runpod.user_agent import USER_AGENT

    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "Authorization": f"Bearer {key}",
               **(extra_headers or {})}
    api_log.register_secret(key)
    waited, attempt = 0.0, 0
    while True:
        response = requests.request(method, url, headers=headers, timeout=timeout, **kwargs)
        if response.status_code != 429:
            return response
        response.close()
        pause = retry_after(response.headers.get("Retry-After"), attempt)
        if waited + pause > RATE_LIMIT_BUDGET_S:
            raise RateLimited(f"RunPod answered 429 (too many requests) for {waited:.0f}s of backoff")
        time.sleep(pause)
        waited += pause
        attempt += 1


def retry_after(header: str | None, attempt: int) -> float:
    """Seconds to wait before the next try: RunPod's `Retry-After` if it gave whole seconds, else
    exponential backoff with jitter (so several pollers do not retry in step)."""
    if header and header.strip().isdigit():
        return max(float(header.strip()), 0.1)
    return min(FIRST_WAIT_S * 2 ** attempt, MAX_WAIT_S) * random.uniform(0.75, 1.25)


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _message(body: Any, response: Any) -> str:
    if isinstance(body, dict):
        for field in ("error", "detail", "message", "title"):
            if body.get(field):
                return str(body[field])
    return (response.text or response.reason or "").strip()[:300]
