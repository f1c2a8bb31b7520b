"""The script every node boots itself with (AWS user data, RunPod docker args, Vast onstart, a local process).

Why a script and not SSH: a node that sets itself up needs no inbound port, no key on the driver's
side and no driver staying online during boot. The script

1. installs the Image unless it is already satisfied (the driver's Ray and Python versions),
2. starts `ray start` as head or worker (then a small shell watching Ray's processes), with the instance
   id, node type, labels, market type and the cluster's auth token in the environment Ray reads them from,
3. on the head, starts a watchdog that stops Ray when the driver's heartbeat stops (teardown layer 3)
   or, for a detached pool, when the pool's max lifetime is reached (`lifetime`, with a backstop in
   the script itself should the watchdog be wedged),
4. when Ray or the watchdog exits, or the script itself exits for any reason (a trap on EXIT),
   runs the provider's shutdown command so the machine stops billing.

A machine also ends itself when its boot never completes (no driver heartbeat on the head, no head
answering on a worker, within the boot deadline), and when it finds it has booted before (a reboot
or a container restart re-running the script): it never comes back half-configured.

No cloud credential ever goes into it. Where the cloud keeps payloads (`secrets_after_boot`), no
secret at all: the token and the pool's env come after boot (`boot_secrets`, `enrollment`).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import sys

import ray
from pydantic import BaseModel, Field

from skyward_ray import names
from skyward_ray.errors import SpecError
from skyward_ray.names import HEARTBEAT_KEY, HEARTBEAT_NAMESPACE
from skyward_ray.node import apt, boot_secrets, enrollment, sshd, uv_bootstrap
from skyward_ray.node.uv_bootstrap import UV_VERSION


WATCHDOG_SOURCE = boot_secrets.node_program("watchdog.py")
WATCHDOG_COMMAND = boot_secrets.packed_command(WATCHDOG_SOURCE)
# The node's `ray start` (`ray_start.py`: no resident --block parent, a worker joins as soon as the
# head is listed).
RAY_START_COMMAND = boot_secrets.packed_command(boot_secrets.node_program("ray_start.py"))


class NodeBoot(BaseModel):
    """Everything one node's startup script needs. Built by a node provider, rendered here."""

    role: str = Field(pattern="^(head|worker)$")
    cluster_name: str
    auth_token: str = Field(repr=False)
    gcs_port: int = 6379
    head_ip: str | None = Field(default=None, description="required for workers")
    python: str | None = Field(
        default=None, description="an interpreter the node already has with the right Python and Ray (local nodes "
                                  "share the driver's); None: the node's own environment, made with uv when missing")
    env_dir_shell: str = Field(default="${SKYWARD_ENV_DIR:-/opt/skyward/env}",
                               description="where the node's own Python environment lives")
    ray_version: str = ray.__version__
    python_version: str = "%d.%d.%d" % sys.version_info[:3]
    pip: list[str] = Field(default_factory=list, description="installed on every boot (uv skips what is there)")
    apt: list[str] = Field(default_factory=list, description="installed on every boot")
    requirements: list[str] = Field(
        default_factory=lambda: node_requirements(),
        description="what tasks need to import skyward_ray on the node, pinned to the driver's versions")
    env: dict[str, str] = Field(default_factory=dict, description="exported before Ray starts; tasks inherit it")
    node_type_name: str = names.WORKER_TYPE
    labels: dict[str, str] = Field(default_factory=dict)
    first_index: int | None = Field(
        default=None, ge=1, description="a worker started in a batch (`Cloud.launch_many`): the batch's first node "
                                        "index; the node's own is this plus `launch_index_shell`")
    launch_index_shell: str | None = Field(
        default=None, description="with `first_index`: shell expression giving the machine's position in its batch")
    shell_labels: dict[str, str] = Field(
        default_factory=dict,
        description="labels whose values are shell expressions evaluated on the node (e.g. the instance id, "
                    "known only once the machine runs)",
    )
    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | None = None
    object_store_memory: int | None = None
    resources: dict[str, float] = Field(default_factory=dict)
    market_type: str | None = Field(default=None, description='"spot" or "on-demand"; Ray reads RAY_NODE_MARKET_TYPE')
    region: str | None = None
    zone: str | None = None
    instance_id_shell: str = Field(default="${" + names.ENV_INSTANCE_ID + "}", description="shell expression giving the instance id")
    node_ip_shell: str = Field(default="${" + names.ENV_NODE_IP + ":-$(hostname -I | awk '{print $1}')}")
    temp_dir_shell: str | None = Field(default=None, description="shell expression for Ray's temp dir (short: unix sockets)")
    extra_ray_args: list[str] = Field(default_factory=list)
    dashboard_port: int | None = Field(
        default=None, description="head only: run Ray's dashboard (its job API) on the head's loopback at this "
                                  "port, reached through the SSH tunnel; None: no dashboard (it costs ~1.4 GB)")
    heartbeat_grace: float = 30.0
    first_heartbeat_grace: float = Field(
        default=60.0, description="seconds from the head's GCS first answering to the driver's first heartbeat")
    boot_deadline: float = Field(
        default=900.0, description="seconds from the script's start to the first heartbeat (head) or the head "
                                   "answering (worker); past it the machine ends itself")
    mark_dir_shell: str = Field(default="${SKYWARD_MACHINE_DIR:-/var/lib/skyward}",
                                description="a directory that survives a reboot, for the machine's boot marks")
    head_wait_timeout: float = 600.0
    lifetime: float | None = Field(
        default=None, gt=0, description="head only: seconds from the script's start after which the node ends the "
                                        "pool whatever its heartbeat says (a detached pool's max lifetime, enforced "
                                        "on the node); None: no limit")
    lifetime_backstop: float = Field(
        default=60.0, gt=0, description="seconds past `lifetime` after which the script ends the machine itself, "
                                        "should the watchdog be wedged (it needs up to ~15 s to stop Ray)")
    gcs_reconnect_timeout: int = 15
    shutdown_command: str = ""
    secrets_after_boot: bool = False  # no secret in the script: the head's come from the driver, a worker's for its ticket
    enrollment_ticket: str = Field(default="", repr=False, description="a worker's one-time ticket")
    enrollment_port: int = enrollment.PORT
    print_host_key: str | None = Field(
        default=None, description="head only: the machine's own SSH host public key file, printed on its console "
                                  "(at the start and again before Ray starts) for a driver that reads the console "
                                  "back; None: nothing printed")


