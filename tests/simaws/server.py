"""A simulated AWS region: moto's server on 127.0.0.1, with a thin fault-injecting front.

Only the network peer is fake: the code under test uses real boto3 clients, which reach this
server through `AWS_ENDPOINT_URL`. In front of moto sits a small WSGI layer that

- records every request (action + parameters + duration), so tests can check what was really sent
  (e.g. the market options of each RunInstances) and the bench can count API time;
- answers requests matching a `Fault` with an AWS-shaped error (InsufficientInstanceCapacity,
  UnauthorizedOperation, RequestLimitExceeded, ...) or a canned body — moto itself never fails
  for capacity, quota or throttling;
- answers the Pricing API with the 404 a missing moto backend would give (quickly, no retries);
- refuses what EC2 refuses and moto accepts: user data over 16 KB raw (`refuse_request`);
- optionally throttles as EC2 documents (`throttle(scale)`: token buckets, `RequestLimitExceeded`);
- answers Service Quotas for EC2's vCPU quotas (`quotas`, `tests/simaws/quotas.py`), which moto lacks.

The region is shaped for the host simulator: its default VPC is `10.231.0.0/16` with one subnet per
availability zone (`10.231.<16n>.0/20`, as AWS's default VPC has /20s; public addresses on launch), the private range of the
simulated network the hosts live on; public addresses come from that network's public range
(`public_ips`), so a driver can reach only what a host's security group lets through. An AWS
Deep Learning AMI and its ARM64 sibling (owner alias "amazon") are registered so the provider's
default image lookup finds them. GetConsoleOutput answers with the instance's boot log (`console_output`), as cloud-init
prints it on a real instance.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from tests.simapi import ApiSimulator
from tests.simaws.quotas import ACTIONS as QUOTA_ACTIONS
from tests.simaws.quotas import ServiceQuotas
from tests.simaws.throttling import Throttling

ACCOUNT = "123456789012"
INTERNAL_KEY = "simaws-internal"  # the simulator's own requests (host watching, test checks) carry this key
VPC_CIDR = "10.231.0.0/16"
DLAMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20261101"
ARM_DLAMI_NAME = "Deep Learning ARM64 Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20261101"  # G5g, P6e-GB200
# What a host process needs to reach this server; no real AWS endpoint can be reached with these.
MOTO_ENV = {
    "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
    "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true",
}


@dataclass
class Fault:
    """Answer matching requests with an error (or a canned 200 body) instead of passing them to moto."""

    action: str
    code: str = ""
    message: str = "injected by the simulator"
    status: int = 400
    when: Callable[[dict[str, str]], bool] = lambda params: True
    times: int | None = None  # None: every matching request
    body: str | None = None   # a canned successful response instead of an error
    hits: int = 0

    def matches(self, action: str, params: dict[str, str]) -> bool:
        if action != self.action or (self.times is not None and self.hits >= self.times):
            return False
        return bool(self.when(params))


# "User data is limited to 16 KB, in raw form, before it is base64-encoded" (Amazon EC2 User Guide,
# "Run commands when you launch an EC2 instance with user data input"); EC2 refuses more with
# InvalidParameterValue.
USER_DATA_LIMIT = 16 * 1024


def refuse_request(action: str, params: dict[str, str]) -> tuple[str, str] | None:
    """(code, message) where EC2 itself refuses what moto would accept; None: pass it on."""
    if action == "RunInstances" and "UserData" in params:
        try:
            raw = base64.b64decode(params["UserData"], validate=True)
        except ValueError:
            return "InvalidParameterValue", "Invalid BASE64 encoding of user data."
        if len(raw) > USER_DATA_LIMIT:
            return "InvalidParameterValue", f"User data is limited to {USER_DATA_LIMIT} bytes"
    return None


@dataclass
class Call:
    action: str
    params: dict[str, str]
    started: float
    seconds: float
    status: int
    service: str
    access_key: str = ""


def _error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>").encode()


def _scope(environ: dict[str, Any]) -> list[str]:
    """A SigV4 request's credential scope: access key, date, region, service, aws4_request."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    with contextlib.suppress(Exception):
        return auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
    return ["", "", "", "", ""]


