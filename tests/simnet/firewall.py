"""Each host's own firewall (nftables in its namespace): the security group of a cloud machine.

On `pub` it admits only the (source CIDR, port range) rules it is given, plus replies to connections
the host opened (security groups are stateful); `lo` and `priv` are open (the VPC's self rule); a
host never forwards. The default rule set is what a cloud cluster opens: tcp/22 from the driver.
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.simnet.system import IP, run_command

Rule = tuple[str, int, int]
"""(source CIDR, first port, last port): one tcp rule of the public side."""


def driver_ssh_only(driver_ip: str) -> list[Rule]:
    """The default public rules: tcp/22 from the driver's address only."""
    return [(f"{driver_ip}/32", 22, 22)]


def host_ruleset(public_ip: str, allowed_tcp: Sequence[Rule]) -> str:
    """The nftables ruleset of a host whose public address is `public_ip`."""
    rules = "\n".join(
        f'    iifname "pub" ip saddr {cidr} ip daddr {public_ip} tcp dport {first}-{last} accept'
        for cidr, first, last in allowed_tcp)
    return f"""\
table inet simnet {{
  chain input {{
    type filter hook input priority 0; policy drop;
    iifname "lo" accept
    iifname "priv" accept
{rules}
    iifname "pub" ct state established,related accept
  }}
  chain forward {{
    type filter hook forward priority 0; policy drop;
  }}
}}
"""


def load_ruleset(namespace: str, ruleset: str) -> None:
    """Load `ruleset` with nft inside the network namespace `namespace`."""
    run_command([IP, "netns", "exec", namespace, "nft", "-f", "-"], input=ruleset)
