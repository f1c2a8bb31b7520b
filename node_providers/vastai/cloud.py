"""Vast.ai instances for the generic script-booted node provider: create, list, destroy.

An instance is a Docker container on some host of the marketplace, rented from one ask (offer)
with `create_instance` (PUT /api/v0/asks/{id}/). Its identity and tags live in its label, the only
field Vast.ai keeps for us: `skyward:<cluster>/<role>/<index> <tags>`, written by
`skyward_ray.cluster.machine_tags` within the label's 256 characters; `describe` lists the
account's instances (`show_instances`) and keeps those whose label names the cluster. States come
from `actual_status`.

The instance boots from its onstart script (SSH launch mode: Vast's entrypoint runs it), which
joins the boot payload the request's `env` carries (`payload.py`: onstart holds 4,048 characters):
curl where the image has none, a trap that destroys the instance on any failure, skyward's own sshd
on `ssh_port` (a direct port) with the head's pinned host key and the cluster's login key, then the
rendered boot script. When Ray exits the instance destroys itself with its own instance-scoped key
(`CONTAINER_API_KEY`, which Vast sets in every container) — the user's key never leaves the driver.
Every API call waits for its endpoint's turn under Vast's published rate limits (`pacing.py`).

An ask rented by someone else between the plan and the launch is replaced by the cheapest listed
ask of the same card and count within `replacement_price_margin` of the price bought, which the
cluster's own tags carry (`names.PRICE`, put on every machine of a pool): a provider made in
another process chooses the same way.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Mapping
from typing import Any

from node_providers.vastai import offers as vast_offers
from node_providers.vastai.api import AnswerLostError, AskGoneError, client, vast_errors
from node_providers.vastai.config import VastAI
from node_providers.vastai.pacing import list_instances, paced
from node_providers.vastai.payload import boot_payload
from skyward_ray import names
from skyward_ray.cluster.contract import ClusterListing, Machine, MachineRequest, MachineState, NotFoundError, SSHEndpoint
from skyward_ray.cluster.machine_tags import MachineName, MachineNaming, TagCodec
from skyward_ray.cluster.remote_cloud import RemoteCloud
from skyward_ray.errors import CapacityError, ProvisioningError, SpecError
from skyward_ray.node import self_destroy

NAMING = MachineNaming(first=":", between="/")
LABEL_LIMIT = 256  # characters a label holds (https://docs.vast.ai/api-reference/instances/manage-instance)
TAGS = TagCodec()

# actual_status → the contract's. An exited or stopped container still holds (and bills) its disk
# until destroyed: active, never orphaned. A row Vast no longer lists is gone.
_STATES: dict[str | None, MachineState] = {
    None: "pending", "created": "pending", "loading": "pending", "scheduling": "pending",
    "running": "running",
    "exited": "stopping", "stopped": "stopping", "offline": "stopping", "unknown": "stopping",
}


def make_label(machine: MachineName, tags: Mapping[str, str]) -> str:
    """`skyward:<cluster>/<role>/<index> <tags>`, within the label's `LABEL_LIMIT` characters."""
    name = NAMING.name(machine)
    return f"{name} {TAGS.encode(machine, tags, budget=LABEL_LIMIT - len(name) - 1)}"


def label_identity(label: str) -> tuple[MachineName | None, dict[str, str]]:
    """A label's identity and tags; (None, {}) for a label skyward did not write."""
    name, _, blob = label.partition(" ")
    machine = NAMING.parse(name)
    return (machine, TAGS.decode(machine, blob)) if machine else (None, {})


def shutdown_command(server_url: str, budget_s: int = self_destroy.BUDGET_S, call_s: int = self_destroy.CALL_S) -> str:
    """Destroy (never stop: an exited instance keeps billing its disk) this instance with its own
    instance-scoped key, never the user's: curl, or the image's python3 where it has no curl; each
    call bounded, retried for `budget_s` seconds (`skyward_ray.node.self_destroy`). `server_url`
    is checked by `VastAI` and shell-quoted here all the same."""
    url = shlex.quote(server_url.rstrip("/")) + '"/api/v0/instances/${CONTAINER_ID:-}/"'
    key = "Bearer ${CONTAINER_API_KEY:-}"
    curl = self_destroy.http_attempt(f'-X DELETE -H "Authorization: {key}" -H "Content-Type: application/json" '
                                     f'-d "{{}}" {url}', call_s)
    python = self_destroy.python_http_attempt("DELETE", url, {"Authorization": f'"{key}"',
                                                              "Content-Type": "application/json"}, call_s)
    attempt = f"if command -v curl >/dev/null 2>&1; then {curl}; else {python}; fi"
    # Vast puts both variables in the container's PID 1 environment; a process that lost them
    # (e.g. started from an SSH session) reads them back from there.
    recover = self_destroy.recover_environment(("CONTAINER_API_KEY", "CONTAINER_ID"))
    return "{ " + recover + "\n" + self_destroy.retrying(attempt, "destroy this instance", budget_s, call_s) + "; }"