# skyward_ray's own dependencies besides Ray: a task imports skyward_ray on the node (its code
# travels with the job), so the node needs these, at the driver's versions.
NODE_DEPENDENCIES = ("pydantic", "rich", "psutil", "packaging", "PyYAML")


def node_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in NODE_DEPENDENCIES]


def _export(name: str, value: object) -> str:
    return f"export {name}={shlex.quote(str(value))}"


def _ray_start_command(boot: NodeBoot) -> list[str]:
    args = [RAY_START_COMMAND, boot.role, "start", "--disable-usage-stats"]
    args.append('--node-ip-address="$NODE_IP"')
    if boot.role == "head":
        args += ["--head", f"--port={boot.gcs_port}"]
        if boot.dashboard_port is None:
            args.append("--include-dashboard=false")
        else:
            args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={boot.dashboard_port}"]
    else:
        args.append(f"--address={boot.head_ip}:{boot.gcs_port}")
    if boot.temp_dir_shell:
        args.append(f'--temp-dir="{boot.temp_dir_shell}"')
    if boot.num_cpus is not None:
        args.append(f"--num-cpus={boot.num_cpus:g}")
    if boot.num_gpus is not None:
        args.append(f"--num-gpus={boot.num_gpus:g}")
    if boot.memory is not None:
        args.append(f"--memory={boot.memory}")
    if boot.object_store_memory is not None:
        args.append(f"--object-store-memory={boot.object_store_memory}")
    if boot.resources:
        args.append("--resources=" + shlex.quote(json.dumps(boot.resources)))
    static = ",".join(f"{k}={v}" for k, v in sorted(boot.labels.items()))
    dynamic = ",".join(f"{k}={v}" for k, v in sorted(boot.shell_labels.items()))
    if static and dynamic:
        args.append("--labels=" + shlex.quote(static + ",") + f'"{dynamic}"')
    elif static or dynamic:
        args.append("--labels=" + (shlex.quote(static) if static else f'"{dynamic}"'))
    args += [shlex.quote(a) for a in boot.extra_ray_args]
    return args


