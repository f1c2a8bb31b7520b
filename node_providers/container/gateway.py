"""The pool's only door: a relay from one 127.0.0.1 port on the engine's host to the head's sshd.

A container pool's nodes sit on an internal network of the pool's own that has no address on the
host (Docker's `inhibit_ipv4`: no route leads there, as no route leads into a cloud's VPC). The
driver reaches the pool as it reaches a cloud: through the head's SSH port, published on
127.0.0.1 only, with the head's host key pinned. Docker publishes ports only for a container on a
routable network, so the publishing is done by a small gateway container, on the pool's network
and on an edge network of its own, that relays that one port to the head's sshd and runs nothing
else: from the host, the head's SSH port is the only thing of the pool that answers.

The gateway ends itself when the head is gone (the head ends itself when the driver's heartbeat
stops), or when no head appears within a minute of its start (the driver launches the head right
after it, from a node image that is ready by then): nothing of a pool outlives it.
"""

from __future__ import annotations

RELAY_PORT = 2222  # inside the gateway; published on 127.0.0.1:<a free port> of the host
HEAD_APPEARS_WITHIN_S = 60.0  # a driver killed before it launched the head leaves a gateway this long

# Run by the node image's Python. argv: head host name, head SSH port, seconds for the head to appear,
# seconds the head may be missing once it was there.
RELAY_SOURCE = r'''
import asyncio, socket, sys, time

HEAD, PORT, DEADLINE, GRACE = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def relay(client_reader, client_writer):
    try:
        head_reader, head_writer = await asyncio.open_connection(HEAD, PORT)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, head_writer), pipe(head_reader, client_writer))


def head_resolves():
    try:
        socket.getaddrinfo(HEAD, PORT)
        return True
    except OSError:
        return False


async def main():
    server = await asyncio.start_server(relay, "0.0.0.0", RELAY_PORT_VALUE)
    started, seen, missing_since = time.monotonic(), False, None
    async with server:
        while True:
            await asyncio.sleep(2)
            if head_resolves():
                seen, missing_since = True, None
            elif seen:
                missing_since = missing_since or time.monotonic()
                if time.monotonic() - missing_since > GRACE:
                    print("skyward gateway: the head is gone; ending", flush=True)
                    return
            elif time.monotonic() - started > DEADLINE:
                print("skyward gateway: no head appeared; ending", flush=True)
                return


asyncio.run(main())
'''.replace("RELAY_PORT_VALUE", str(RELAY_PORT))


def relay_command(head_host: str, head_port: int, head_appears_within: float, grace: float = 10.0) -> list[str]:
    """The gateway container's command (its image's Python runs the relay)."""
    return ["python3", "-c", RELAY_SOURCE, head_host, str(head_port), f"{head_appears_within:g}", f"{grace:g}"]
