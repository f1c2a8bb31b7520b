"""The host simulator for the local Vast.ai: every instance the fake says is running becomes a
machine that boots itself from its onstart script, as isolated as a container on a real host.

A background thread polls the fake's instances. For each new running instance it makes a host on
the simulated network (`tests.simnet`; what a machine is, `tests.simhost`):

- its own network namespace with the instance's address, and its public address on the public
  network; nothing reaches it from other instances' private side (Vast.ai instances on different
  hosts share no network); only the ports the create request opened (`"-p 2222:2222"` in `env`, plus 22 for the
  SSH launch mode) are reachable from outside, each at the host port Vast advertised in the
  instance's `ports` (a DNAT rule maps host port → container port, as Docker does on a host);
- in the SSH (or Jupyter) launch mode, the onstart script, run as Vast's entrypoint runs it ("Shell
  commands to run after Vast's entrypoint initializes", docs.vast.ai, "Creating instances with
  API"): the machine's root process group inside the namespace with exactly the environment Vast
  gives a container: `CONTAINER_ID`, `CONTAINER_API_KEY` (the instance-scoped key, not the
  user's), `PUBLIC_IPADDR`, `VAST_TCP_PORT_<port>`, `VAST_CONTAINERLABEL` and the request's own
  variables, with root's HOME and nothing of the driver's environment (no `SKYWARD_*` id or
  address: the node learns its id from `CONTAINER_ID`, its address from its own interfaces). In
  the entrypoint (`args`) launch mode onstart does not run; the image's command would, and there
  is no image here, so such an instance runs nothing. The machine is bare (`tests.simhost`;
  SKYWARD_SIM_BARE_VAST=0 or `VastHosts(bare=False)` gives the quicker process-only machine): its
  own root filesystem from the `ubuntu:22.04`-like image (`tests.images.cloud_images.VAST`: no
  python3, no curl), PATH and ENV as the image sets them, and everything the boot installs (apt
  packages, uv, CPython, Ray) downloaded from the simulated internet (`tests.siminternet`). Otherwise it is the process-only machine (the
  driver's userland, an offline package cache);
- `shutdown`, `poweroff`, `halt`, `reboot` refuse: a container cannot power its host off (and the
  real ones must never run here). A Vast instance ends itself through the API.

When the fake says an instance is stopped (interrupted) or gone (destroyed), its processes and
namespace are ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from tests.images.cloud_images import VAST
from tests.simhost import SHUTDOWN_NAMES, SimulatedHosts, nft
from tests.simvast.server import Instance, SimVast

_REFUSE_SHIM = """#!/bin/sh
# simulated Vast.ai container: it cannot power its host off; end the instance through the API instead
echo "simvast: $(basename "$0") $* refused inside container $CONTAINER_ID" >&2
exit 1
"""
SHIM_NAMES = SHUTDOWN_NAMES


class VastHosts(SimulatedHosts):
    """Boots and ends simulated machines for the instances of one local Vast.ai (watching its listing)."""

    prefix = "sv-"
    shims: ClassVar[Mapping[str, str]] = {name: _REFUSE_SHIM for name in SHIM_NAMES}
    thread_name = "simvast-hosts"
    image = VAST
    bare_switch = "SKYWARD_SIM_BARE_VAST"

    def __init__(self, sim: SimVast, poll_interval: float = 0.15, bare: bool | None = None) -> None:
        super().__init__(sim, poll_interval=poll_interval, bare=bare)
        self._private = 0

    def _next_private_ip(self) -> str:
        self._private += 1
        return str(self.network.private_net[10 + self._private])

    def attach(self) -> None:
        self.sim.public_ips = self.network.allocate_public_ip
        self.sim.private_ips = self._next_private_ip
        self.sim.log_source = lambda instance_id, lines: self.host.log_tail(str(instance_id), lines)

    def detach(self) -> None:
        self.sim.log_source = None

    # -- the watch loop ------------------------------------------------------------------------------
    def listing(self) -> dict[int, Instance]:
        return {i.id: i for i in self.sim.live()}

    def is_running(self, record: Instance) -> bool:
        return record.status == "running"  # stopped (interrupted), or gone (destroyed): it ended

    def boot_listed(self, machine_id: int, instance: Instance, waited: float) -> None:
        self.mark_booted(instance.id, waited)
        ports = sorted(instance.host_ports)
        host = self.add_host(instance.id, "v", private_ip=instance.private_ip, public_ip=instance.public_ip,
                             allowed_tcp=[("0.0.0.0/0", port, port) for port in ports])
        rules = "\n".join(f'    iifname "pub" tcp dport {hp} dnat to {instance.public_ip}:{port}'
                          for port, hp in instance.host_ports.items())
        # Docker on a host maps each opened port (host port → container port); and containers on
        # different hosts share no network: nothing arrives on the private side.
        nft(host, f"table ip simvast {{\n  chain pre {{\n    type nat hook prerouting priority -100;\n{rules}\n  }}\n"
                  f"  chain isolate {{\n    type filter hook input priority -10;\n    iifname \"priv\" drop\n  }}\n}}\n")
        env = {k: str(v) for k, v in (instance.payload.get("env") or {}).items() if not str(k).startswith("-")}
        env.update({
            "PATH": self.path,
            "CONTAINER_ID": str(instance.id),
            "CONTAINER_API_KEY": instance.api_key,
            "VAST_CONTAINERLABEL": f"C.{instance.id}",
            "PUBLIC_IPADDR": instance.public_ip,
            **{f"VAST_TCP_PORT_{port}": str(hp) for port, hp in instance.host_ports.items()},
            **self.machine_env(instance.id),
        })
        self.run_machine(instance.id, host, boot_command(instance.payload), instance.private_ip, env)


def boot_command(payload: Mapping[str, object]) -> str:
    """What the container runs at start: onstart in the SSH and Jupyter launch modes (Vast's
    entrypoint runs it), nothing of ours in the entrypoint mode (the image's command would run)."""
    runtype = str(payload.get("runtype") or "")
    if "ssh" in runtype or "jupyter" in runtype:
        return str(payload.get("onstart") or "")
    return "echo 'simvast: entrypoint launch mode: the image command runs, not onstart'\n"
