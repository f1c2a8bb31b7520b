"""A local Vast.ai: the REST endpoints the `vastai` SDK (1.9.1) calls, on a real HTTP server.

Only the network peer is fake: the code under test uses the real SDK, pointed here by
`server_url`. Implemented, as the SDK sends and reads them:

- `POST /api/v0/bundles/` (search_offers): a JSON query `{field: {op: value}}` with ops
  eq/neq/gt/gte/lt/lte/in/notin (numbers may arrive as strings), `order`, `limit`, `type`;
  answers `{"offers": [...]}` with the asks not yet rented;
- `PUT /api/v0/asks/{id}/` (create_instance): `{"success": true, "new_contract": <id>}`; an ask
  already rented (or never listed) → 404 `no_such_ask`; an interruptible bid (`price`) under the
  ask's `min_bid` → 400 `invalid_price`;
- `GET /api/v1/instances/` (show_instances): pages of `limit` rows, `next_token` / `after_token`;
  every row carries a numeric `start_date` and `extra_env` as `[[key, value], ...]` as the SDK needs;
  `actual_status` goes null → "loading" → "running" (or "stopped" when interrupted);
- `PUT /api/v0/instances/{id}/` (label_instance, stop): `{"success": true}`;
- `PUT /api/v0/instances/request_logs/{id}/` (logs): a `result_url` whose body is the tail of the
  instance's container output;
- `DELETE /api/v0/instances/{id}/` (destroy_instance): the instance leaves the listing and its
  ask is listed again;
- `GET /api/v0/users/current` (show_user): the account and its `credit` (`credit` here).

Every request needs `Authorization: Bearer <key>`: the account's key may do everything; an
instance's own key (`CONTAINER_API_KEY` in its container) may only destroy or read that instance;
anything else → 401, a destroyed instance's key too (what Vast.ai answers then is undocumented;
calls record it as `destroyed:<id>`). Faults: `fail_next_create(code)`, `lose_next_create_answer()` (rented, but the
connection drops before the answer), `take(ask)` (someone else rents it),
`raise_floor(ask)`, `stuck_loading` (boots never finish), `interrupt(id)`, `throttle_next(endpoint, n)`
(the next n requests to it answer 429, as another process of the same key would cause).

What the real API refuses is refused here (`contract.py`, with its sources): a create body with a
field Vast does not document, or over its limits (onstart, args + onstart, label, env, image, price,
disk), is a 400 `invalid_args`; with `rate_limited = True` the published per-endpoint rate limits
answer 429 (off by default: most tests are not about them).
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.simapi import LOST, ApiSimulator, Text
from tests.simvast.contract import LABEL_UPDATE_LIMIT, RateLimiter, create_refusal, endpoint_of, invalid

USER_KEY = "vastFakeUserKeyDoNotLeak0123456789abcdef0123456789abcdef01234567"

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b, "neq": lambda a, b: a != b, "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b, "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b,
    "in": lambda a, b: a in b, "notin": lambda a, b: a not in b,
}
_NOT_FILTERS = {"order", "type", "limit", "allocated_storage", "disable_bundling"}


def ask_row(ask_id: int, gpu_name: str = "Tesla T4", num_gpus: int = 1, dph_total: float = 0.2,
            min_bid: float | None = 0.1, gpu_ram: int = 15360, reliability: float = 0.99, verified: bool = True,
            geolocation: str = "Texas, US", direct_port_count: int = 20, **extra: Any) -> dict[str, Any]:
    """One ask as `search_offers` lists it (the fields the SDK and skyward read)."""
    return {"id": ask_id, "ask_contract_id": ask_id, "machine_id": 9000 + ask_id, "host_id": 500 + ask_id,
            "gpu_name": gpu_name, "num_gpus": num_gpus, "gpu_ram": gpu_ram, "gpu_total_ram": gpu_ram * num_gpus,
            "cpu_cores_effective": 4.0 * num_gpus, "cpu_ram": 32768 * num_gpus, "disk_space": 200.0,
            "dph_total": dph_total, "dph_base": dph_total, "min_bid": min_bid, "reliability": reliability,
            "reliability2": reliability, "verified": verified,
            "verification": "verified" if verified else "unverified", "rentable": True, "rented": False,
            "external": False, "geolocation": geolocation, "direct_port_count": direct_port_count,
            "inet_down": 1000.0, "inet_up": 800.0, "hosting_type": 0, "cluster_id": None, **extra}


@dataclass
class Instance:
    id: int
    ask: dict[str, Any]
    payload: dict[str, Any]
    api_key: str  # the instance-scoped key Vast puts in its container as CONTAINER_API_KEY
    created: float
    public_ip: str
    private_ip: str
    host_ports: dict[int, int]
    label: str | None = None
    status: str | None = None  # actual_status
    intended: str = "running"
    stuck: bool = False

    def row(self) -> dict[str, Any]:
        env = [[k, v] for k, v in (self.payload.get("env") or {}).items() if not str(k).startswith("-")]
        ports = {f"{port}/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(host)}] for port, host in self.host_ports.items()}
        running = self.status == "running"
        return {
            "id": self.id, "machine_id": self.ask["machine_id"], "host_id": self.ask["host_id"],
            "label": self.label, "actual_status": self.status, "intended_status": self.intended,
            "cur_state": "running" if self.intended == "running" else "stopped", "next_state": self.intended,
            "image_uuid": self.payload.get("image"), "disk_space": self.payload.get("disk"),
            "gpu_name": self.ask["gpu_name"], "num_gpus": self.ask["num_gpus"], "gpu_ram": self.ask["gpu_ram"],
            "cpu_cores_effective": self.ask["cpu_cores_effective"], "cpu_ram": self.ask["cpu_ram"],
            "dph_total": self.payload.get("price") or self.ask["dph_total"],
            "is_bid": self.payload.get("price") is not None, "min_bid": self.ask["min_bid"],
            "start_date": self.created, "extra_env": env, "onstart": self.payload.get("onstart"),
            "public_ipaddr": self.public_ip if running else None,
            "local_ipaddrs": f"{self.private_ip} ",  # the host's address: known once the ask is rented
            "ports": ports if running else {},
            "ssh_host": self.public_ip if running else None, "ssh_port": None, "ssh_idx": None,
            "geolocation": self.ask["geolocation"], "reliability2": self.ask["reliability2"],
            "status_msg": "success, running" if running else (self.status or ""),
        }


@dataclass
class Call:
    method: str
    path: str
    body: Any
    status: int
    key_kind: str  # "user", "instance:<id>", "destroyed:<id>", "bad", "none"


@dataclass
class CreateFault:
    """The next `times` rentals answer the error `code` (no_such_ask, invalid_price, insufficient_credit, ...)."""

    code: str
    times: int = 1
    hits: int = 0

    def matches(self, request: str, *rest: str) -> bool:
        return request == "create" and self.hits < self.times


@dataclass
class Throttle:
    """The next `times` requests to `endpoint` ("create", "list", "destroy", "manage", "search") answer 429."""

    endpoint: str
    times: int = 1
    hits: int = 0

    def matches(self, request: str, *rest: str) -> bool:
        return request == "throttle" and rest == (self.endpoint,) and self.hits < self.times


class SimVast(ApiSimulator):
    """The fake's state and its HTTP server. `start(host)` binds; `url` is the SDK's server_url."""

    thread_name = "simvast"
    methods = frozenset({"GET", "POST", "PUT", "DELETE"})
    http_protocol = "HTTP/1.1"

    def __init__(self, asks: list[dict[str, Any]] | None = None, user_key: str = USER_KEY,
                 loading_delay: float = 0.3) -> None:
        super().__init__()
        self.user_key = user_key
        self.asks: dict[int, dict[str, Any]] = {a["id"]: dict(a) for a in (asks or [])}
        self.rented: set[int] = set()  # asks not listed now: rented by an instance here, or taken by someone else
        self.taken: set[int] = set()
        self.blocked: set[int] = set()
        self.instances: dict[int, Instance] = {}
        self.destroyed: dict[int, Instance] = {}
        self.loading_delay = loading_delay
        self.stuck_loading = False
        self.log_source: Callable[[int, int], str] | None = None  # (instance id, lines) → its container log
        self._log_results: dict[str, str] = {}
        self.public_ips: Callable[[], str] | None = None
        self.private_ips: Callable[[], str] | None = None
        self._answers_to_lose = 0
        self._next_id = 7001
        self.rate_limited = False
        self.limiter = RateLimiter()
        self.credit = 20.0  # the account's prepaid credit in USD (`GET /api/v0/users/current`)

    @property
    def calls(self) -> list[Call]:
        """Every request received, oldest first (the live record)."""
        return self.call_log

    def respond(self, method: str, path: str, query: Mapping[str, str], body: bytes,
                headers: Any) -> tuple[int, Any]:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        return self.handle(method, path, dict(query), parsed, headers)

    # -- faults and observation -------------------------------------------------------------------
    def add_ask(self, **fields: Any) -> dict[str, Any]:
        with self.lock:
            ask_id = fields.pop("ask_id", None) or (max(self.asks, default=100) + 1)
            row = ask_row(ask_id, **fields)
            self.asks[ask_id] = row
            return row

    def take(self, ask_id: int) -> None:
        """Someone else rents this ask: it leaves the listing, and renting it answers no_such_ask."""
        with self.lock:
            self.rented.add(int(ask_id))
            self.taken.add(int(ask_id))

    def raise_floor(self, ask_id: int, min_bid: float) -> None:
        """The market moved: the ask's minimum bid is now `min_bid` (a lower bid is invalid_price)."""
        with self.lock:
            self.asks[int(ask_id)]["min_bid"] = min_bid

    def lose_next_create_answer(self) -> None:
        """The next rental happens, but its connection drops before the answer is sent."""
        with self.lock:
            self._answers_to_lose += 1

    def fail_next_create(self, code: str = "no_such_ask", times: int = 1) -> CreateFault:
        return self.faults.add(CreateFault(code, times))

    def throttle_next(self, endpoint: str, times: int = 1) -> Throttle:
        return self.faults.add(Throttle(endpoint, times))

    def block(self, ask_id: int) -> None:
        """Every rent of this ask answers no_such_ask (it stays listed: a stale listing) until `unblock`."""
        with self.lock:
            self.blocked.add(int(ask_id))

    def unblock(self, ask_id: int) -> None:
        with self.lock:
            self.blocked.discard(int(ask_id))

    def interrupt(self, instance_id: int | str) -> None:
        """An interruptible instance outbid (or its host gone): the container stops; Vast keeps listing it."""
        with self.lock:
            instance = self.instances[int(instance_id)]
            instance.status, instance.intended = "stopped", "stopped"

    def live(self) -> list[Instance]:
        with self.lock:
            self._advance()
            return list(self.instances.values())

    def payloads(self) -> list[dict[str, Any]]:
        """Every create_instance body received (onstart, env, label, ...)."""
        return [c.body for c in self.calls if c.method == "PUT" and c.path.startswith("/api/v0/asks/")
                and isinstance(c.body, dict)]

    # -- the model --------------------------------------------------------------------------------
    def _advance(self) -> None:
        now = time.time()
        for instance in self.instances.values():
            if instance.intended != "running" or instance.status in ("running", "stopped", "exited"):
                continue
            age = now - instance.created
            if instance.status is None and age >= self.loading_delay / 2:
                instance.status = "loading"
            if instance.status == "loading" and age >= self.loading_delay and not instance.stuck:
                instance.status = "running"

    def _who(self, headers: Any) -> tuple[str, int | None]:
        auth = headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            return "none", None
        key = auth[len("Bearer "):]
        if secrets.compare_digest(key, self.user_key):
            return "user", None
        for instance in self.instances.values():
            if secrets.compare_digest(key, instance.api_key):
                return f"instance:{instance.id}", instance.id
        for instance in self.destroyed.values():
            if secrets.compare_digest(key, instance.api_key):
                return f"destroyed:{instance.id}", None
        return "bad", None

    def handle(self, method: str, path: str, query: dict[str, str], body: Any, headers: Any) -> tuple[int, Any]:
        with self.lock:
            kind, own = self._who(headers)
            status, answer = self._route(method, path, query, body, kind, own)
            self.record(Call(method, path, body, status, kind))
            return status, answer

    def _route(self, method: str, path: str, query: dict[str, str], body: Any, kind: str,
               own: int | None) -> tuple[int, Any]:
        if method == "GET" and path.startswith("/logs/"):  # a log result URL: unauthenticated, as Vast's are
            text = self._log_results.get(path[len("/logs/"):])
            return (200, Text(text)) if text is not None else (404, {"detail": "not found"})
        parts = [p for p in path.split("/") if p]
        endpoint = endpoint_of(method, parts)
        if endpoint is not None and self.faults.take("throttle", endpoint) is not None:
            return 429, {"detail": "API requests too frequent"}
        if self.rate_limited:
            refused = self.limiter.check(endpoint, kind if own is None else f"instance:{own}")
            if refused is not None:
                return refused
        if kind in ("none", "bad") or kind.startswith("destroyed:"):
            # A destroyed instance's own key: Vast.ai does not document what it answers then (its key
            # went with the instance, or the instance is not found). Modelled as revoked (401); the
            # node's self-destroy treats any refusal as final, and the instance is gone either way.
            return 401, {"success": False, "error": "invalid_user_key", "msg": "Invalid user key"}
        self._advance()
        if kind != "user":  # an instance's own key: its own instance only
            if method == "DELETE" and parts[:3] == ["api", "v0", "instances"] and len(parts) == 4 \
                    and parts[3].isdigit() and int(parts[3]) == own:
                return self._destroy(own)
            return 403, {"success": False, "error": "forbidden", "msg": "this key may only manage its own instance"}
        if method == "GET" and parts == ["api", "v0", "users", "current"]:  # show_user: the account, its credit
            return 200, {"id": 4242, "username": "skyward-fake", "credit": self.credit, "balance": 0.0,
                         "can_pay": self.credit > 0, "balance_threshold_enabled": False}
        if method == "POST" and parts == ["api", "v0", "bundles"]:
            return 200, {"offers": self._search(body if isinstance(body, dict) else {})}
        if method == "PUT" and parts[:3] == ["api", "v0", "asks"] and len(parts) == 4 and parts[3].isdigit():
            return self._create(int(parts[3]), body if isinstance(body, dict) else {})
        if method == "GET" and parts == ["api", "v1", "instances"]:
            return 200, self._list(query)
        if method == "PUT" and parts[:4] == ["api", "v0", "instances", "request_logs"] and len(parts) == 5:
            instance_id = int(parts[4]) if parts[4].isdigit() else -1
            if instance_id not in self.instances:
                return 404, {"success": False, "error": "no_such_instance", "msg": "Instance not found"}
            lines = int((body or {}).get("tail") or 1000)
            token = secrets.token_hex(8)
            self._log_results[token] = self.log_source(instance_id, lines) if self.log_source else ""
            return 200, {"success": True, "result_url": f"{self.url}/logs/{token}"}
        if parts[:3] == ["api", "v0", "instances"] and len(parts) == 4 and parts[3].isdigit():
            instance_id = int(parts[3])
            if method == "DELETE":
                return self._destroy(instance_id)
            if method == "PUT":
                instance = self.instances.get(instance_id)
                if instance is None:
                    return 404, {"success": False, "error": "no_such_instance", "msg": "Instance not found"}
                if "label" in (body or {}):
                    if len(str(body["label"])) > LABEL_UPDATE_LIMIT:  # label_instance.yaml
                        return invalid(f"Text label must be {LABEL_UPDATE_LIMIT} characters or less")
                    instance.label = body["label"]
                if (body or {}).get("state") in ("stopped", "running"):
                    instance.intended = body["state"]
                    instance.status = "stopped" if body["state"] == "stopped" else instance.status
                return 200, {"success": True}
        return 404, {"success": False, "error": "not_found", "msg": f"no route {method} {path}"}

    def _search(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        rows = []
        for ask_id, row in sorted(self.asks.items()):
            if ask_id in self.rented:
                continue
            if all(_matches(row.get(name), cond) for name, cond in query.items()
                   if name not in _NOT_FILTERS and isinstance(cond, dict)):
                rows.append(dict(row))
        for name, direction in reversed(query.get("order") or []):
            rows.sort(key=lambda r: (r.get(name) is None, r.get(name) or 0), reverse=direction == "desc")
        limit = int(query.get("limit") or 0)
        return rows[:limit] if limit else rows

    def _create(self, ask_id: int, body: dict[str, Any]) -> tuple[int, Any]:
        fault = self.faults.take("create")
        if fault is not None:
            return _error(fault.code)
        refusal = create_refusal(body)
        if refusal is not None:
            return refusal
        ask = self.asks.get(ask_id)
        if ask is None or ask_id in self.rented or ask_id in self.blocked:
            return _error("no_such_ask")
        price = body.get("price")
        if price is not None and (ask.get("min_bid") is None or float(price) < float(ask["min_bid"])):
            return _error("invalid_price")
        instance_id = self._next_id
        self._next_id += 1
        ports = [int(k.split()[1].split(":")[0]) for k in (body.get("env") or {})
                 if str(k).startswith("-p ")]
        runtype = str(body.get("runtype") or "")
        if "ssh" in runtype:
            ports.append(22)
        host_ports = {port: 40000 + (instance_id * 7 + i) % 20000 for i, port in enumerate(sorted(set(ports)))}
        self.instances[instance_id] = Instance(
            id=instance_id, ask=dict(ask), payload=dict(body), api_key=secrets.token_hex(32), created=time.time(),
            public_ip=self.public_ips() if self.public_ips else f"203.0.113.{instance_id % 250 + 1}",
            private_ip=self.private_ips() if self.private_ips else f"172.17.0.{instance_id % 250 + 2}",
            host_ports=host_ports, label=body.get("label"), stuck=self.stuck_loading)
        self.rented.add(ask_id)
        if self._answers_to_lose:
            self._answers_to_lose -= 1
            return 200, LOST
        return 200, {"success": True, "new_contract": instance_id}

    def _destroy(self, instance_id: int | None) -> tuple[int, Any]:
        instance = self.instances.pop(instance_id, None) if instance_id is not None else None
        if instance is None:
            return 404, {"success": False, "error": "no_such_instance", "msg": "Instance not found"}
        self.destroyed[instance.id] = instance
        if instance.ask["id"] not in self.taken:  # the host's GPUs are offered again
            self.rented.discard(instance.ask["id"])
        return 200, {"success": True}

    def _list(self, query: dict[str, str]) -> dict[str, Any]:
        limit = int(json.loads(query.get("limit", "25")))
        after = int(json.loads(query["after_token"])) if "after_token" in query else 0
        rows = [i.row() for i in sorted(self.instances.values(), key=lambda i: i.id) if i.id > after]
        page = rows[:limit]
        next_token = str(page[-1]["id"]) if len(rows) > limit else None
        return {"instances": page, "next_token": next_token, "total_instances": len(self.instances)}


def decode_onstart(payload: str | Mapping[str, Any]) -> str:
    """A create request's boot payload as text: the onstart script, then what it carries gzipped and
    base64-encoded (inline, or cut into the `SKYWARD_BOOT_<nnn>` variables of its env), decoded."""
    if isinstance(payload, Mapping):
        onstart, env = str(payload.get("onstart") or ""), dict(payload.get("env") or {})
    else:
        onstart, env = payload or "", {}
    blobs = re.findall(r"echo ([A-Za-z0-9+/=]{40,}) \| base64 -d \| gunzip", onstart)
    chunked = "".join(str(env[k]) for k in sorted(env) if re.fullmatch(r"SKYWARD_BOOT_[0-9]+", str(k)))
    if chunked:
        blobs.append(chunked)
    return onstart + "".join("\n" + gzip.decompress(base64.b64decode(b)).decode() for b in blobs)


def _matches(value: Any, condition: dict[str, Any]) -> bool:
    for op, wanted in condition.items():
        test = _OPS.get(op)
        if test is None:
            continue
        if isinstance(wanted, list):
            wanted = [_coerce(w, value) for w in wanted]
        else:
            wanted = _coerce(wanted, value)
        try:
            if not test(value, wanted):
                return False
        except TypeError:  # e.g. None > 1: a row without the field does not match
            return False
    return True


def _coerce(wanted: Any, value: Any) -> Any:
    """The SDK's string query sends numbers as strings ({"num_gpus": {"eq": "1"}}); compare as the row's type."""
    if isinstance(wanted, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(wanted)
        except ValueError:
            return wanted
    if isinstance(wanted, str) and isinstance(value, bool):
        return wanted.lower() == "true"
    return wanted


def _error(code: str) -> tuple[int, Any]:
    if code == "no_such_ask":
        return 404, {"success": False, "error": "no_such_ask", "msg": "Instance type not found or no longer available"}
    if code == "invalid_price":
        return 400, {"success": False, "error": "invalid_price", "msg": "Bid price is below the minimum bid"}
    if code == "insufficient_credit":
        return 402, {"success": False, "error": "insufficient_credit", "msg": "Your account lacks credit"}
    return 400, {"success": False, "error": code, "msg": "injected by the simulator"}
