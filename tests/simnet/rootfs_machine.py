"""A simulated machine with a root filesystem of its own: its cloud's image, not the driver's disk.

`RootfsMachine.wrapper` is the argv prefix that turns a script started by
`node_providers.local.process_host.ProcessHost.boot` (`[*wrapper, "bash", <script>]`) into a
machine's first process:

- inside the host's network namespace (`ip netns exec`), in new mount, PID and UTS namespaces
  (`unshare --mount --pid --uts --fork`; `--kill-child`: when the machine is ended, the kernel
  ends every process in its PID namespace, daemons that left the process group included);
- with an overlay mount as its root: lower, the unpacked cloud image (`tests.images.cloud_images`,
  shared read-only by every machine); upper and work, the machine's own directory; then
  `pivot_root` into it and the old root unmounted, so the driver's files, interpreter, uv and
  caches are not reachable at all;
- its own /proc (its PID namespace's), /sys (read-only), /dev (a tmpfs with null, zero, full,
  random, urandom, tty, pts of its own instance, shm), /run (tmpfs); /tmp is the overlay's;
- its hostname, and an /etc/hosts the runtime writes, as a container runtime does: localhost, the
  machine's own name and the simulated internet's names (`tests.siminternet`, the stand-in for
  DNS), plus /etc/resolv.conf naming no server (no DNS is reachable);
- exactly the environment given (`env -i`): the image's ENV lines and what the cloud's runner sets;
- `files`: what the cloud puts in the machine beside the image (its shims, e.g. a `shutdown` that
  tells the simulated hypervisor); `written` finds what the machine writes, from the driver's side.

The mounts live only in the machine's mount namespace: they go when its last process ends.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.simnet.system import IP

SCRIPT_IN_MACHINE = "/var/lib/simhost/boot.sh"  # where the runner's script is copied inside the machine
_DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))


@dataclass(frozen=True)
class RootfsMachine:
    """One machine's root: `image` (lower layer) and `directory` (upper, work and mount point)."""

    image: Path
    directory: Path
    hostname: str
    hosts_lines: Sequence[str]
    env: Mapping[str, str]
    cwd: str = "/root"
    files: Mapping[str, str] = field(default_factory=dict)  # path in the machine → an executable's text

    def written(self, path: str) -> Path:
        """Where a file the machine writes at `path` lies on the driver's side (its upper layer)."""
        return self.directory / "upper" / path.lstrip("/")

    def wrapper(self, namespace: str) -> list[str]:
        """The argv prefix starting a script inside this machine, in network namespace `namespace`."""
        setup = self.directory / "setup.sh"
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in ("upper", "work", "root"):
            (self.directory / name).mkdir(exist_ok=True)
        etc = self.directory / "upper" / "etc"
        etc.mkdir(exist_ok=True)
        (etc / "hostname").write_text(self.hostname + "\n")
        (etc / "hosts").write_text("\n".join(["127.0.0.1\tlocalhost", f"127.0.1.1\t{self.hostname}",
                                              *self.hosts_lines]) + "\n")
        (etc / "resolv.conf").write_text("# no DNS server is reachable: names resolve through /etc/hosts\n")
        for path, text in self.files.items():
            target = self.written(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            target.chmod(0o755)
        setup.write_text(self._setup_script())
        return [IP, "netns", "exec", namespace, "unshare", "--mount", "--pid", "--uts", "--fork",
                "--kill-child=SIGKILL", "/bin/sh", str(setup)]

    def _setup_script(self) -> str:
        """Runs as PID 1 of the new namespaces with the driver's /bin/sh; `$2` is the script to run."""
        q = shlex.quote
        root = q(str(self.directory / "root"))
        upper, work = q(str(self.directory / "upper")), q(str(self.directory / "work"))
        devices = [f"mknod -m 666 $R/dev/{name} c {major} {minor}" for name, major, minor in _DEVICES]
        env = " ".join(q(f"{k}={v}") for k, v in self.env.items())
        return "\n".join([
            "#!/bin/sh",
            "# a simulated machine's runtime (tests.simnet.rootfs_machine): its root, then its first process",
            "set -e",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            f"R={root}",
            "mount --make-rprivate /",
            f"mount -t overlay overlay -o lowerdir={q(str(self.image))},upperdir={upper},workdir={work} $R",
            "mount -t proc proc $R/proc",
            "mount -t sysfs -o ro sysfs $R/sys",
            "mount -t tmpfs -o mode=755,size=65536k tmpfs $R/dev",
            *devices,
            "mkdir $R/dev/pts $R/dev/shm",
            "mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts $R/dev/pts",
            "mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm",
            "ln -s pts/ptmx $R/dev/ptmx; ln -s /proc/self/fd $R/dev/fd",
            "ln -s /proc/self/fd/0 $R/dev/stdin; ln -s /proc/self/fd/1 $R/dev/stdout; ln -s /proc/self/fd/2 $R/dev/stderr",
            "mount -t tmpfs -o mode=755 tmpfs $R/run",
            f"mkdir -p $R{q(str(Path(SCRIPT_IN_MACHINE).parent))} $R/tmp $R/root",
            "chmod 1777 $R/tmp",
            f'cp "$2" $R{q(SCRIPT_IN_MACHINE)}',
            f"hostname {q(self.hostname)}",
            "cd $R && mkdir -p .oldroot && pivot_root . .oldroot",
            "cd / && umount -l /.oldroot && rmdir /.oldroot",
            f"cd {q(self.cwd)}",
            f'exec /usr/bin/env -i {env} "$1" {q(SCRIPT_IN_MACHINE)}',
            "",
        ])
