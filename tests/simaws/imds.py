"""The instance metadata service (IMDSv2) of one simulated EC2 instance, run inside its namespace.

Started by `tests.simaws.hosts` in the instance's own network namespace, listening on
169.254.169.254:80 (the link-local address is put on the namespace's loopback), so the machine
reaches it exactly where an EC2 instance does, and no other machine can. It answers this instance's
own facts, given on the command line as JSON (`/latest/meta-data/instance-id`, `local-ipv4`, ...),
under the instance's own `MetadataOptions` as EC2 describes them (the second JSON argument).

What it holds the machine to, as the EC2 User Guide documents ("Use the Instance Metadata Service
to access instance metadata", "How Instance Metadata Service Version 2 works"), for an instance
launched with `HttpTokens=required` and `HttpPutResponseHopLimit=1`, as skyward launches them:

- a session token first: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
  between 1 and 21600 (else 400); a PUT carrying `X-Forwarded-For` is refused (403);
- every metadata GET carries `X-aws-ec2-metadata-token`; without one, or with an unknown or
  expired one, the answer is 401 (IMDSv1 is off; with `HttpTokens=optional` a GET without a token
  is answered, and an invalid token is still 401);
- the hop limit (`HttpPutResponseHopLimit`): answers leave with that IP TTL, so with 1 they never
  cross a router (a container behind a bridge would not get them);
- an unknown path is 404.

Only the standard library: it runs with the driver's interpreter in isolated mode (`-I`).
"""

from __future__ import annotations

import json
import secrets
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADDRESS = "169.254.169.254"
PORT = 80
MAX_TTL_S = 21600


class MetadataHandler(BaseHTTPRequestHandler):
    """IMDSv2 for the facts in `server.facts` (path under /latest/meta-data/ → value)."""

    server: "MetadataServer"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, self.server.hop_limit)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        sys.stderr.write("imds: " + (format % args) + "\n")

    def _answer(self, status: int, body: str = "") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path != "/latest/api/token":
            return self._answer(404, "Not Found")
        if self.headers.get("X-Forwarded-For") is not None:
            return self._answer(403, "Forbidden")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds") or ""
        if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TTL_S:
            return self._answer(400, "Bad Request")
        return self._answer(200, self.server.issue(int(ttl)))

    def do_GET(self) -> None:  # noqa: N802
        token = self.headers.get("X-aws-ec2-metadata-token")
        if not self.server.valid(token) and (token is not None or self.server.tokens_required):
            return self._answer(401, "Unauthorized")
        prefix = "/latest/meta-data/"
        if not self.path.startswith(prefix):
            return self._answer(404, "Not Found")
        name = self.path[len(prefix):]
        if name == "":
            return self._answer(200, "\n".join(sorted(self.server.facts)))
        value = self.server.facts.get(name)
        return self._answer(200, value) if value is not None else self._answer(404, "Not Found")


class MetadataServer(ThreadingHTTPServer):
    """Holds this instance's facts and the tokens it issued (token → expiry, monotonic)."""

    daemon_threads = True

    def __init__(self, facts: dict[str, str], tokens_required: bool = True, hop_limit: int = 1) -> None:
        super().__init__((ADDRESS, PORT), MetadataHandler)
        self.facts = facts
        self.tokens_required = tokens_required
        self.hop_limit = hop_limit
        self.tokens: dict[str, float] = {}

    def issue(self, ttl: int) -> str:
        token = secrets.token_urlsafe(40)
        self.tokens[token] = time.monotonic() + ttl
        return token

    def valid(self, token: str | None) -> bool:
        expiry = self.tokens.get(token or "")
        return expiry is not None and time.monotonic() < expiry


def main() -> None:
    facts, options = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    MetadataServer({str(k): str(v) for k, v in facts.items()}, tokens_required=options["tokens_required"],
                   hop_limit=int(options["hop_limit"])).serve_forever()


if __name__ == "__main__":
    main()