# What may be interpolated into the script. Every value is also shell-quoted where it is used; the
# patterns keep names to the characters their consumers (bash, Ray's --labels parser, cloud tags)
# accept, so a hostile value is refused with a clear error instead of reaching a shell.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,252}")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9 ._:+@/-]{0,253}")
_VERSION = re.compile(r"[0-9A-Za-z.+-]{1,64}")
_TOKEN = re.compile(r"[A-Za-z0-9_.+/=-]{0,512}")
_PLACE = re.compile(r"[A-Za-z0-9 ._,:()-]{0,128}")  # regions and zones ("us-east-1a", "Texas, US")


_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _is_address_or_hostname(value: str) -> bool:
    """An IP address, or an RFC 1123 host name (labels of letters, digits and inner '-') whose last
    label is not all digits (so a malformed address such as 10.1.2 is not taken for a name)."""
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    return 0 < len(value) <= 253 and not labels[-1].isdigit() and \
        all(_HOSTNAME_LABEL.fullmatch(label) for label in labels)


def _refuse(field: str, value: object, rule: str) -> SpecError:
    return SpecError(f"boot script: {field}={str(value)[:80]!r} is not allowed ({rule}); nothing was started")


def validate(boot: NodeBoot) -> None:
    """Check every value `render` interpolates; raise `SpecError` naming the first bad one.

    The `*_shell` fields, `shutdown_command` and `extra_ray_args` come from the provider's own code
    (`BootEnvironment`), not from users: the first are shell by design, the last are quoted.
    """
    checks: list[tuple[str, object, re.Pattern[str], str]] = [
        ("cluster_name", boot.cluster_name, _NAME, "letters, digits, '.', '_', '-'"),
        ("node_type_name", boot.node_type_name, _NAME, "letters, digits, '.', '_', '-'"),
        ("ray_version", boot.ray_version, _VERSION, "a version number"),
        ("python_version", boot.python_version, _VERSION, "a version number"),
    ]
    if not _TOKEN.fullmatch(boot.auth_token):
        raise _refuse("auth_token", "(hidden)", "a token of letters and digits")
    if not _TOKEN.fullmatch(boot.enrollment_ticket) or (
            boot.secrets_after_boot and boot.role == "worker" and not boot.enrollment_ticket):
        raise _refuse("enrollment_ticket", "(hidden)", "a worker whose secrets come after boot needs its ticket")
    for field, value, pattern, rule in checks:
        if not pattern.fullmatch(str(value)):
            raise _refuse(field, value, rule)
    for field in ("region", "zone"):
        value = getattr(boot, field)
        if value is not None and not _PLACE.fullmatch(value):
            raise _refuse(field, value, "a region or zone name")
    for key in boot.env:
        if key in names.RAY_AUTH_ENV:
            raise _refuse("env", key, "the cluster's Ray auth settings are the boot script's own")
    if boot.market_type not in (None, "spot", "on-demand"):
        raise _refuse("market_type", boot.market_type, "'spot' or 'on-demand'")
    for field in ("gcs_port", "enrollment_port"):
        if not 0 < getattr(boot, field) < 65536:
            raise _refuse(field, getattr(boot, field), "a TCP port")
    if (boot.first_index is None) != (boot.launch_index_shell is None) or (
            boot.first_index is not None and boot.role != "worker"):
        raise _refuse("first_index", boot.first_index, "a worker of a batch needs both first_index and "
                                                       "launch_index_shell")
    if boot.head_ip is not None and not _is_address_or_hostname(boot.head_ip):
        raise _refuse("head_ip", boot.head_ip, "an IPv4 or IPv6 address, or a DNS host name "
                                               "(a private network's name, e.g. <pod id>.runpod.internal)")
    for key in boot.env:
        if not _ENV_NAME.fullmatch(key):
            raise _refuse("env", key, "environment variable names are letters, digits and '_'")
    for key, value in boot.labels.items():
        if not _LABEL_KEY.fullmatch(key):
            raise _refuse("labels", key, "label keys are letters, digits, '.', '_', '/', '-'")
        if not _LABEL_VALUE.fullmatch(value):
            raise _refuse("labels", value, "label values are letters, digits, spaces and '._:+@/-'")
    for key in boot.shell_labels:
        if not _LABEL_KEY.fullmatch(key):
            raise _refuse("shell_labels", key, "label keys are letters, digits, '.', '_', '/', '-'")
    for key in boot.resources:
        if not _LABEL_KEY.fullmatch(key) and not re.fullmatch(r"accelerator_type:[A-Za-z0-9._-]+", key):
            raise _refuse("resources", key, "resource names are letters, digits, '.', '_', '/', ':', '-'")