@dataclass
class FaultFront:
    """WSGI middleware: record, maybe fail, else pass to moto (the record and faults are `sim`'s)."""

    app: Any
    sim: ApiSimulator
    console_output: Callable[[str], str] | None = None  # instance id → its boot log (the host simulator's)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.time()
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        scope = _scope(environ)
        service, access_key = scope[3], scope[0]
        params = {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}
        action = params.get("Action") or environ.get("HTTP_X_AMZ_TARGET", "").rsplit(".", 1)[-1]
        if action == "GetConsoleOutput" and self.console_output is not None and access_key != INTERNAL_KEY:
            instance_id = params.get("InstanceId", "")
            text = base64.b64encode(self.console_output(instance_id).encode()).decode()
            answer = (f'<?xml version="1.0" encoding="UTF-8"?>\n<GetConsoleOutputResponse><requestId>{uuid.uuid4()}'
                      f"</requestId><instanceId>{instance_id}</instanceId><timestamp>{time.strftime('%Y-%m-%dT%H:%M:%SZ')}"
                      f"</timestamp><output>{text}</output></GetConsoleOutputResponse>").encode()
            start_response("200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(answer)))])
            self._record(action, params, started, 200, service, access_key)
            return [answer]
        if service == "pricing":
            status, answer = 404, b'{"message": "Not yet implemented"}'
            start_response("404 Not Found", [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))])
            self._record(action, params, started, status, service, access_key)
            return [answer]
        # throttling and faults are for the code under test, never for the simulator's own requests
        outside = access_key != INTERNAL_KEY
        throttling = self.sim.throttling
        if outside and service == "ec2" and throttling is not None and not throttling.admit(action, params):
            return self._error(start_response, action, params, started, service, access_key, 503,
                               "RequestLimitExceeded", "Request limit exceeded.")
        fault = self.sim.faults.take(action, params) if outside else None
        if fault is not None:
            answer = fault.body.encode() if fault.body is not None else _error_xml(fault.code, fault.message)
            status = 200 if fault.body is not None else fault.status
            start_response(f"{status} Injected", [("Content-Type", "text/xml"), ("Content-Length", str(len(answer)))])
            self._record(action, params, started, status, service, access_key)
            return [answer]
        if service == "servicequotas" and action in QUOTA_ACTIONS:  # moto knows only the VPC quotas
            status, answer = self.sim.quotas.answer(body)
            start_response(f"{status} Quota", [("Content-Type", "application/x-amz-json-1.1"),
                                               ("Content-Length", str(len(answer)))])
            self._record(action, params, started, status, service, access_key)
            return [answer]
        refusal = refuse_request(action, params) if outside and service == "ec2" else None
        if refusal is not None:
            return self._error(start_response, action, params, started, service, access_key, 400, *refusal)
        statuses: list[int] = []

        def recording_start_response(status_line: str, headers: Any, *rest: Any) -> Any:
            statuses.append(int(status_line.split()[0]))
            return start_response(status_line, headers, *rest)

        result = list(self.app(environ, recording_start_response))
        self._record(action, params, started, statuses[0] if statuses else 0, service, access_key)
        return result

    def _error(self, start_response: Callable[..., Any], action: str, params: dict[str, str], started: float,
               service: str, access_key: str, status: int, code: str, message: str) -> list[bytes]:
        """Answer with EC2's error document (as the real API would), and record the call."""
        answer = _error_xml(code, message)
        start_response(f"{status} {code}", [("Content-Type", "text/xml"), ("Content-Length", str(len(answer)))])
        self._record(action, params, started, status, service, access_key)
        return [answer]

    def _record(self, action: str, params: dict[str, str], started: float, status: int, service: str,
                access_key: str) -> None:
        self.sim.record(Call(action, params, started, time.time() - started, status, service, access_key))


