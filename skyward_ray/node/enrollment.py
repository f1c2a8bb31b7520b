"""The head's secret service: the pool's token and env arrive after boot, and workers redeem tickets.

Why: a launch payload is kept by the cloud (AWS user data, a pod's `dockerArgs`, a Vast.ai onstart,
a container's env) and readable by other members of the account, so no secret may ride in it.

- The driver delivers the token and the pool's `Image.env` over its pinned SSH session
  (`ssh -W 127.0.0.1:PORT`: the service's loopback side, so only the head itself or a holder of the
  pool's login key reaches it), with the workers' tickets: a ticket's SHA-256 and the address(es)
  the cloud gave that worker. The head's boot script waits for the file this service writes
  (0600) and sources it before `ray start`.
- A worker's payload holds only its one-time ticket. It redeems it at the head's private address
  (the service's other side): answered once, and only from the worker's own address. A ticket read
  from a payload afterwards is worthless. Workers started in one batch share their payload, so their
  ticket: it is registered with each of their addresses and answered once from each.

The file runs on nodes with their own Python (`python -c`, stdlib only), so it imports nothing of
skyward_ray; the driver imports it for the port and the ticket hash.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import shlex
import socket
import socketserver
import sys
import threading
import time

PORT = 6390
"""The service's TCP port: 127.0.0.1 (the driver, through SSH) and the head's private address (workers)."""
HEAD_GONE_S = 30.0  # a worker stops waiting for a head that answered once and then went silent this long
_MAX_LINE = 1 << 20
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Ray's auth settings, and the boot script's own shell variables (its exports are re-applied after)
_RESERVED = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "NODE_IP", "RAY_PID", "WATCHDOG_PID", "S",
             "SSHD_BIN")


def ticket_id(ticket: str) -> str:
    """What the head keeps of a ticket (never the ticket itself)."""
    return hashlib.sha256(ticket.encode()).hexdigest()


def env_file_text(token: str, env: dict[str, str]) -> str:
    """The shell file the boot script sources: the pool's env (no reserved name), then the token."""
    lines = [f"export {key}={shlex.quote(str(value))}" for key, value in sorted(env.items())
             if _ENV_NAME.fullmatch(key) and key not in _RESERVED and not key.startswith("SKYWARD_")]
    lines.append(f"export RAY_AUTH_TOKEN={shlex.quote(token)}")
    return "\n".join(lines) + "\n"


def write_private(path: str, text: str) -> None:
    """Write `text` to `path` as a 0600 file, whole or not at all (a rename)."""
    part = path + ".part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(part, path)


