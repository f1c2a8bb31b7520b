"""The boot script's lines for secrets that come after boot (no token or env in the payload).

Why a module of its own: the boot script (`startup_script`) renders every node's payload; what a
node does to get its secrets without the payload holding them (`enrollment.py`: the head waits for
the driver, a worker redeems its ticket) is one concern, kept here with the packing that lets the
node-side Python travel inside a launch payload, which every cloud caps (EC2: 16 KB of user data).
"""

from __future__ import annotations

import ast
import base64
import shlex
import zlib
from pathlib import Path


def compact_source(source: str) -> str:
    """`source` as the same program without comments and docstrings: node-side Python (the watchdog,
    the secret service, `ray start`) travels inside launch payloads, which every cloud caps."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and \
                node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            node.body = node.body[1:] or [ast.Pass()]  # a docstring (or a bare constant: no effect either)
    return ast.unparse(tree) + "\n"


def node_program(name: str) -> str:
    """The node-side Python program `name` of this package (`enrollment.py`, `watchdog.py`,
    `ray_start.py`), compacted: what a node runs."""
    return compact_source((Path(__file__).parent / name).read_text())


def packed_command(program: str) -> str:
    """`"$SKYWARD_PYTHON" -c ...` running `program` (a `node_program`), zlib-packed and base64'd: one
    shell word whatever the program holds, and small (every cloud caps its launch payload)."""
    packed = base64.b64encode(zlib.compress(program.encode(), 9)).decode()
    return f'"$SKYWARD_PYTHON" -c "import base64, zlib; exec(zlib.decompress(base64.b64decode(\'{packed}\')))"'


# The head's secret service and a worker's ticket redeemer.
ENROLLMENT_COMMAND = packed_command(node_program("enrollment.py"))


def secret_lines(role: str, *, head_ip: str, ticket: str, port: int, boot_deadline: float, head_wait: float,
                 own: list[str], delivery_grace: float = 60.0) -> list[str]:
    """The head starts its secret service and waits (within the boot deadline, safe under `set -u`)
    for the 0600 file it writes once the driver delivered the token and env over SSH; a live driver
    is already retrying the delivery when the service comes up, so a head that hears nothing for
    `delivery_grace` seconds from then has lost its driver (killed during the boot) and ends itself,
    as its watchdog would have once Ray ran (the first heartbeat grace). A worker
    redeems its `ticket` at the head. Either sources the file, re-applies the script's own exports
    `own` (the pool's env never overrides them, as when it was exported first), and removes it.
    Expects `$SKYWARD_PYTHON`, `$SKYWARD_MARKS` and (head) `$NODE_IP`."""
    lines = ['export SKYWARD_SECRETS="$SKYWARD_MARKS/skyward-secrets"', 'rm -f "$SKYWARD_SECRETS"']
    if role == "head":
        lines += [
            f'{ENROLLMENT_COMMAND} serve "$NODE_IP" {port} "$SKYWARD_SECRETS" &',
            "SKYWARD_ENROLL_PID=$! SKYWARD_ENROLL_SINCE=$SECONDS",
            'while [ ! -s "$SKYWARD_SECRETS" ]; do',
            '  kill -0 "$SKYWARD_ENROLL_PID" 2>/dev/null || { echo "skyward: the secret service exited; ending this '
            'machine"; exit 1; }',
            f'  [ "$SECONDS" -lt {int(boot_deadline)} ] || {{ echo "skyward: no token from the driver within '
            f'{int(boot_deadline)}s; ending this machine"; exit 1; }}',
            f'  [ $((SECONDS - SKYWARD_ENROLL_SINCE)) -lt {max(1, int(delivery_grace))} ] || {{ echo "skyward: no token '
            f'from the driver {int(delivery_grace)}s after the secret service started (the driver is gone); ending '
            'this machine"; exit 1; }',
            "  sleep 0.2",
            "done",
        ]
    else:
        lines.append(f"SKYWARD_ENROLL_TICKET={shlex.quote(ticket)} {ENROLLMENT_COMMAND} redeem "
                     f"{shlex.quote(head_ip)} {port} \"$SKYWARD_SECRETS\" {int(head_wait)} || "
                     "{ echo 'skyward: no token from the head; ending this machine'; exit 1; }")
    return lines + [
        "SKYWARD_OWN=\"$(export -p | grep -E '^declare -x (" + "|".join(own) + ")=')\"",
        '. "$SKYWARD_SECRETS"',
        'rm -f "$SKYWARD_SECRETS"',
        'eval "$SKYWARD_OWN"',
        "unset SKYWARD_OWN",
        ': "${RAY_AUTH_TOKEN:?skyward: no cluster token was delivered}"',
    ]