class SimAWS(ApiSimulator):
    """moto on 127.0.0.1:<free port> behind `FaultFront`, plus the region setup the host simulator needs."""

    thread_name = "simaws"

    def __init__(self, region: str = "us-east-1") -> None:
        super().__init__()
        self.region = region
        self.front: FaultFront | None = None
        self.ami_id = ""
        self.vpc_id = ""
        self.subnets: dict[str, str] = {}
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()
        self.arm_ami_id = ""
        self.throttling: Throttling | None = None  # `throttle(...)` turns EC2's request limits on
        self.quotas = ServiceQuotas(region, ACCOUNT)  # EC2's vCPU quotas (Service Quotas), which moto lacks

    def throttle(self, scale: float = 1.0) -> Throttling:
        """Answer the code under test's EC2 calls as AWS's documented token buckets do (`throttling`),
        each bucket and rate times `scale`; `throttle_off` ends it."""
        self.throttling = Throttling(scale=scale)
        return self.throttling

    def throttle_off(self) -> None:
        self.throttling = None

    @property
    def endpoint(self) -> str:
        return self.url

    def client_env(self, access_key: str = "simaws-test-key", secret: str = "simaws-test-secret") -> dict[str, str]:
        """Environment for a boto3 client that talks to this server (and can reach nothing else)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def start(self, host: str | None = None) -> "SimAWS":
        os.environ.update(MOTO_ENV)  # read by moto in this process when its backends are created
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import WSGIRequestHandler, make_server

        class QuietHandler(WSGIRequestHandler):
            def log_request(self, *args: Any, **kwargs: Any) -> None:
                pass

        self.front = FaultFront(DomainDispatcherApplication(create_backend_app), self)
        self.serve(make_server(host or self.default_host, 0, self.front, threaded=True, request_handler=QuietHandler))
        self._shape_region()
        return self

    def use_public_ips(self, allocate: Callable[[], str]) -> None:
        """Draw instances' public addresses from `allocate` (the simulated network's public range)
        instead of moto's random 54.214.x.y, which are real Internet addresses this machine must
        never send to."""
        from moto.ec2.models import elastic_network_interfaces

        self._moto_public_ip = getattr(self, "_moto_public_ip", None) or elastic_network_interfaces.random_public_ip
        elastic_network_interfaces.random_public_ip = allocate

    def imported_public_key(self, key_name: str) -> str:
        """The public key material the code under test imported as `key_name` (what cloud-init authorizes)."""
        for call in reversed(self.calls("ImportKeyPair")):
            if call.params.get("KeyName") == key_name:
                return base64.b64decode(call.params["PublicKeyMaterial"]).decode().strip()
        raise KeyError(f"no key pair {key_name!r} was imported")

    def stop(self) -> None:
        moto_public_ip = getattr(self, "_moto_public_ip", None)
        if moto_public_ip is not None:
            from moto.ec2.models import elastic_network_interfaces

            elastic_network_interfaces.random_public_ip = moto_public_ip
        if self.port:
            # moto keeps its accounts in this process: reset them, so the next simulated region starts empty
            with contextlib.suppress(Exception):
                urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST"),
                                       timeout=10).close()
        super().stop()

    def client(self, service: str = "ec2") -> Any:
        """The simulator's own client (cached: boto3 clients are thread-safe and slow to make)."""
        import boto3

        with self._clients_lock:
            if service not in self._clients:
                self._clients[service] = boto3.Session().client(
                    service, region_name=self.region, endpoint_url=self.endpoint,
                    aws_access_key_id=INTERNAL_KEY, aws_secret_access_key="simaws-internal")
            return self._clients[service]

    def _backend(self) -> Any:
        from moto.ec2.models import ec2_backends

        return ec2_backends[ACCOUNT][self.region]

    def _shape_region(self) -> None:
        """Default VPC 10.231.0.0/16 with a subnet per zone; a DLAMI owned by "amazon"."""
        ec2 = self.client()
        zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
        old_default = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        self.vpc_id = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
        for n, zone in enumerate(zones, start=1):
            # /20 per zone, as AWS's default VPC has (4091 addresses each): a 256-node pool fits one zone
            self.subnets[zone] = ec2.create_subnet(VpcId=self.vpc_id, CidrBlock=f"10.231.{16 * n}.0/20",
                                                   AvailabilityZone=zone)["Subnet"]["SubnetId"]
            ec2.modify_subnet_attribute(SubnetId=self.subnets[zone], MapPublicIpOnLaunch={"Value": True})
        backend = self._backend()
        for vpc in old_default:
            backend.vpcs[vpc["VpcId"]].is_default = False
            for subnet in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])["Subnets"]:
                backend.get_subnet(subnet["SubnetId"]).default_for_az = False
        backend.vpcs[self.vpc_id].is_default = True
        for subnet_id in self.subnets.values():
            backend.get_subnet(subnet_id).default_for_az = True
        self.ami_id = self.register_image(DLAMI_NAME, "x86_64", "/dev/sda1", owner_alias="amazon")
        self.arm_ami_id = self.register_image(ARM_DLAMI_NAME, "arm64", "/dev/sda1", owner_alias="amazon")

    def register_image(self, name: str, architecture: str, root_device: str, owner_alias: str | None = None) -> str:
        """An image as DescribeImages shows it: its architecture and root device (AWS publishes the
        DLAMIs: owner alias "amazon"; moto would list them as the account's own)."""
        image_id = self.client().register_image(Name=name, Architecture=architecture, RootDeviceName=root_device,
                                                Description=f"simulated {name}")["ImageId"]
        image = self._backend().amis[image_id]
        image.architecture, image.root_device_name = architecture, root_device  # moto's RegisterImage drops both
        if owner_alias:
            image.owner_alias = owner_alias
        return image_id

    # -- the request log (faults: `inject`, `fault`, `clear_faults` of ApiSimulator) ----------------------
    def calls(self, action: str | None = None, since: float = 0.0, internal: bool = False) -> list[Call]:
        """Requests received (oldest first); the simulator's own (host watching, tests' checks) left out."""
        return self.recorded(lambda c: (action is None or c.action == action) and c.started >= since
                             and (internal or c.access_key != INTERNAL_KEY))

    # -- account state -------------------------------------------------------------------------------
    def instances(self, states: tuple[str, ...] | None = None, cluster: str | None = None) -> list[dict[str, Any]]:
        filters = []
        if states:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        if cluster:
            filters.append({"Name": "tag:skyward/cluster", "Values": [cluster]})
        found = []
        for page in self.client().get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page["Reservations"]:
                found.extend(reservation["Instances"])
        return found

    def instance_states(self) -> dict[str, str]:
        """Every instance's id and state name, read from the region's own records: what the host
        simulator (the hypervisor's side) watches several times a second. Through the API each look
        was a DescribeInstances of ~14 ms of this process's CPU (boto3, HTTP, moto's serializer),
        ~10% of a core for as long as a region lived, taken from the code under test (same
        process, same GIL) and from the simulated machines."""
        reservations = list(self._backend().reservations.values())  # one C-level copy: no concurrent change
        return {instance.id: instance.state for reservation in reservations for instance in list(reservation.instances)}

    def described(self, instance_id: str) -> dict[str, Any] | None:
        """One instance as DescribeInstances shows it (None: not found)."""
        pages = self.client().describe_instances(InstanceIds=[instance_id])["Reservations"]
        return next((i for r in pages for i in r["Instances"]), None)

    def live_instances(self, cluster: str | None = None) -> list[dict[str, Any]]:
        return self.instances(("pending", "running", "stopping", "stopped", "shutting-down"), cluster)

    def security_groups(self, cluster: str | None = None) -> list[dict[str, Any]]:
        groups = self.client().describe_security_groups()["SecurityGroups"]
        return [g for g in groups if g["GroupName"] != "default"
                and (cluster is None or {"Key": "skyward/cluster", "Value": cluster} in g.get("Tags", []))]

    def key_pairs(self) -> list[dict[str, Any]]:
        return self.client().describe_key_pairs()["KeyPairs"]

    def terminate(self, instance_id: str) -> None:
        """What a spot interruption (or anyone with console access) does."""
        self.client().terminate_instances(InstanceIds=[instance_id])