def _addresses(names: list[str]) -> set[str]:
    """The IP addresses `names` (addresses or host names, e.g. `<pod>.runpod.internal`) stand for."""
    found = set()
    for name in names:
        try:
            found.add(str(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        try:
            found |= {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
        except OSError:
            pass
    return found


def _peer(address: str) -> str:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


class Enrollment:
    """The head's state: the token and env once delivered, the tickets not yet redeemed."""

    def __init__(self, secrets_path: str) -> None:
        self.secrets_path = secrets_path
        self.lock = threading.Lock()
        self.token: str | None = None
        self.env: dict[str, str] = {}
        self.tickets: dict[str, list[str]] = {}  # ticket hash -> the addresses (or names) it is answered from
        self.redeemed: dict[str, set[str]] = {}  # ticket hash -> the addresses it was answered from already

    def deliver(self, message: dict) -> dict:
        """The driver's message: the token and env (taken once), and tickets to add."""
        with self.lock:
            if self.token is None and message.get("token"):
                self.token, self.env = str(message["token"]), dict(message.get("env") or {})
                write_private(self.secrets_path, env_file_text(self.token, self.env))
            for key, addresses in (message.get("tickets") or {}).items():
                known = self.tickets.setdefault(str(key), [])  # a batch's addresses come as they are listed
                known.extend(str(a) for a in addresses if str(a) not in known)
        return {"ok": True}

    def redeem(self, ticket: str, peer: str) -> dict:
        """A worker's ticket from `peer`: the token and env once per address the ticket was given for;
        refused from any other address, and from one it was answered to already."""
        key, source = ticket_id(ticket), _peer(peer)
        with self.lock:
            if source in self.redeemed.get(key, ()):
                return {"refused": "this ticket was redeemed already"}
            if self.token is None or key not in self.tickets:
                return {"retry": "not known yet"}
            allowed = list(self.tickets[key])
        if source not in _addresses(allowed):
            return {"refused": "not from the address this ticket was given for"}
        with self.lock:
            answered = self.redeemed.setdefault(key, set())
            if source in answered:
                return {"refused": "this ticket was redeemed already"}
            answered.add(source)
            return {"token": self.token, "env": self.env}


def _handler(enrollment: Enrollment, side: str) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        timeout = 30

        def handle(self) -> None:
            try:
                message = json.loads(self.rfile.readline(_MAX_LINE) or b"{}")
                if side == "driver":
                    answer = enrollment.deliver(message)
                else:
                    answer = enrollment.redeem(str(message.get("ticket", "")), self.client_address[0])
            except (ValueError, TypeError, AttributeError, OSError) as error:
                answer = {"refused": f"bad request ({type(error).__name__})"}
            self.wfile.write(json.dumps(answer).encode() + b"\n")

    return Handler


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(node_ip: str, port: int, secrets_path: str) -> None:
    """Serve the driver on 127.0.0.1 and the workers on `node_ip` until killed."""
    enrollment = Enrollment(secrets_path)
    servers = [_Server(("127.0.0.1", port), _handler(enrollment, "driver"))]
    if not ipaddress.ip_address(node_ip).is_loopback:
        family = socket.AF_INET6 if ":" in node_ip else socket.AF_INET
        server_class = type("_Server6", (_Server,), {"address_family": family})
        servers.append(server_class((node_ip, port), _handler(enrollment, "worker")))
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"skyward: waiting for the pool's token (127.0.0.1:{port}, workers at {node_ip}:{port})", flush=True)
    servers[0].serve_forever()


def ask(host: str, port: int, message: dict, timeout: float = 10.0) -> dict:
    """One request to the service: a JSON line out, a JSON line back."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(json.dumps(message).encode() + b"\n")
        reply = conn.makefile("rb").readline(_MAX_LINE)
    return json.loads(reply or b"{}")


def redeem(head: str, port: int, ticket: str, secrets_path: str, wait: float) -> int:
    """A worker's side: redeem `ticket` at the head (retrying while it boots), write the secrets file."""
    deadline = time.monotonic() + wait
    reason = "no answer"
    last_answer = None  # a head that answered and then stops answering is gone (it ended itself)
    while time.monotonic() < deadline:
        try:
            answer = ask(head, port, {"ticket": ticket})
            last_answer = time.monotonic()
        except (OSError, ValueError) as error:
            answer = {"retry": str(error)}
            if last_answer is not None and time.monotonic() - last_answer > HEAD_GONE_S:
                print(f"skyward: the head stopped answering {HEAD_GONE_S:g}s ago ({error})", flush=True)
                return 3
        if "token" in answer:
            write_private(secrets_path, env_file_text(str(answer["token"]), dict(answer.get("env") or {})))
            return 0
        if "refused" in answer:
            print(f"skyward: the head refused this node's ticket: {answer['refused']}", flush=True)
            return 3
        reason = str(answer.get("retry"))
        time.sleep(0.5)
    print(f"skyward: the head gave no token within {wait:g}s ({reason})", flush=True)
    return 3


def main(argv: list[str]) -> int:
    if argv[1] == "serve":  # serve NODE_IP PORT SECRETS_PATH
        serve(argv[2], int(argv[3]), argv[4])
        return 0
    # redeem HEAD PORT SECRETS_PATH WAIT; the ticket in $SKYWARD_ENROLL_TICKET (not on a command line)
    return redeem(argv[2], int(argv[3]), os.environ.get("SKYWARD_ENROLL_TICKET", ""), argv[4], float(argv[5]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
