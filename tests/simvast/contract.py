"""What the real Vast.ai API refuses, held by the fake: the create request's published schema and
limits, and the per-endpoint rate limits. Sources (github.com/vast-ai/docs, api-reference/):

- `openapi/yaml/create_instance.yaml` (PUT /api/v0/asks/{id}/): the body's properties (an
  undocumented field is refused here, not ignored), `x-input-validation` (image <= 1,024 characters;
  args + args_str + onstart <= 4,096; label <= 256; each env entry <= 256 and all of env <= 32,768;
  bid price 0.001..128; disk >= 8), and its 400 answer `{"success": false, "error": "invalid_args",
  "msg": ...}`;
- `openapi.yaml`, "Key Quirks": "`onstart` field is limited to 4048 characters";
- `openapi/yaml/label_instance.yaml`: a label set later holds 1,024 characters;
- `rate-limits-and-errors.mdx`: a minimum interval between requests per endpoint and identity
  (key + client IP), HTTP 429 "API requests too frequent", no Retry-After header; the intervals are
  each page's `x-rate-limit` (create: threshold 4.5 s, penalty 12 s; the 429 body of
  create_instance.yaml is `{"detail": "API requests too frequent endpoint threshold=4.5"}`).

The fields Vast's own SDK (vastai 1.9.1, `build_create_instance_payload`, "the one place the CLI,
the SDK and the docs generator agree on what a create-instance call takes") always sends are
accepted too: `client_id` and `extra` are not on the OpenAPI page, yet every SDK rental has them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

CREATE_FIELDS = frozenset({
    # create_instance.yaml, requestBody properties
    "image", "template_hash_id", "label", "disk", "target_reliability", "runtype", "target_state", "price", "env",
    "cancel_unavail", "vm", "onstart", "args", "args_str", "use_jupyter_lab", "jupyter_dir", "python_utf8",
    "lang_utf8", "force", "user", "image_login", "volume_info",
    # sent by Vast's own SDK on every rental (vastai 1.9.1 build_create_instance_payload)
    "client_id", "extra",
})
IMAGE_LIMIT = 1024
ONSTART_LIMIT = 4048
ARGS_LIMIT = 4096
LABEL_LIMIT = 256
LABEL_UPDATE_LIMIT = 1024
ENV_ENTRY_LIMIT = 256
ENV_TOTAL_LIMIT = 32768

# endpoint → (minimum interval s, penalty s, calls per period, period s): each page's x-rate-limit
RATE_LIMITS: dict[str, tuple[float, float, int, float]] = {
    "create": (4.5, 12.0, 0, 0.0),   # create_instance.yaml
    "list": (1.0, 0.0, 0, 0.0),      # show_instances.yaml (GET /api/v1/instances/)
    "destroy": (3.0, 0.0, 0, 0.0),   # destroy_instance.yaml
    "manage": (1.0, 0.0, 0, 0.0),    # label_instance.yaml / manage_instance.yaml
    "search": (0.0, 0.0, 10, 60.0),  # search_offers.yaml: 10 requests per minute
}


def invalid(msg: str) -> tuple[int, Any]:
    """Vast's 400 for a request its validation refuses (create_instance.yaml, rate-limits-and-errors.mdx)."""
    return 400, {"success": False, "error": "invalid_args", "msg": msg}


def _env_entries(env: Any) -> list[str]:
    if isinstance(env, dict):  # the SDK sends a mapping; Vast stores it as docker flags
        return [f"{k}={v}" if not str(k).startswith("-") else str(k) for k, v in env.items()]
    return str(env or "").split()


def create_refusal(body: dict[str, Any]) -> tuple[int, Any] | None:
    """The 400 the real API answers this create body with, or None where it would accept it."""
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        return invalid(f"Invalid args: unexpected field(s) {', '.join(unknown)}")
    if not body.get("image") and not body.get("template_hash_id"):
        return invalid("Invalid args: image is required")
    if len(str(body.get("image") or "")) > IMAGE_LIMIT:
        return invalid(f"Invalid args: image is over {IMAGE_LIMIT} characters")
    onstart = str(body.get("onstart") or "")
    if len(onstart) > ONSTART_LIMIT:
        return invalid(f"Invalid args: onstart is {len(onstart)} characters, over {ONSTART_LIMIT}")
    args = body.get("args") or []
    combined = len(onstart) + len(str(body.get("args_str") or "")) + sum(len(str(a)) for a in args)
    if combined > ARGS_LIMIT:
        return invalid(f"Invalid args: args, args_str and onstart are {combined} characters, over {ARGS_LIMIT}")
    label = body.get("label")
    if label is not None and len(str(label)) > LABEL_LIMIT:
        return invalid(f"Invalid args: label is {len(str(label))} characters, over {LABEL_LIMIT}")
    entries = _env_entries(body.get("env"))
    long_entry = next((e for e in entries if len(e) > ENV_ENTRY_LIMIT), None)
    if long_entry is not None:
        return invalid(f"Invalid args: env entry {long_entry[:24]!r}... is over {ENV_ENTRY_LIMIT} characters")
    if sum(len(e) for e in entries) > ENV_TOTAL_LIMIT:
        return invalid(f"Invalid args: env is over {ENV_TOTAL_LIMIT} characters in all")
    price = body.get("price")
    if price is not None and not 0.001 <= float(price) <= 128.0:
        return invalid("Invalid args: price must be between 0.001 and 128.0")
    if body.get("disk") is not None and float(body["disk"]) < 8.0:
        return invalid("Invalid args: disk must be at least 8 GB")
    return None


def endpoint_of(method: str, parts: list[str]) -> str | None:
    """The rate-limited endpoint a request goes to (None: no published limit)."""
    if method == "PUT" and parts[:3] == ["api", "v0", "asks"]:
        return "create"
    if method == "GET" and parts == ["api", "v1", "instances"]:
        return "list"
    if method == "POST" and parts == ["api", "v0", "bundles"]:
        return "search"
    if parts[:3] == ["api", "v0", "instances"] and len(parts) == 4 and parts[3].isdigit():
        return {"DELETE": "destroy", "PUT": "manage"}.get(method)
    return None


class RateLimiter:
    """Vast's limits: per endpoint and identity, a minimum interval since the previous request (a
    request that comes too soon counts too, and costs the endpoint's penalty), and, where published,
    at most N calls per period. Off until a test turns it on (`SimVast.rate_limited = True`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[tuple[str, str], float] = {}
        self._recent: dict[tuple[str, str], deque[float]] = {}
        self.refused = 0

    def check(self, endpoint: str | None, identity: str) -> tuple[int, Any] | None:
        """The 429 for this request, or None (the request is let through and counted)."""
        if endpoint not in RATE_LIMITS:
            return None
        interval, penalty, calls, period = RATE_LIMITS[endpoint]
        key = (endpoint, identity)
        with self._lock:
            now = time.monotonic()
            recent = self._recent.setdefault(key, deque())
            while recent and now - recent[0] >= period:
                recent.popleft()
            too_soon = now < self._next.get(key, 0.0) or (calls and len(recent) >= calls)
            if too_soon:
                self._next[key] = max(self._next.get(key, 0.0), now + interval + penalty)
                self.refused += 1
                return 429, {"detail": f"API requests too frequent endpoint threshold={interval or period / calls}"}
            self._next[key] = now + interval
            if calls:
                recent.append(now)
            return None