def _token_lines(boot: NodeBoot) -> list[str]:
    """The token in the script only where the cloud has no other channel; one in the machine's
    environment (`token_in_environment`) gets a check; secrets after boot come later (`boot_secrets`)."""
    if boot.secrets_after_boot:
        return []
    if boot.auth_token:
        return [_export("RAY_AUTH_TOKEN", boot.auth_token)]
    return [': "${RAY_AUTH_TOKEN:?skyward: no cluster token in the environment}"',
            "export RAY_AUTH_TOKEN"]


def render(boot: NodeBoot) -> str:
    """The bash script for one node. Plain text: callers base64 it where their API needs quoting."""
    if boot.role == "worker" and not boot.head_ip:
        raise ValueError("a worker's startup script needs head_ip")
    validate(boot)
    lines = [
        "#!/usr/bin/env bash",
        f"# skyward_ray node bootstrap: cluster {boot.cluster_name}, role {boot.role}",
        "set -u",
        *_base_environment_lines(),
        # The provider's shutdown command, once: every way out below calls it.
        f"{END_MACHINE}() {{ {_shutdown(boot)}\n}}",
        # Whatever way this script ends, the machine ends with it.
        f"trap {END_MACHINE} EXIT",
        f'SKYWARD_MARKS="{boot.mark_dir_shell}"',
        'export SKYWARD_BOOT_DONE="$SKYWARD_MARKS/skyward-boot-done"',
        'if [ -e "$SKYWARD_MARKS/skyward-booted" ]; then',
        "  echo 'skyward: this machine has booted before (a reboot or a restart); ending it instead of "
        "coming back half-configured'",
        "  exit 0",
        "fi",
        'mkdir -p "$SKYWARD_MARKS" && : > "$SKYWARD_MARKS/skyward-booted"',
        *(sshd.print_host_key_lines(boot.print_host_key) if boot.print_host_key else []),
        f'( sleep {int(boot.boot_deadline)}; [ -e "$SKYWARD_BOOT_DONE" ] || {{ echo "skyward: boot not done within '
        f'{int(boot.boot_deadline)}s (no driver heartbeat or no head); ending this machine"; {END_MACHINE}; }} ) &',
        *_lifetime_backstop(boot),
        # The pool's environment first: what the script exports below (ids, addresses, Ray's auth) wins.
        *(_export(key, value) for key, value in sorted(boot.env.items())),
        *_batch_index_lines(boot),
        f'export {names.ENV_INSTANCE_ID}="{boot.instance_id_shell}"',
        f'NODE_IP="{boot.node_ip_shell}"',
        f'export {names.ENV_NODE_IP}="$NODE_IP"',
        _export(names.ENV_CLUSTER, boot.cluster_name),
        _export("RAY_USAGE_STATS_ENABLED", 0),
        _export("RAY_AUTH_MODE", "token"),
        *_token_lines(boot),
        f'export RAY_CLOUD_INSTANCE_ID="${names.ENV_INSTANCE_ID}"',
        _export("RAY_NODE_TYPE_NAME", boot.node_type_name),
        _export("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", 0),
        _export("RAY_gcs_rpc_server_reconnect_timeout_s", boot.gcs_reconnect_timeout),
        _export(names.ENV_HEAD_IP, boot.head_ip or "") if boot.role == "worker" else f'export {names.ENV_HEAD_IP}="$NODE_IP"',
    ]
    if boot.market_type:
        lines.append(_export("RAY_NODE_MARKET_TYPE", boot.market_type))
    if boot.region:
        lines.append(_export("RAY_NODE_REGION", boot.region))
    if boot.zone:
        lines.append(_export("RAY_NODE_ZONE", boot.zone))
    if boot.temp_dir_shell:
        lines.append(f'mkdir -p "{boot.temp_dir_shell}"')

    lines += _environment_lines(boot)
    if boot.secrets_after_boot:  # once its Python is there; the script's own exports win over the pool's env
        own = sorted(set(re.findall(r"^export ([A-Za-z_][A-Za-z0-9_]*)=", "\n".join(lines), re.M)))
        lines += boot_secrets.secret_lines(boot.role, head_ip=boot.head_ip or "", ticket=boot.enrollment_ticket,
                                           port=boot.enrollment_port, boot_deadline=boot.boot_deadline,
                                           head_wait=boot.head_wait_timeout, own=own,
                                           delivery_grace=boot.first_heartbeat_grace)
    if boot.role == "worker":
        lines += [
            _export("SKYWARD_GCS_PORT", boot.gcs_port),
            _export("SKYWARD_HEAD_WAIT", int(boot.head_wait_timeout)),
        ]
    if boot.print_host_key:  # again after the installs, whose output may have pushed the first out of the console's tail
        lines += sshd.print_host_key_lines(boot.print_host_key)
    lines += [
        "echo 'skyward: starting ray'",
        # A non-interactive shell starts `&` jobs with SIGINT ignored, and Ray's workers would inherit
        # that: ray.cancel() could then never interrupt a running task. Restore it before exec.
        "( trap - INT; exec " + " ".join(_ray_start_command(boot)) + " ) &",
        "RAY_PID=$!",
    ]
    if boot.role == "head":
        lines += [
            f'SKYWARD_WATCH_GCS="$NODE_IP:{boot.gcs_port}" SKYWARD_WATCH_RAY_PID="$RAY_PID" '
            f"SKYWARD_WATCH_GRACE={boot.heartbeat_grace:g} SKYWARD_WATCH_FIRST_GRACE={boot.first_heartbeat_grace:g} "
            f"SKYWARD_WATCH_NAMESPACE={HEARTBEAT_NAMESPACE} SKYWARD_WATCH_KEY={HEARTBEAT_KEY} "
            + (f"SKYWARD_WATCH_LIFETIME=$(( {int(boot.lifetime)} > SECONDS ? {int(boot.lifetime)} - SECONDS : 1 )) "
               if boot.lifetime is not None else "") +
            WATCHDOG_COMMAND + " &",
            "WATCHDOG_PID=$!",
        ]
    else:
        lines.append('WATCHDOG_PID="$RAY_PID"')
    lines += [
        'trap \'kill -TERM "$RAY_PID" 2>/dev/null\' TERM INT HUP',
        # Supervise both: when either Ray or the watchdog exits, the machine ends.
        'while kill -0 "$RAY_PID" 2>/dev/null && kill -0 "$WATCHDOG_PID" 2>/dev/null; do sleep 1 & wait $!; done',
        'if kill -0 "$RAY_PID" 2>/dev/null; then echo "skyward: the watchdog exited; ending this machine"; else',
        '  wait "$RAY_PID" 2>/dev/null; echo "skyward: ray exited ($?); ending this machine"; fi',
        _shutdown(boot),  # the provider's own command, last: what a reader of the script looks for
    ]
    return "\n".join(lines) + "\n"


