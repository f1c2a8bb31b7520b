"""What a Vast.ai instance boots from, within the create request's published limits.

Vast.ai runs `onstart` in its SSH launch mode; the field holds at most 4,048 characters (the API's
OpenAPI description, "Key Quirks": "`onstart` field is limited to 4048 characters -- gzip+base64
for longer scripts") and args + args_str + onstart at most 4,096 (create_instance.yaml,
`x-input-validation.args`). Skyward's boot script is longer than that even gzipped, so the payload
travels in the request's `env` instead, which holds much more: each entry at most 256 characters,
32,768 in all (create_instance.yaml, `x-input-validation.env`). The payload is gzipped,
base64-encoded and cut into `SKYWARD_BOOT_<nnn>` variables; `onstart` is only the few lines that
join them back (bash, base64 and gzip are in every Debian/Ubuntu image, `ubuntu:22.04` too).

The joined script is, in order: what must work before anything can fail (curl, installed with apt
where the image has none, because `ubuntu:22.04` has neither curl nor python3 and the instance
can only end itself over HTTPS; then a trap that destroys the instance on any exit), the head's
sshd (the cluster's login key, and a host key it makes and prints for the driver to pin), and the
rendered boot script, which sets its own trap. No secret is in them: the pool's token and env come
after boot over the pinned SSH session, and no private key travels.
"""

from __future__ import annotations

import base64
import gzip
from dataclasses import dataclass

from skyward_ray.cluster.contract import MachineRequest
from skyward_ray.errors import SpecError
from skyward_ray.node.sshd import sshd_lines, state_dir_lines

ONSTART_LIMIT = 4048       # the API's OpenAPI description ("Key Quirks")
ARGS_ONSTART_LIMIT = 4096  # create_instance.yaml x-input-validation.args: args + args_str + onstart
ENV_ENTRY_LIMIT = 256      # create_instance.yaml x-input-validation.env.max_length
ENV_TOTAL_LIMIT = 32768    # create_instance.yaml x-input-validation.env.max_total_length
CHUNK_PREFIX = "SKYWARD_BOOT_"
CHUNK_SIZE = 200           # "SKYWARD_BOOT_nnn=" + 200 characters, well within an entry's 256
APT_LOCK_TIMEOUT_S = 300   # unattended-upgrades may hold the dpkg lock on a fresh machine

# `onstart`: join the chunks (in order), decode, run. Nothing here needs more than bash, coreutils
# and gzip. A payload that does not decode cannot end the instance (no curl yet); it is checked on
# the driver before the rental, so only a damaged image could fail here.
JOIN = f"""#!/bin/bash
# skyward_ray node: the boot payload is in the {CHUNK_PREFIX}* variables (onstart holds 4,048 characters)
_f="$(mktemp)"
for _n in $(compgen -e | grep '^{CHUNK_PREFIX}[0-9]' | sort); do printf %s "${{!_n}}"; done | base64 -d | gunzip > "$_f"
for _n in $(compgen -e | grep '^{CHUNK_PREFIX}[0-9]'); do unset "$_n"; done
exec bash "$_f"
"""


def curl_lines(log: str = '"$S/apt.log"') -> list[str]:
    """Install curl (and the CA certificates HTTPS needs) where the image has none, retrying while
    apt's lock is held or a mirror is slow: every later step that can fail ends the instance with it."""
    apt = f"DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S} -qq"
    return [
        "if ! command -v curl >/dev/null 2>&1; then",
        "  echo 'skyward: this image has no curl; installing it'",
        "  for _try in 1 2 3 4 5; do",
        f"    {{ {apt} update && {apt} install -y --no-install-recommends curl ca-certificates; }} >> {log} 2>&1 && break",
        "    sleep $((_try * 10))",
        "  done",
        "fi",
    ]


def payload_script(request: MachineRequest, ssh_port: int, ssh_user: str, ssh_public_key: str,
                   destroy: str) -> str:
    """The script the chunks carry: curl, the destroy trap, the head's sshd, then the boot script."""
    lines = ["#!/bin/bash", "# skyward_ray node: curl and self-destroy first, the head's sshd, then the boot script",
             *state_dir_lines(), *curl_lines(),
             f"skyward_destroy() {{ {destroy}\n}}", "trap skyward_destroy EXIT"]
    if request.role == "head":  # it makes its own host key and prints it (`Cloud.printed_host_key`)
        lines += sshd_lines(ssh_port, ssh_user, ssh_public_key)
        lines += ['sleep 1; kill -0 $! 2>/dev/null || { echo "skyward: sshd did not start; ending this instance"; '
                  "exit 1; }"]
    lines += ["cat > \"$S/boot.sh\" <<'SKYWARD_BOOT_SCRIPT'", request.boot_script.rstrip("\n"),
              "SKYWARD_BOOT_SCRIPT", "trap - EXIT", 'exec bash "$S/boot.sh"', ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class BootPayload:
    """The create request's `onstart`, and its `env` with the boot payload's entries."""

    onstart: str
    env: dict[str, str]


def boot_payload(request: MachineRequest, ssh_port: int, ssh_user: str, ssh_public_key: str, destroy: str,
                 other_env: dict[str, str]) -> BootPayload:
    """The payload for one instance, checked against Vast.ai's limits; `SpecError` naming the cause
    (mostly the Image's pip, apt and env lists) where it cannot fit."""
    script = payload_script(request, ssh_port, ssh_user, ssh_public_key, destroy)
    blob = base64.b64encode(gzip.compress(script.encode(), compresslevel=9, mtime=0)).decode()
    chunks = [blob[i:i + CHUNK_SIZE] for i in range(0, len(blob), CHUNK_SIZE)]
    if len(chunks) > 999:
        chunks = []  # reported below as too large
    env = {f"{CHUNK_PREFIX}{n:03d}": chunk for n, chunk in enumerate(chunks)}
    total = sum(len(k) + 1 + len(v) for k, v in {**other_env, **env}.items())
    if not chunks or total > ENV_TOTAL_LIMIT:
        raise SpecError(
            f"Vast.ai: this node's boot payload is {len(script):,} characters ({len(blob):,} gzipped and "
            f"base64-encoded), over the {ENV_TOTAL_LIMIT:,} characters a Vast.ai instance's environment holds "
            f"(the onstart field itself holds {ONSTART_LIMIT:,}). Most of it is the Image's pip, apt and env "
            "lists. Fix: shorten them (e.g. a requirements file baked into your own image via "
            "sky.VastAI(image=...)), or choose another provider")
    assert len(JOIN) <= ONSTART_LIMIT
    return BootPayload(onstart=JOIN, env={**other_env, **env})
