"""Service Quotas for the simulated region: the EC2 vCPU quotas that gate GPU instances.

moto's Service Quotas backend knows only the VPC quotas (`GetServiceQuota` for an EC2 code answers
NoSuchResourceException), so the simulator answers `GetServiceQuota` and
`GetAWSDefaultServiceQuota` for EC2 itself, in the API's JSON shape (Service Quotas API Reference,
`GetServiceQuota`: `{"Quota": {ServiceCode, QuotaCode, QuotaName, Value, Unit, Adjustable, ...}}`).
Values are vCPUs; a test sets one to 0 to see what a new account sees.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

# The EC2 quota codes and names as the Service Quotas console lists them.
QUOTA_NAMES = {
    "L-DB2E81BA": "Running On-Demand G and VT instances",
    "L-417A185B": "Running On-Demand P instances",
    "L-3819A6DF": "All G and VT Spot Instance Requests",
    "L-7212CCBC": "All P Spot Instance Requests",
    "L-1216C47A": "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
    "L-34B43A08": "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests",
}
DEFAULT_VCPUS = 64.0  # an account that may run a few GPU machines
ACTIONS = frozenset({"GetServiceQuota", "GetAWSDefaultServiceQuota"})


@dataclass
class ServiceQuotas:
    """The region's EC2 quota values (vCPUs) by quota code; `set(code, value)` changes one."""

    region: str
    account: str
    values: dict[str, float] = field(default_factory=lambda: {code: DEFAULT_VCPUS for code in QUOTA_NAMES})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, code: str, value: float) -> None:
        with self.lock:
            self.values[code] = float(value)

    def reset(self) -> None:
        with self.lock:
            self.values = {code: DEFAULT_VCPUS for code in QUOTA_NAMES}

    def answer(self, body: bytes) -> tuple[int, bytes]:
        """(HTTP status, JSON body) for one GetServiceQuota / GetAWSDefaultServiceQuota request."""
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = {}
        service, code = request.get("ServiceCode", ""), request.get("QuotaCode", "")
        with self.lock:
            value = self.values.get(code) if service == "ec2" else None
        if value is None:
            return 400, json.dumps({"__type": "NoSuchResourceException",
                                    "message": f"The request failed because the specified quota {code} of "
                                               f"service {service} does not exist."}).encode()
        quota = {"ServiceCode": "ec2", "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
                 "QuotaArn": f"arn:aws:servicequotas:{self.region}:{self.account}:ec2/{code}",
                 "QuotaCode": code, "QuotaName": QUOTA_NAMES.get(code, code), "Value": value, "Unit": "None",
                 "Adjustable": True, "GlobalQuota": False}
        return 200, json.dumps({"Quota": quota}).encode()
