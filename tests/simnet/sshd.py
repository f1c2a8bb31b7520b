"""The files of a simulated host's OpenSSH server: its host key, the one login key, and its config.

Root may log in with that key only (no passwords, no keyboard-interactive); TCP forwarding is
allowed (that is what the tunnel uses). The files live in a root-owned 0700 directory of the host.
"""

from __future__ import annotations

from pathlib import Path


def write_sshd_files(home: Path, host_private_key_path: str | Path, authorized_public_key: str) -> Path:
    """Write sshd's files into `home` (made 0700); returns the path of its config file."""
    home.mkdir(mode=0o700, exist_ok=True)
    home.chmod(0o700)
    host_key = home / "ssh_host_ed25519_key"
    host_key.write_bytes(Path(host_private_key_path).read_bytes())
    host_key.chmod(0o600)
    authorized = home / "authorized_keys"
    authorized.write_text(authorized_public_key.strip() + "\n")
    authorized.chmod(0o600)
    config = home / "sshd_config"
    config.write_text("\n".join([
        "Port 22",
        "ListenAddress 0.0.0.0",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}",
        "PidFile none",
        "PermitRootLogin prohibit-password",
        "AllowUsers root",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitEmptyPasswords no",
        "UsePAM no",
        # The files sit under /tmp (world-writable), which StrictModes rejects on its walk to "/";
        # they are in a root-owned 0700 directory instead.
        "StrictModes no",
        "AllowTcpForwarding yes",
        "PermitTunnel no",
        "X11Forwarding no",
        "AllowAgentForwarding no",
        "PrintMotd no",
        "ClientAliveInterval 10",
        "LogLevel VERBOSE",
        "",
    ]))
    config.chmod(0o600)
    return config