class VastAICloud(RemoteCloud):
    """Vast.ai instances of one cluster, found by their label."""

    config_class = VastAI
    config: VastAI
    # The machine's own id, as Vast sets it in every container, and the container's own address.
    instance_id_shell = "${CONTAINER_ID}"
    node_ip_shell = "$(hostname -I | awk '{print $1}')"
    log_name = "instance's log"

    @property
    def api(self) -> Any:
        return client(self.config)

    def shutdown_shell(self) -> str:
        return shutdown_command(self.config.server_url)

    # -- every skyward cluster of the account (skyward-ray status / down / gc) ------------------
    @classmethod
    def list_clusters(cls, config: VastAI) -> list[ClusterListing]:  # type: ignore[override]
        """The account's instances labelled `skyward:<cluster>/...`, by cluster; nothing else."""
        with vast_errors("list instances"):
            rows = list_instances(config, client(config))
        found: dict[str, list[Machine]] = {}
        for row in rows:
            machine, tags = label_identity(str(row.get("label") or ""))
            if machine is not None:
                found.setdefault(machine.cluster, []).append(_machine(row, tags))
        return [ClusterListing(name=name, machines=machines) for name, machines in sorted(found.items())]

    # -- per-cluster resources ------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        """Nothing to make at Vast.ai (no network, no key pair): check the key and the ask."""
        if not self.params.instance_type:
            raise SpecError("Vast.ai: no offer id; set provider.cluster.instance_type to an ask id from "
                            "`skyward-ray offers -p vastai` (a live listing needs VAST_API_KEY)")
        with vast_errors("check the API key"):
            api = self.api
            paced(self.config, "list", lambda: api.show_instances_v1(
                {"select_filters": {}, "order_by": [{"col": "id", "dir": "asc"}], "limit": 1}))
        return {}

    def cleanup(self) -> None:
        """Nothing was made at prepare; instances are destroyed by `terminate`."""

    # -- machines -------------------------------------------------------------------------------
    def launch(self, request: MachineRequest) -> Machine:
        """Rent the ask; an ask rented meanwhile (`no_such_ask`) gets one re-search for the same card,
        count and price ceiling and one retry on the cheapest match, then `CapacityError`."""
        ask = str(request.node_config.get("ask_id") or self.params.instance_type)
        listed = vast_offers.listed_row(self.config, ask)
        try:
            return self._create(ask, request, listed)
        except AskGoneError as gone:
            price = self._bought_price(listed)
            if price is None:
                raise CapacityError(f"{gone}; the price ask {ask} was bought at is neither in the cluster's tags "
                                    f"({names.PRICE}) nor listed by this process, so no same-price replacement "
                                    "can be chosen") from None
            replacement = self._replacement(ask, price, listed)
            if replacement is None:
                raise CapacityError(f"{gone}; no other {self._wanted()} ask within its price ceiling is listed "
                                    "now") from None
            try:
                return self._create(str(replacement["id"]), request, replacement)
            except AskGoneError as again:
                raise CapacityError(f"{again} (and so was ask {ask} before it)") from None

    def _wanted(self) -> str:
        return f"{self.params.accelerator or 'GPU'}×{self.params.accelerator_count or 1} {self.params.market}"

    def _price(self, row: Mapping[str, Any] | None) -> float | None:
        if row is None:
            return None
        value = row.get("min_bid") if self.params.market == "spot" else row.get("dph_total")
        return float(value) if value is not None else None

    def _bought_price(self, listed: Mapping[str, Any] | None) -> float | None:
        """The price per node the pool was planned at: the cluster's own tag (every process's
        provider reads it from the cluster's params), else, for a cluster made without it (a
        hand-written ClusterParams), the row this process last listed the ask with."""
        tagged = self.params.pool_tags.get(names.PRICE)
        return float(tagged) if tagged else self._price(listed)

    def _replacement(self, gone: str, price: float, listed: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """The cheapest listed ask for the same card and count, at most `replacement_price_margin` dearer."""
        ceiling = price * (1 + self.config.replacement_price_margin)
        candidates = []
        for row in vast_offers.search_rows(self.config, fresh=True):
            if str(row.get("id")) == gone:
                continue
            offer = next((o for o in vast_offers.row_offers(row) if o.market == self.params.market), None)
            if offer is None or offer.count != (self.params.accelerator_count or offer.count):
                continue
            if self.params.accelerator and offer.accelerator != self.params.accelerator:
                continue
            if listed is not None and row.get("gpu_name") != listed.get("gpu_name"):
                continue
            if offer.price > ceiling + 1e-9:
                continue
            candidates.append((offer.price, str(row["id"]), row))
        return min(candidates, key=lambda c: c[:2])[2] if candidates else None

    def _create(self, ask: str, request: MachineRequest, row: Mapping[str, Any] | None) -> Machine:
        tags = {**request.tags, names.CLUSTER: self.cluster_name}
        bid = None
        if self.params.market == "spot":
            if row is None:  # not in this process's listing: read the ask's current floor
                row = next((r for r in vast_offers.search_rows(self.config, fresh=True) if str(r.get("id")) == ask),
                           None)
                if row is None:
                    raise AskGoneError(f"Vast.ai: ask {ask} is no longer listed")
            bid = self._price(row)
        if request.client_token:
            tags[names.LAUNCH_TOKEN] = request.client_token
        label = make_label(MachineName(self.cluster_name, request.role, request.index), tags)
        boot = boot_payload(request, self.config.ssh_port, self.config.ssh_user, self.params.ssh_public_key,
                            self.shutdown_shell(), {f"-p {self.config.ssh_port}:{self.config.ssh_port}": "1"})
        sdk = client(self.config, retry=1)
        try:
            with vast_errors("rent an instance", f"ask {ask}, {self._wanted()}"):
                answer = paced(self.config, "create", lambda: sdk.create_instance(
                    int(ask), image=self.config.image, disk=self.config.disk_gb, env=boot.env,
                    onstart_cmd=boot.onstart, label=label, price=bid, ssh=True, direct=True))
        except AnswerLostError:
            rented = self._rented_by(request.client_token)
            if rented is None:
                raise
            return rented
        if not isinstance(answer, dict) or not answer.get("success") or answer.get("new_contract") is None:
            raise ProvisioningError(f"Vast.ai: renting ask {ask} gave no instance: {answer!r}")
        return Machine(instance_id=str(answer["new_contract"]), state="pending", tags=tags)

    def _rented_by(self, token: str | None) -> Machine | None:
        """The instance a rental whose answer was lost started, found by its launch token (Vast.ai
        has no idempotency key: the rental is never resent, it is looked for)."""
        if not token:
            return None
        for _ in range(3):  # a new instance can take a moment to be listed
            for row, tags in self._rows():
                if tags.get(names.LAUNCH_TOKEN) == token:
                    return _machine(row, tags)
            time.sleep(1.0)
        return None

    def _rows(self) -> list[tuple[dict[str, Any], dict[str, str]]]:
        """This cluster's instance rows, each with the tags its label holds."""
        with vast_errors("list instances", self.cluster_name):
            rows = list_instances(self.config, self.api)
        found = []
        for row in rows:
            machine, tags = label_identity(str(row.get("label") or ""))
            if machine is not None and machine.cluster == self.cluster_name:
                found.append((row, tags))
        return found

    def describe(self) -> list[Machine]:
        return [_machine(row, tags) for row, tags in self._rows()]

    def end_machine(self, instance_id: str) -> None:
        """Destroy (never stop: a stopped instance keeps billing its disk)."""
        try:
            number = int(instance_id)
        except ValueError:
            raise NotFoundError(f"Vast.ai: {instance_id!r} is not a Vast.ai instance id") from None
        api = self.api
        with vast_errors("destroy an instance", instance_id):
            paced(self.config, "destroy", lambda: api.destroy_instance(number))

    def set_tags(self, instance_id: str, tags: Mapping[str, str]) -> None:
        """Rewrite the instance's label with the tags merged in: the tags stay at Vast.ai."""
        found = next(((row, old) for row, old in self._rows() if str(row.get("id")) == str(instance_id)), None)
        if found is None:
            raise ProvisioningError(f"Vast.ai: instance {instance_id} of {self.cluster_name} is not listed")
        row, old = found
        machine, _ = label_identity(str(row["label"]))
        assert machine is not None  # `_rows` keeps labelled rows only
        label = make_label(machine, {**old, **tags})
        api = self.api
        with vast_errors("label an instance", instance_id):
            paced(self.config, "label", lambda: api.label_instance(int(instance_id), label))

    def ssh_endpoint(self, machine: Machine) -> SSHEndpoint:
        """The instance's public address and the host port Vast mapped to skyward's sshd."""
        row = next((r for r, _ in self._rows() if str(r.get("id")) == machine.instance_id), None)
        mapped = ((row or {}).get("ports") or {}).get(f"{self.config.ssh_port}/tcp") or []
        host = (row or {}).get("public_ipaddr") or machine.public_ip
        if not mapped or not host:
            raise ProvisioningError(
                f"Vast.ai: instance {machine.instance_id} has no direct port for {self.config.ssh_port}/tcp yet, so "
                "this driver cannot reach its sshd. Fix: choose an offer with direct ports (the live listing "
                "asks for direct_port_count >= 1)")
        return SSHEndpoint(host=str(host).strip(), port=int(mapped[0]["HostPort"]), user=self.config.ssh_user)

    def read_log(self, instance_id: str, lines: int) -> str:
        """The container's output (`vastai logs`): the onstart script's and the boot script's lines."""
        api = self.api
        with vast_errors("read the instance's log", instance_id):
            text = paced(self.config, "logs", lambda: api.logs(int(instance_id), tail=str(lines)))
        return text if isinstance(text, str) else json.dumps(text)


def _machine(row: Mapping[str, Any], tags: Mapping[str, str]) -> Machine:
    local = str(row.get("local_ipaddrs") or "").split()
    return Machine(
        instance_id=str(row["id"]),
        state=_STATES.get(row.get("actual_status"), "stopping"),
        private_ip=local[0] if local else None,
        public_ip=(str(row["public_ipaddr"]).strip() or None) if row.get("public_ipaddr") else None,
        tags=dict(tags),
    )
