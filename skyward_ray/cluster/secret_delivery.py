"""The driver's side of secrets after boot: no token or `Image.env` value in a payload the cloud keeps.

A cloud stores every launch payload (AWS user data, a pod's `dockerArgs`, a Vast.ai onstart, a
container's env) where other members of the account can read it. So where the cloud's
`BootEnvironment.secrets_after_boot` says so:

- the head's payload holds no secret; once its sshd answers, the driver sends the pool's token and
  env over the pinned SSH session (`ssh -W 127.0.0.1:PORT`, the same host key and login key as the
  tunnel) to the head's secret service (`skyward_ray.node.enrollment`), which hands them to the boot
  script in a 0600 file;
- a worker's payload holds a one-time ticket; the driver registers the ticket's hash with the
  address the cloud gave that worker (from the cloud's listing), and the head answers it once, and
  only from that address. Workers started in one batch (`Cloud.launch_many`) share one payload, so
  one ticket: it is registered with each of their addresses and answered once per address. Workers launched later (replacements, the autoscaler's) are registered
  as they are launched, over a fresh SSH session each time.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from skyward_ray.cluster.contract import Machine
from skyward_ray.cluster.ssh_tunnel import SSHTunnel
from skyward_ray.node import enrollment

Sender = Callable[[dict[str, Any]], None]

SEND_TIMEOUT = 30.0
REGISTER_PATIENCE = 900.0  # how long a worker's address may stay unknown before its ticket is dropped
UNLISTED_PATIENCE = 60.0  # how long a worker may be missing from the listing (eventual consistency) before it is gone


class DeliveryError(RuntimeError):
    """The head's secret service did not take a message (not up yet, or the session failed)."""


def new_ticket() -> str:
    """A worker's one-time ticket (256 bits): what its payload carries instead of the token."""
    return secrets.token_urlsafe(32)


def ssh_sender(tunnel: SSHTunnel, port: int = enrollment.PORT) -> Sender:
    """Send one JSON message to the head's secret service through `ssh -W 127.0.0.1:port`, with the
    tunnel's own pinned known_hosts and login key; a refusal or no answer is a `DeliveryError`."""
    def send(message: dict[str, Any]) -> None:
        argv = tunnel.stdio_command("127.0.0.1", port)
        try:
            done = subprocess.run(argv, input=json.dumps(message).encode() + b"\n", capture_output=True,
                                  timeout=SEND_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise DeliveryError(f"no answer from the head's secret service within {SEND_TIMEOUT:g}s") from None
        try:
            answer = json.loads(done.stdout.decode(errors="replace").strip() or "{}")
        except ValueError:
            answer = {}
        if not answer.get("ok"):
            detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
            raise DeliveryError(f"the head's secret service did not take the pool's secrets ({detail[0]})")
    return send


class Courier:
    """One pool's secrets on their way: the head's token and env, and the workers' tickets.

    Thread-safe: workers are launched from several threads (the launcher's, the replacer's, the
    autoscaler's) while the driver delivers to the head."""

    def __init__(self, listing: Callable[[], list[Machine]]) -> None:
        self._listing = listing
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[str, float]] = {}  # worker instance id -> (ticket id, since)
        self._send: Sender | None = None
        self._retrying: threading.Thread | None = None
        self.head_waits = False
        """True once a head was launched that waits for its secrets (a cloud with `secrets_after_boot`)."""

    def worker_launched(self, instance_id: str, ticket: str) -> None:
        """Remember a new worker's ticket; registered at the head now if the head has its secrets."""
        with self._lock:
            self._pending[instance_id] = (enrollment.ticket_id(ticket), time.monotonic())
            ready = self._send is not None
        if ready:
            self.register()

    def deliver(self, send: Sender, token: str, env: dict[str, str]) -> None:
        """Give the head its token, env and every ticket whose worker has an address; raises
        `DeliveryError` while the head's service is not up (the caller retries)."""
        tickets, sent = self._addressed()
        send({"token": token, "env": dict(env), "tickets": tickets})
        with self._lock:
            self._send = send
            for instance_id in sent:
                self._pending.pop(instance_id, None)
        self._retry_later()

    def register(self) -> None:
        """Register the tickets whose workers have an address now; the rest are retried in the background."""
        with self._lock:
            send = self._send
        if send is not None:
            self._send_addressed(send)
            self._retry_later()

    def _send_addressed(self, send: Sender) -> None:
        tickets, sent = self._addressed()
        if tickets:
            try:
                send({"tickets": tickets})
            except (DeliveryError, OSError):
                return  # kept pending: retried
        with self._lock:
            for instance_id in sent:
                self._pending.pop(instance_id, None)

    def _addressed(self) -> tuple[dict[str, list[str]], list[str]]:
        """(ticket id -> the worker's addresses, their instance ids) for pending workers the cloud lists
        with an address; workers ended, unlisted for a minute, or without an address past
        `REGISTER_PATIENCE`, are dropped."""
        with self._lock:
            pending = dict(self._pending)
        if not pending:
            return {}, []
        machines = {m.instance_id: m for m in self._listing()}
        tickets, ids = {}, []
        for instance_id, (key, since) in pending.items():
            machine = machines.get(instance_id)
            waited = time.monotonic() - since
            if machine is not None and machine.private_ip:  # a batch's workers share a ticket: every address
                tickets.setdefault(key, []).append(machine.private_ip)
                ids.append(instance_id)
            elif waited > REGISTER_PATIENCE or (machine is None and waited > UNLISTED_PATIENCE) or (
                    machine is not None and not machine.active):
                with self._lock:
                    self._pending.pop(instance_id, None)
        return tickets, ids

    def _retry_later(self) -> None:
        """While tickets wait for their worker's address, one daemon thread registers them as they come."""
        with self._lock:
            if not self._pending or (self._retrying is not None and self._retrying.is_alive()):
                return
            self._retrying = threading.Thread(target=self._retry_loop, name="skyward-tickets", daemon=True)
            self._retrying.start()

    def _retry_loop(self) -> None:
        while True:
            time.sleep(2.0)
            with self._lock:
                send = self._send
                if not self._pending or send is None:
                    return
            try:
                self._send_addressed(send)
            except Exception:  # noqa: BLE001 - a listing hiccup: try again in 2 s
                continue


def deliver_until_taken(courier: Courier, send: Sender, token: str, env: dict[str, str],
                        still_booting: Callable[[BaseException], None]) -> None:
    """Deliver the head's secrets, retrying while its service is not up yet (the head installs its
    Python first); `still_booting` raises when the head ended or the boot deadline passed."""
    while True:
        try:
            courier.deliver(send, token, env)
            return
        except DeliveryError as error:
            still_booting(error)
            time.sleep(1.0)
