"""The head's own sshd inside a container (RunPod pods, Vast.ai instances, `sky.Container`), as one
shell snippet.

A container cloud gives no cloud-init to install a host key, so the head's payload starts its own
sshd before the boot script, with the cluster's login key (its private half never left the driver),
public-key logins of one user only, and TCP forwarding for the driver's tunnel. Its host key is
made on the head itself and printed on its log between cloud-init's markers; the cloud shows the
driver that log (RunPod's and Vast.ai's log APIs, Docker's), the driver pins what the log shows
before its first connection, and no private key travels anywhere (`OWN_HOST_KEY`).

sshd is installed with apt where the image lacks it (`skyward_ray.node.apt`: waiting for a first
boot's dpkg lock). Everything lives under `$S/ssh` (`$S` is skyward's own directory in the
container, `STATE_DIR`).
"""

from __future__ import annotations

import re
import shlex

from skyward_ray import names
from skyward_ray.node import apt

STATE_DIR = "${HOME:-/root}/.skyward"  # a runner may leave HOME unset (cloud-init does)

# Where a machine whose boot runner makes its host keys (cloud-init's `cc_ssh`) keeps the ed25519
# one, and the markers cloud-init's `keys-to-console` prints the keys between on the console.
SYSTEM_HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
HOST_KEYS_BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
HOST_KEYS_END = "-----END SSH HOST KEY KEYS-----"
# The host key a container head makes for its own sshd (`sshd_lines` without a key): the public half
# is what it prints.
OWN_HOST_KEY = f"{STATE_DIR}/ssh/host_ed25519_key.pub"

_SSHD_CONFIG = (
    "ListenAddress 0.0.0.0", "HostKey $S/ssh/host_ed25519_key", "AuthorizedKeysFile $S/ssh/authorized_keys",
    "PidFile none", "PermitRootLogin prohibit-password", "AuthenticationMethods publickey",
    "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
    "StrictModes no", "AllowTcpForwarding yes", "X11Forwarding no", "AllowAgentForwarding no", "PrintMotd no",
    "ClientAliveInterval 10",
)


def state_dir_lines() -> list[str]:
    """`$S`, skyward's own 0700 directory in the container (the boot script and sshd live there)."""
    return [f'S="{STATE_DIR}"', 'mkdir -p "$S" && chmod 700 "$S"']


def sshd_lines(port: int, user: str, authorized_key: str) -> list[str]:
    """Start sshd on `port` with a host key made here and printed (`OWN_HOST_KEY`), letting `user`
    in with `authorized_key` only.
    Expects `$S` (see `state_dir_lines`); sshd runs in the background, logging to `$S/sshd.log`.
    `user` goes bare into an unquoted heredoc, so only a plain name passes (`RemoteMachineConfig`
    checks it for the user first; this is the last line before a shell)."""
    if not re.fullmatch(names.LOGIN_USER, user):
        raise ValueError(f"sshd: {user[:40]!r} is not a plain POSIX user name")
    return [
        "# skyward_ray: the head's sshd for the driver's tunnel (pinned host key, the cluster's login key)",
        'mkdir -p "$S/ssh" && chmod 700 "$S/ssh"',
        f'echo {shlex.quote(authorized_key.strip())} > "$S/ssh/authorized_keys"',
        'chmod 600 "$S/ssh/authorized_keys"',
        'cat > "$S/ssh/sshd_config" <<SSHD',
        f"Port {port}",
        *_SSHD_CONFIG,
        f"AllowUsers {user}",
        "SSHD",
        "mkdir -p /run/sshd",
        'SSHD_BIN="$(command -v sshd || echo /usr/sbin/sshd)"',
        'if [ ! -x "$SSHD_BIN" ]; then',
        *("  " + line for line in apt.function_lines()),
        "  " + apt.install_command(["openssh-server"]) + ' >> "$S/apt.log" 2>&1',
        "  SSHD_BIN=/usr/sbin/sshd",
        "fi",
        # its own key, made once (a restarted container keeps it, as sshd's would), then printed;
        # ssh-keygen comes with sshd (openssh-server depends on openssh-client)
        'if [ ! -s "$S/ssh/host_ed25519_key.pub" ]; then',
        '  rm -f "$S/ssh/host_ed25519_key"',
        '  ssh-keygen -q -t ed25519 -N "" -C skyward-head -f "$S/ssh/host_ed25519_key" < /dev/null || '
        '{ echo "skyward: could not make an SSH host key; ending this machine"; exit 1; }',
        "fi",
        *print_host_key_lines(OWN_HOST_KEY),
        '"$SSHD_BIN" -D -e -f "$S/ssh/sshd_config" >> "$S/sshd.log" 2>&1 &',
    ]


def print_host_key_lines(path: str = SYSTEM_HOST_KEY) -> list[str]:
    """Print the machine's own SSH host public key on its console, between cloud-init's markers.

    Where a cloud lets the driver read a machine's console back (AWS GetConsoleOutput, Vast.ai's log
    API, Docker's logs), the head's host key is made on the head (cloud-init at first boot, or
    `sshd_lines`) and never travels anywhere: the driver
    pins what the console shows (`skyward_ray.cluster.ssh_keys.printed_host_keys`). cloud-init's
    own `keys-to-console` runs only after the user script ends, which a node's script never does
    while the node lives, so the script prints the key itself."""
    return [f'if [ -r "{path}" ]; then echo "{HOST_KEYS_BEGIN}"; cat "{path}"; echo "{HOST_KEYS_END}"; '
            f'else echo "skyward: this machine has no SSH host key at {path}"; fi']
