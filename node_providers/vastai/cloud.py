"""Vast.ai instances for the generic script-booted node provider: create, list, destroy.

An instance is a Docker container on some host of the marketplace, rented from one ask (offer)
with `create_instance` (PUT /api/v0/asks/{id}/). Its identity lives in its label, the only field
Vast.ai keeps for us: `skyward:<cluster>/<role>/<index> {tags as JSON}`; `describe` lists the
account's instances (`show_instances`) and keeps those whose label starts with the cluster's
prefix. States come from `actual_status`.

The instance boots from its onstart script (SSH launch mode: Vast's entrypoint runs it): the
script starts skyward's own sshd on `ssh_port` (a direct port) with the head's pinned host key and
the cluster's login key, both from the driver, then runs the rendered boot script. When Ray exits
the instance destroys itself with its own instance-scoped key (`CONTAINER_API_KEY`, which Vast
sets in every container) — the user's key never leaves the driver.
"""

from __future__ import annotations

import base64
import gzip
import json
import shlex
import time
from collections.abc import Mapping
from typing import Any

from node_providers.vastai import offers as vast_offers
from node_providers.vastai.api import AnswerLostError, AskGoneError, client, vast_errors
from node_providers.vastai.config import VastAI
from skyward_ray import names
from skyward_ray.cluster.contract import (
    BootEnvironment,
    Cloud,
    ClusterListing,
    Machine,
    MachineRequest,
    MachineState,
    Role,
    SSHEndpoint,
)
from skyward_ray.errors import CapacityError, ProvisioningError, SpecError

LABEL_PREFIX = "skyward:"

# actual_status → the contract's. An exited or stopped container still holds (and bills) its disk
# until destroyed: active, never orphaned. A row Vast no longer lists is gone.
_STATES: dict[str | None, MachineState] = {
    None: "pending", "created": "pending", "loading": "pending", "scheduling": "pending",
    "running": "running",
    "exited": "stopping", "stopped": "stopping", "offline": "stopping", "unknown": "stopping",
}

# The machine's own id and address; SKYWARD_* first (a local simulator sets them), then Vast's.
INSTANCE_ID_SHELL = "${" + names.ENV_INSTANCE_ID + ":-${CONTAINER_ID}}"
NODE_IP_SHELL = "${" + names.ENV_NODE_IP + ":-$(hostname -I | awk '{print $1}')}"


def label_prefix(cluster_name: str) -> str:
    return f"{LABEL_PREFIX}{cluster_name}/"


def make_label(cluster_name: str, role: Role, index: int, tags: Mapping[str, str]) -> str:
    return f"{label_prefix(cluster_name)}{role}/{index} " + json.dumps(dict(tags), separators=(",", ":"),
                                                                       sort_keys=True)


def label_tags(label: str) -> dict[str, str]:
    _, _, blob = label.partition(" ")
    try:
        tags = json.loads(blob) if blob else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


def shutdown_command(server_url: str) -> str:
    """Destroy this instance with its own instance-scoped key (never the user's)."""
    url = f"{server_url.rstrip('/')}/api/v0/instances/$CONTAINER_ID/"
    curl = (f'curl -sS -m 20 --retry 3 -X DELETE -H "Authorization: Bearer $CONTAINER_API_KEY" '
            f'-H "Content-Type: application/json" -d "{{}}" "{url}"')
    python = ("python3 -c 'import os,urllib.request as u; u.urlopen(u.Request(os.path.expandvars("
              f'"{url}"), data=b"{{}}", method="DELETE", headers={{"Authorization": "Bearer "+os.environ'
              "[\"CONTAINER_API_KEY\"], \"Content-Type\": \"application/json\"}), timeout=20)'")
    # Vast puts both variables in the container's PID 1 environment; a process that lost them
    # (e.g. started from an SSH session) reads them back from there.
    recover = ('[ -n "${CONTAINER_API_KEY:-}" ] || while IFS= read -r kv; do export "$kv"; done < <(tr "\\0" "\\n" '
               '< /proc/1/environ 2>/dev/null | grep -E "^(CONTAINER_ID|CONTAINER_API_KEY)=")')
    return f"{{ {recover}; {curl} || {python}; }}"