def _batch_index_lines(boot: NodeBoot) -> list[str]:
    """A worker of a batch learns its node index at boot: the batch's first plus its launch index.
    A machine that cannot read its launch index ends itself (it would join with no index)."""
    if boot.first_index is None:
        return []
    return [
        f'SKYWARD_LAUNCH_INDEX="{boot.launch_index_shell}"',
        'case "$SKYWARD_LAUNCH_INDEX" in ""|*[!0-9]*) echo "skyward: no launch index from the cloud '
        '(\"$SKYWARD_LAUNCH_INDEX\"); ending this machine"; exit 1;; esac',
        f'export {names.ENV_NODE_INDEX}="$(( {boot.first_index} + SKYWARD_LAUNCH_INDEX ))"',
    ]


def _base_environment_lines() -> list[str]:
    """What a boot runner may leave out, set before anything reads it (the script runs under `set -u`):
    cloud-init runs user data as root with a minimal environment, `HOME` unset (reported for the AWS
    DLAMIs), so `HOME` comes from the password database (else root's), `PATH` from the usual dirs."""
    return [
        'export PATH="${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}"',
        '[ -n "${HOME:-}" ] || HOME="$(getent passwd "$(id -u)" 2>/dev/null | cut -d: -f6)"',
        'export HOME="${HOME:-/root}"',
    ]


