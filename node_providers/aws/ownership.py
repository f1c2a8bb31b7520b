"""Prove that the key pair and security group a cluster just made are exactly its own.

Why: anyone with EC2 rights in a shared account can pre-create, or race to replace, a resource
with a name a pool will use. A key pair of theirs under our name would give them SSH to the head;
a group of theirs (or ours with a rule of theirs added) may be open to the world. So a cluster's
resources get fresh random names (`network.resource_name`), an existing name is an error, and
after creating them we read them back: the key pair's fingerprint must be our public key's, and
the group's ingress rules must be exactly the ones we authorized, nothing more.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from skyward_ray.errors import ProvisioningError

# DER SubjectPublicKeyInfo header of an Ed25519 key (RFC 8410): the 32 raw key bytes follow it.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class ResourceConflictError(ProvisioningError):
    """A cluster's key pair or security group name was taken, or what AWS holds under it is not
    exactly what this driver made: never reused, the attempt fails (and removes what it made)."""


def _blob(public_key_line: str) -> tuple[str, bytes]:
    """(key type, the key's SSH wire-format blob) of an OpenSSH public key line."""
    parts = public_key_line.split()
    if len(parts) < 2:
        raise ProvisioningError(f"not an OpenSSH public key line: {public_key_line[:40]!r}")
    return parts[0], base64.b64decode(parts[1])


def _normalized(fingerprint: str) -> str:
    """One spelling per digest: no `SHA256:` prefix or base64 padding; hex (colon-separated) in lower case."""
    text = fingerprint.strip().removeprefix("SHA256:").rstrip("=")
    return text.lower() if ":" in text else text


def key_fingerprints(public_key_line: str) -> set[str]:
    """The fingerprints EC2 may report for this imported ed25519 key, normalized.

    AWS documents SHA-256 of the key, base64 (as OpenSSH prints it); moto, the simulator the tests
    run against, writes the hex SHA-256 of its DER form. Both are digests of this key alone, so
    accepting either admits no other key."""
    kind, blob = _blob(public_key_line)
    if kind != "ssh-ed25519":
        raise ProvisioningError(f"AWS: skyward imports ed25519 keys only; got {kind}")
    raw = blob[-32:]  # the wire blob is: length-prefixed "ssh-ed25519", then length-prefixed 32 key bytes
    openssh = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    der = hashlib.sha256(_ED25519_SPKI_PREFIX + raw).hexdigest()
    return {_normalized(openssh), _normalized(":".join(der[i:i + 2] for i in range(0, len(der), 2)))}


def check_key_pair(ec2: Any, key_name: str, public_key_line: str) -> None:
    """The key pair named `key_name` is the one made from `public_key_line`, or `ResourceConflictError`."""
    pairs = ec2.describe_key_pairs(KeyNames=[key_name]).get("KeyPairs", [])
    reported = {_normalized(p.get("KeyFingerprint", "")) for p in pairs}
    if len(pairs) != 1 or not reported <= key_fingerprints(public_key_line):
        raise ResourceConflictError(
            f"AWS: key pair {key_name} does not hold this pool's public key (fingerprint {sorted(reported)}): "
            "someone replaced it after it was imported. Nothing was launched with it; check who can "
            "manage key pairs in this account")


def _rule_set(permissions: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """Ingress rules as comparable facts: (protocol, first port, last port, source kind, source)."""
    facts: set[tuple[Any, ...]] = set()
    for rule in permissions:
        protocol = str(rule.get("IpProtocol"))
        ports = (None, None) if protocol == "-1" else (rule.get("FromPort"), rule.get("ToPort"))
        sources = [("cidr", r.get("CidrIp")) for r in rule.get("IpRanges", [])]
        sources += [("cidr6", r.get("CidrIpv6")) for r in rule.get("Ipv6Ranges", [])]
        sources += [("group", p.get("GroupId")) for p in rule.get("UserIdGroupPairs", [])]
        sources += [("prefix-list", p.get("PrefixListId")) for p in rule.get("PrefixListIds", [])]
        facts.update((protocol, *ports, *source) for source in sources)
        if not sources:
            facts.add((protocol, *ports, "none", None))
    return facts


def check_group_rules(ec2: Any, group_id: str, authorized: list[dict[str, Any]]) -> None:
    """The group's ingress rules are exactly `authorized`, or `ResourceConflictError` naming the extras."""
    [group] = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    found, wanted = _rule_set(group.get("IpPermissions", [])), _rule_set(authorized)
    if found != wanted:
        raise ResourceConflictError(
            f"AWS: security group {group_id} does not hold exactly this pool's rules: extra {sorted(found - wanted, key=str)}, "
            f"missing {sorted(wanted - found, key=str)}. Someone changed it as it was made; nothing was launched in it")


__all__ = ["ResourceConflictError", "check_group_rules", "check_key_pair", "key_fingerprints"]