def onstart(request: MachineRequest, ssh_port: int, ssh_public_key: str) -> str:
    """The onstart payload: skyward's sshd (the head only: pinned host key, the cluster's login key),
    then the boot script, shipped gzipped and base64-encoded so no quoting can break it."""
    boot = base64.b64encode(gzip.compress(request.boot_script.encode())).decode()
    lines = ["#!/bin/bash", "# skyward_ray node: sshd for the driver's tunnel, then the boot script",
             'S="$HOME/.skyward"', 'mkdir -p "$S" && chmod 700 "$S"']
    if request.ssh_host_key:
        key = base64.b64encode(request.ssh_host_key.encode()).decode()
        lines += [
            'mkdir -p "$S/ssh" && chmod 700 "$S/ssh"',
            f'echo {key} | base64 -d > "$S/ssh/host_ed25519_key" && chmod 600 "$S/ssh/host_ed25519_key"',
            f'echo {shlex.quote(ssh_public_key.strip())} > "$S/ssh/authorized_keys"',
            'chmod 600 "$S/ssh/authorized_keys"',
            "cat > \"$S/ssh/sshd_config\" <<SSHD",
            f"Port {ssh_port}",
            "ListenAddress 0.0.0.0",
            "HostKey $S/ssh/host_ed25519_key",
            "AuthorizedKeysFile $S/ssh/authorized_keys",
            "PidFile none",
            "PermitRootLogin prohibit-password",
            "AuthenticationMethods publickey",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "AllowTcpForwarding yes",
            "X11Forwarding no",
            "ClientAliveInterval 10",
            "SSHD",
            "mkdir -p /run/sshd",
            'SSHD_BIN="$(command -v sshd || echo /usr/sbin/sshd)"',
            'if [ ! -x "$SSHD_BIN" ]; then',
            "  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server) "
            '>> "$S/apt.log" 2>&1',
            '  SSHD_BIN=/usr/sbin/sshd',
            "fi",
            '"$SSHD_BIN" -D -e -f "$S/ssh/sshd_config" >> "$S/sshd.log" 2>&1 &',
        ]
    lines += [f'echo {boot} | base64 -d | gunzip > "$S/boot.sh"', 'exec bash "$S/boot.sh"', ""]
    return "\n".join(lines)


