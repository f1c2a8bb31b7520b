"""A tiny TCP server to run inside a simulated host: `python echo_server.py HOST PORT TOKEN`.

On each connection it sends one line `TOKEN <peer ip>` (so a client knows *which* server it reached,
not just that something accepted: the machine's own gateway may accept any TCP connection), then
echoes bytes back until the client closes. Every accepted peer is logged to stdout as
`accepted <peer ip>`, so a test can prove who did (and did not) reach it. Standard library only:
it runs with the bare environment a host gets.
"""

from __future__ import annotations

import socket
import sys
import threading


def serve(conn: socket.socket, peer: str, token: str) -> None:
    with conn:
        conn.sendall(f"{token} {peer}\n".encode())
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data)


def main() -> None:
    host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(64)
    print(f"listening {host}:{port}", flush=True)
    while True:
        conn, (peer, _) = listener.accept()
        print(f"accepted {peer}", flush=True)
        threading.Thread(target=serve, args=(conn, peer, token), daemon=True).start()


if __name__ == "__main__":
    main()
