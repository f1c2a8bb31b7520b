"""The simulated internet's web server: every name it answers for is a directory of one tree.

Run by `tests.siminternet.host` inside the internet host's network namespace, with the driver's
interpreter in isolated mode (`python -I server.py ROOT CERT KEY`): the standard library only.
A request for `https://NAME/PATH` (or `http://`, which apt uses) serves `ROOT/NAME/PATH`
(`index.html` for a directory); a name it does not hold is a 404, as an unknown host would be
unreachable. One line per request goes to stdout (the host's log).
"""

from __future__ import annotations

import http.server
import os
import ssl
import sys
import threading
from functools import partial


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves ROOT/<Host header>/<path>; no directory listings."""

    protocol_version = "HTTP/1.1"

    def __init__(self, *args, root: str, **kwargs) -> None:
        self.root = root
        super().__init__(*args, directory=root, **kwargs)

    def translate_path(self, path: str) -> str:
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        if not host or "/" in host or host.startswith("."):
            return os.path.join(self.root, ".nowhere")
        self.directory = os.path.join(self.root, host)
        return super().translate_path(path)

    def list_directory(self, path):  # a missing index.html is a 404, never a listing
        self.send_error(404, "not found")
        return None

    def log_message(self, format: str, *args) -> None:
        sys.stdout.write("%s %s %s\n" % (self.client_address[0], self.headers.get("Host"), format % args))
        sys.stdout.flush()


def serve(root: str, cert: str, key: str) -> None:
    handler = partial(_Handler, root=root)
    plain = http.server.ThreadingHTTPServer(("0.0.0.0", 80), handler)
    secure = http.server.ThreadingHTTPServer(("0.0.0.0", 443), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    secure.socket = context.wrap_socket(secure.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    print("siminternet: serving", root, flush=True)
    secure.serve_forever()


if __name__ == "__main__":
    serve(*sys.argv[1:4])
