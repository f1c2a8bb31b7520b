"""EC2's API throttling, as AWS documents it: token buckets per account, region and API action.

Source: "Request throttling for the Amazon EC2 API",
https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html (tables "Request token
bucket sizes and refill rates" and "Resource token bucket sizes and refill rates"):

- every API action has its own request bucket; one request takes one token. Its size and refill
  rate come from the action's category (non-mutating `Describe*`/`List*`/`Search*`/`Get*` 100/20 per
  second; the unfiltered and unpaginated calls of a few of them 50/10, in a bucket of their own;
  mutating 50/5; resource-intensive 50/5), or from the action's own row (RunInstances 5/2,
  TerminateInstances 100/5, CreateTags 100/10, ...);
- RunInstances and TerminateInstances also take one token per instance from a resource bucket
  (1000/2 and 1000/20);
- a request that finds a bucket empty is refused with `RequestLimitExceeded` (HTTP 503) and takes
  no token.

`scale` shrinks every bucket and rate alike (a bucket holds at least one token), so that a test's
small pool meets the limits a large pool or a busy account meets on AWS.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

NON_MUTATING = (100.0, 20.0)
UNFILTERED = (50.0, 10.0)
MUTATING = (50.0, 5.0)
RESOURCE_INTENSIVE = (50.0, 5.0)
UNFILTERED_ACTIONS = frozenset({"DescribeInstances", "DescribeInstanceStatus", "DescribeNetworkInterfaces",
                                "DescribeSecurityGroups", "DescribeSnapshots", "DescribeSpotInstanceRequests",
                                "DescribeVolumes"})
RESOURCE_INTENSIVE_ACTIONS = frozenset({
    "AcceptVpcPeeringConnection", "AuthorizeSecurityGroupIngress", "CancelSpotInstanceRequests", "CreateKeyPair",
    "CreateVpcPeeringConnection", "DeleteVpcPeeringConnection", "RejectVpcPeeringConnection",
    "RevokeSecurityGroupIngress", "RequestSpotInstances"})
# The "Uncategorized actions" rows this project's calls meet.
OWN_BUCKETS: Mapping[str, tuple[float, float]] = {
    "RunInstances": (5.0, 2.0), "StartInstances": (5.0, 2.0), "TerminateInstances": (100.0, 5.0),
    "CreateTags": (100.0, 10.0), "DeleteTags": (100.0, 10.0), "ModifyInstanceMetadataOptions": (100.0, 5.0),
}
# Resource buckets, and how many resources a request names.
RESOURCE_BUCKETS: Mapping[str, tuple[float, float, Callable[[Mapping[str, str]], int]]] = {
    "RunInstances": (1000.0, 2.0, lambda p: int(p.get("MaxCount", "1") or 1)),
    "TerminateInstances": (1000.0, 20.0, lambda p: max(1, sum(k.startswith("InstanceId.") for k in p))),
}


@dataclass
class Bucket:
    capacity: float
    rate: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, n: float, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.stamp = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


def request_bucket(action: str, params: Mapping[str, str]) -> tuple[str, tuple[float, float]]:
    """(bucket name, (capacity, refill per second)) of one request, per the documented categories."""
    if action in OWN_BUCKETS:
        return action, OWN_BUCKETS[action]
    if action.startswith(("Describe", "List", "Search", "Get")):
        if action in UNFILTERED_ACTIONS and not any(k.startswith("Filter.") or k in ("MaxResults", "NextToken")
                                                    for k in params):
            return action + ":unfiltered", UNFILTERED
        return action, NON_MUTATING
    return action, RESOURCE_INTENSIVE if action in RESOURCE_INTENSIVE_ACTIONS else MUTATING


@dataclass
class Throttling:
    """The account's buckets in one simulated region; `admit` says whether a request gets through."""

    scale: float = 1.0
    clock: Callable[[], float] = time.monotonic
    throttled: dict[str, int] = field(default_factory=dict)  # action → requests refused
    _buckets: dict[str, Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _bucket(self, name: str, capacity: float, rate: float) -> Bucket:
        if name not in self._buckets:
            self._buckets[name] = Bucket(max(1.0, capacity * self.scale), rate * self.scale)
        return self._buckets[name]

    def admit(self, action: str, params: Mapping[str, str]) -> bool:
        name, (capacity, rate) = request_bucket(action, params)
        with self._lock:
            now = self.clock()
            request = self._bucket(name, capacity, rate)
            resource = None
            if action in RESOURCE_BUCKETS:
                r_capacity, r_rate, count = RESOURCE_BUCKETS[action]
                resource = (self._bucket(action + ":resources", r_capacity, r_rate), count(params))
            # a refused request takes no token: check both buckets before taking from either
            request_ok = request.take(0, now) and request.tokens >= 1
            resource_ok = resource is None or (resource[0].take(0, now) and resource[0].tokens >= resource[1])
            if request_ok and resource_ok:
                request.take(1, now)
                if resource is not None:
                    resource[0].take(resource[1], now)
                return True
            self.throttled[action] = self.throttled.get(action, 0) + 1
            return False

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.throttled.values())


__all__ = ["Bucket", "Throttling", "request_bucket"]