class VastAICloud(Cloud):
    """Vast.ai instances of one cluster, found by their label."""

    config_class = VastAI
    config: VastAI
    describe_ttl = 1.0  # launchers poll; spare the API's rate limits

    @property
    def api(self) -> Any:
        return client(self.config)

    # -- every skyward cluster of the account (skyward-ray status / down / gc) ------------------
    @classmethod
    def list_clusters(cls, config: VastAI) -> list[ClusterListing]:  # type: ignore[override]
        """The account's instances labelled `skyward:<cluster>/...`, by cluster; nothing else."""
        with vast_errors("list instances"):
            rows = client(config).show_instances()
        found: dict[str, list[Machine]] = {}
        for row in rows:
            label = str(row.get("label") or "")
            if label.startswith(LABEL_PREFIX):
                found.setdefault(label[len(LABEL_PREFIX):].split("/", 1)[0], []).append(_machine(row))
        return [ClusterListing(name=name, machines=machines) for name, machines in sorted(found.items())]

    # -- per-cluster resources ------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        """Nothing to make at Vast.ai (no network, no key pair): check the key and the ask."""
        if not self.params.instance_type:
            raise SpecError("Vast.ai: no offer id; set provider.cluster.instance_type to an ask id from "
                            "`skyward-ray offers -p vastai` (a live listing needs VAST_API_KEY)")
        with vast_errors("check the API key"):
            self.api.show_instances_v1({"select_filters": {}, "order_by": [{"col": "id", "dir": "asc"}],
                                        "limit": 1})
        return {}

    def cleanup(self) -> None:
        """Nothing was made at prepare; instances are destroyed by `terminate`."""

    # -- machines -------------------------------------------------------------------------------
    def boot_environment(self, role: Role, index: int) -> BootEnvironment:
        config = self.config
        return BootEnvironment(
            instance_id_shell=INSTANCE_ID_SHELL,
            node_ip_shell=NODE_IP_SHELL,
            shutdown_command=shutdown_command(config.server_url),
            **config.node_resources(),
        )

    def launch(self, request: MachineRequest) -> Machine:
        """Rent the ask; an ask rented meanwhile (`no_such_ask`) gets one re-search for the same card,
        count and price ceiling and one retry on the cheapest match, then `CapacityError`."""
        ask = str(request.node_config.get("ask_id") or self.params.instance_type)
        original = vast_offers.cached_row(self.config, ask)
        try:
            return self._create(ask, request, original)
        except AskGoneError as gone:
            if original is None:  # listed in another process: its card and price are unknown here
                raise CapacityError(f"{gone}; ask {ask} was not listed by this process, so no same-card, "
                                    "same-price replacement can be chosen") from None
            replacement = self._replacement(ask, original)
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

    def _replacement(self, gone: str, original: Mapping[str, Any]) -> dict[str, Any] | None:
        """The cheapest listed ask for the same card and count, at most `replacement_price_margin` dearer."""
        price = self._price(original)
        ceiling = None if price is None else price * (1 + self.config.replacement_price_margin)
        rows = vast_offers.search_rows(self.config, fresh=True)
        candidates = []
        for row in rows:
            if str(row.get("id")) == gone:
                continue
            offer = next((o for o in vast_offers.row_offers(row) if o.market == self.params.market), None)
            if offer is None or offer.count != (self.params.accelerator_count or offer.count):
                continue
            if self.params.accelerator and offer.accelerator != self.params.accelerator:
                continue
            if row.get("gpu_name") != original.get("gpu_name"):
                continue
            if ceiling is not None and offer.price > ceiling + 1e-9:
                continue
            candidates.append((offer.price, str(row["id"]), row))
        return min(candidates, key=lambda c: c[:2])[2] if candidates else None

    def _create(self, ask: str, request: MachineRequest, row: Mapping[str, Any] | None) -> Machine:
        tags = {**request.tags, names.CLUSTER: self.cluster_name}
        bid = None
        if self.params.market == "spot":
            if row is None:  # listed in another process: read the ask's current floor
                row = next((r for r in vast_offers.search_rows(self.config, fresh=True) if str(r.get("id")) == ask),
                           None)
                if row is None:
                    raise AskGoneError(f"Vast.ai: ask {ask} is no longer listed")
            bid = self._price(row)
        if request.client_token:
            tags[names.LAUNCH_TOKEN] = request.client_token
        try:
            with vast_errors("rent an instance", f"ask {ask}, {self._wanted()}"):
                answer = client(self.config, retry=1).create_instance(
                    int(ask), image=self.config.image, disk=self.config.disk_gb,
                    env={f"-p {self.config.ssh_port}:{self.config.ssh_port}": "1"},
                    onstart_cmd=onstart(request, self.config.ssh_port, self.params.ssh_public_key),
                    label=make_label(self.cluster_name, request.role, request.index, tags),
                    price=bid, ssh=True, direct=True)
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
            for row in self._rows():
                if label_tags(str(row.get("label") or "")).get(names.LAUNCH_TOKEN) == token:
                    return _machine(row)
            time.sleep(1.0)
        return None

    def _rows(self) -> list[dict[str, Any]]:
        prefix = label_prefix(self.cluster_name)
        with vast_errors("list instances", self.cluster_name):
            rows = self.api.show_instances()
        return [r for r in rows if str(r.get("label") or "").startswith(prefix)]

    def describe(self) -> list[Machine]:
        return [_machine(row) for row in self._rows()]

    def terminate(self, instance_ids: list[str]) -> None:
        """Destroy (never stop: a stopped instance keeps billing its disk). Gone ids are not an error."""
        import requests

        for instance_id in sorted(set(instance_ids), key=str):
            try:
                with vast_errors("destroy an instance", instance_id):
                    try:
                        self.api.destroy_instance(int(instance_id))
                    except requests.HTTPError as error:
                        if error.response is not None and error.response.status_code == 404:
                            continue  # already gone
                        raise
            except ValueError:
                continue  # not a Vast.ai instance id

    def set_tags(self, instance_id: str, tags: Mapping[str, str]) -> None:
        row = next((r for r in self._rows() if str(r.get("id")) == str(instance_id)), None)
        if row is None:
            raise ProvisioningError(f"Vast.ai: instance {instance_id} of {self.cluster_name} is not listed")
        merged = {**label_tags(row["label"]), **tags}
        head, _, _ = str(row["label"]).partition(" ")
        label = head + " " + json.dumps(merged, separators=(",", ":"), sort_keys=True)
        with vast_errors("label an instance", instance_id):
            self.api.label_instance(int(instance_id), label)

    def ssh_endpoint(self, machine: Machine) -> SSHEndpoint:
        """The instance's public address and the host port Vast mapped to skyward's sshd."""
        row = next((r for r in self._rows() if str(r.get("id")) == machine.instance_id), None)
        mapped = ((row or {}).get("ports") or {}).get(f"{self.config.ssh_port}/tcp") or []
        host = (row or {}).get("public_ipaddr") or machine.public_ip
        if not mapped or not host:
            raise ProvisioningError(
                f"Vast.ai: instance {machine.instance_id} has no direct port for {self.config.ssh_port}/tcp yet, so "
                "this driver cannot reach its sshd. Fix: choose an offer with direct ports (the live listing "
                "asks for direct_port_count >= 1)")
        return SSHEndpoint(host=str(host).strip(), port=int(mapped[0]["HostPort"]), user=self.config.ssh_user)

    def log_tail(self, instance_id: str, lines: int = 30) -> str:
        """The container's output (`vastai logs`): the onstart script's and the boot script's lines."""
        try:
            with vast_errors("read the instance's log", instance_id):
                text = self.api.logs(int(instance_id), tail=str(lines))
        except Exception as error:  # a log is a courtesy in an error message: never fail for it
            return f"(no log: {error})"
        text = text if isinstance(text, str) else json.dumps(text)
        return "\n".join(text.splitlines()[-lines:]) or "(the instance's log is empty so far)"


def _machine(row: Mapping[str, Any]) -> Machine:
    local = str(row.get("local_ipaddrs") or "").split()
    return Machine(
        instance_id=str(row["id"]),
        state=_STATES.get(row.get("actual_status"), "stopping"),
        private_ip=local[0] if local else None,
        public_ip=(str(row["public_ipaddr"]).strip() or None) if row.get("public_ipaddr") else None,
        tags=label_tags(str(row.get("label") or "")),
    )
