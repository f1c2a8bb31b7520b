"""`SimInternet`: the simulated internet's one host on a simulated network, and what machines need
to reach it (its address for their /etc/hosts, its CA for their trust store).

The host answers on the public network for tcp/80 and tcp/443 from anywhere (machines reach it from
their public side, as they reach the real internet); its server (`server.py`) runs inside the host's
namespace with the driver's interpreter, reading the cached tree (`content.py`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.siminternet import NAMES
from tests.siminternet.content import site_tree
from tests.siminternet.tls import TlsFiles, tls_files
from tests.simnet import SimHost, SimNetwork
from tests.simnet.network import SYSTEM_PATH


class SimInternet:
    """The internet's host on `network`; `start` builds (or reuses) the tree and serves it."""

    def __init__(self, network: SimNetwork, packages: Sequence[str]) -> None:
        self.network = network
        self.packages = tuple(packages)
        self.host: SimHost | None = None
        self.tls: TlsFiles | None = None

    def start(self) -> "SimInternet":
        self.tls = tls_files()
        www = site_tree(self.packages)
        self.host = self.network.add_host("inet", private_ip=str(self.network.private_net[250]),
                                          allowed_tcp=[("0.0.0.0/0", 80, 80), ("0.0.0.0/0", 443, 443)])
        log = self.host.directory / "siminternet.log"
        pid = self.host.run([os.path.join(sys.base_prefix, "bin", "python3"), "-I", str(Path(__file__).with_name("server.py")),
                             str(www), str(self.tls.server_cert), str(self.tls.server_key)],
                            env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"}, log_path=log)
        self.host.wait_listening(443, timeout=20, pid=pid, log_path=log)
        return self

    @property
    def ip(self) -> str:
        assert self.host is not None, "start() first"
        return self.host.public_ip

    def hosts_lines(self) -> list[str]:
        """/etc/hosts lines naming this host for every name it serves (the stand-in for DNS)."""
        return [f"{self.ip}\t{name}" for name in NAMES]

    def requests(self) -> list[str]:
        """The request lines served so far (`client host "GET /path HTTP/1.1" status size`)."""
        assert self.host is not None, "start() first"
        log = self.host.directory / "siminternet.log"
        return log.read_text(errors="replace").splitlines()[1:] if log.exists() else []