# The shell function holding the provider's shutdown command (defined first in every script).
END_MACHINE = "skyward_end_machine"
# The comment line before the Image's apt packages: everything above it runs before any install.
APT_MARK = "# skyward: the image's apt packages"

def _lifetime_backstop(boot: NodeBoot) -> list[str]:
    """A detached head ends itself past its lifetime even when its watchdog is wedged (the watchdog
    stops Ray at `lifetime`; this fires `lifetime_backstop` later, both from the script's start)."""
    if boot.lifetime is None or boot.role != "head":
        return []
    after = int(boot.lifetime + boot.lifetime_backstop)
    return [f'( sleep {after}; echo "skyward: the max lifetime of this pool ({int(boot.lifetime)}s) is past; '
            f'ending this machine"; {END_MACHINE} ) &']


def _fail(boot: NodeBoot, what: str) -> str:
    return "{ echo 'skyward: " + what + " failed; ending this machine'; " + END_MACHINE + "; exit 1; }"


def _environment_lines(boot: NodeBoot) -> list[str]:
    """The driver's exact Python and Ray (a uv virtualenv unless the node has them), then the Image.

    Ray checks versions between nodes at patch level and Ray Client checks the driver at minor
    level, so a node never runs with "close enough". The Image's apt and pip packages are applied on
    every boot: a package list is cheap to re-check and a reused machine must not run stale code.
    """
    pins = " ".join(shlex.quote(p) for p in [f"ray[default]=={boot.ray_version}", *boot.requirements])
    # Ray's installed version from its metadata, not `import ray` (about 1 s of CPU per node, paid on
    # every boot; the local provider's nodes all boot at once on the driver's machine)
    version_check = (
        "import sys; from importlib.metadata import version; "
        f"sys.exit(0 if version('ray') == {boot.ray_version!r} and "
        f"'%d.%d.%d' % sys.version_info[:3] == {boot.python_version!r} else 1)"
    )
    lines = []
    if boot.python:
        lines.append(_export(names.ENV_PYTHON, boot.python))
    else:
        lines += [f'SKYWARD_ENV="{boot.env_dir_shell}"', f'export {names.ENV_PYTHON}="$SKYWARD_ENV/bin/python"']
    needs_uv = not boot.python or bool(boot.pip)
    if boot.apt or needs_uv:
        lines += apt.function_lines()
    if boot.apt:
        lines += [APT_MARK, apt.install_command(boot.apt) + " || " + _fail(boot, "apt install")]
    if needs_uv:
        lines += [f'export PATH="{uv_bootstrap.BIN_DIR}:$PATH" UV_LINK_MODE="${{UV_LINK_MODE:-copy}}"',
                  *uv_bootstrap.function_lines()]
    uv = [f"{uv_bootstrap.FUNCTION} || " + _fail(boot, "installing uv")]
    if boot.python:
        install = [f'"$SKYWARD_PYTHON" -m pip install -q {pins} || ' + _fail(boot, "installing ray")]
    else:
        install = [f'uv venv -q --python {boot.python_version} "$SKYWARD_ENV" && '
                   f'uv pip install -q --python "$SKYWARD_PYTHON" {pins} || '
                   + _fail(boot, f"installing Python {boot.python_version} and ray {boot.ray_version}")]
        lines.append("mkdir -p \"$(dirname \"$SKYWARD_ENV\")\"")
    lines += [
        f'if ! "$SKYWARD_PYTHON" -c {shlex.quote(version_check)} 2>/dev/null; then',
        f"  echo 'skyward: installing Python {boot.python_version} and ray {boot.ray_version}'",
        *("  " + line for line in (uv if not boot.python else []) + install),
        "fi",
    ]
    if boot.pip:
        packages = " ".join(shlex.quote(p) for p in boot.pip)
        lines += ["echo 'skyward: installing the image packages'", *uv,
                  f'uv pip install -q --python "$SKYWARD_PYTHON" {packages} || ' + _fail(boot, "installing Image.pip")]
    return lines


def _shutdown(boot: NodeBoot) -> str:
    return boot.shutdown_command or "true"
