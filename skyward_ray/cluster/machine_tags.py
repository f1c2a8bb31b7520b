"""Identity and tags for clouds that keep no tags (RunPod pods, Vast.ai instances), written once.

Such a cloud keeps a free-text field or two per machine: RunPod a pod's name and environment,
Vast.ai an instance's label. A machine's identity, `skyward<sep><cluster><sep><role><sep><index>`,
goes in its name (`MachineNaming`), and its tags in one encoded text (`TagCodec`), so a provider
made in another process finds the same machines and the same tags: the state lives in the cloud.

The tag text is compact because the field is small: Vast.ai's `label` holds at most 256
characters (https://docs.vast.ai/api-reference/instances/manage-instance, `label`), and a pool's
tags (Ray's own, the node's index, the offer, the owner, the price, a launch token) would not fit
as plain JSON. So the codec leaves out every tag whose value the identity already gives (the
cluster name under its three keys, the role, the index, Ray's node name and type, the launch
token), listing only which were left out, and writes the other known keys as one letter. It is
lossless: `decode(encode(tags)) == tags`. A text over the budget is refused before the machine
is created (`ProvisioningError`), never cut: a cut label would lose the machine.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple, get_args

from ray.autoscaler.tags import (
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_LAUNCH_CONFIG,
    TAG_RAY_LAUNCH_REQUEST,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from skyward_ray import names
from skyward_ray.cluster.contract import Role
from skyward_ray.errors import ProvisioningError

_ROLES: tuple[str, ...] = get_args(Role)


class MachineName(NamedTuple):
    """Who a machine is within skyward: its cluster, role and node index."""

    cluster: str
    role: Role
    index: int


@dataclass(frozen=True)
class MachineNaming:
    """How a tag-less cloud's machine names spell a `MachineName`: `skyward` + `first` + cluster
    + `between` + role + `between` + index (RunPod: `skyward-c-head-0`; Vast.ai: `skyward:c/head/0`)."""

    first: str
    between: str

    @property
    def any_prefix(self) -> str:
        """What every skyward machine's name starts with, whatever its cluster."""
        return names.MACHINE_NAME_PREFIX + self.first

    def cluster_prefix(self, cluster: str) -> str:
        """What the names of one cluster's machines start with."""
        return f"{self.any_prefix}{cluster}{self.between}"

    def name(self, machine: MachineName) -> str:
        return f"{self.cluster_prefix(machine.cluster)}{machine.role}{self.between}{machine.index}"

    def parse(self, text: str) -> MachineName | None:
        """The identity a name spells, or None for a name skyward did not give."""
        between = re.escape(self.between)
        pattern = (re.escape(self.any_prefix) + r"(?P<cluster>[A-Za-z0-9._-]+)" + between
                   + r"(?P<role>" + "|".join(_ROLES) + r")" + between + r"(?P<index>\d+)")
        match = re.fullmatch(pattern, text)
        if match is None:
            return None
        return MachineName(match["cluster"], match["role"], int(match["index"]))  # type: ignore[arg-type]


# Tags whose value the identity gives: left out of the text, listed by their letter under "_".
_DERIVED: dict[str, tuple[str, Callable[[MachineName, Mapping[str, str]], str | None]]] = {
    TAG_RAY_CLUSTER_NAME: ("a", lambda m, t: m.cluster),
    names.CLUSTER: ("b", lambda m, t: m.cluster),
    names.NODE_INDEX: ("c", lambda m, t: str(m.index)),
    TAG_RAY_NODE_KIND: ("d", lambda m, t: m.role),
    TAG_RAY_USER_NODE_TYPE: ("e", lambda m, t: names.HEAD_TYPE if m.role == "head" else names.WORKER_TYPE),
    TAG_RAY_NODE_NAME: ("f", lambda m, t: f"{m.cluster}-{m.role}-{m.index}"),
    names.LAUNCH_TOKEN: ("g", lambda m, t: f"{m.cluster}-{m.index}-{t[TAG_RAY_LAUNCH_REQUEST]}"
                         if TAG_RAY_LAUNCH_REQUEST in t else None),
}
# Other known keys, written as one letter.
_SHORT: dict[str, str] = {
    TAG_RAY_NODE_STATUS: "s", TAG_RAY_LAUNCH_REQUEST: "r", TAG_RAY_LAUNCH_CONFIG: "h", names.OFFER: "o",
    names.OWNER: "w", names.STARTED: "t", names.PRICE: "p", names.NETWORK: "n", names.PROVIDER: "v",
    names.ACCELERATOR: "x", names.INSTANCE_ID: "i",
}
_LETTERS = {**{letter: key for key, (letter, _) in _DERIVED.items()}, **{v: k for k, v in _SHORT.items()}}
_LEFT_OUT = "_"
_ESCAPE = "~"  # an unknown key that could be read as a letter (or starts with ~) gets one more ~


@dataclass(frozen=True)
class TagCodec:
    """Tags ⇄ one compact text. `budget`: the most characters the text may take (None: no limit);
    `ascii_armor`: base64 the text, for fields that cannot carry quotes (RunPod's GraphQL text)."""

    budget: int | None = None
    ascii_armor: bool = False

    def encode(self, machine: MachineName, tags: Mapping[str, str], budget: int | None = None) -> str:
        """The text for these tags; `budget` (else the codec's) is enforced, never cut to."""
        left_out, body = "", {}
        for key, value in sorted(tags.items()):
            derived = _DERIVED.get(key)
            if derived is not None and derived[1](machine, tags) == value:
                left_out += derived[0]
            else:
                body[_SHORT.get(key) or _escape(key)] = str(value)
        if left_out:
            body[_LEFT_OUT] = left_out
        text = json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        if self.ascii_armor:
            text = base64.b64encode(text.encode()).decode()
        limit = budget if budget is not None else self.budget
        if limit is not None and len(text) > limit:
            longest = sorted(tags.items(), key=lambda kv: -len(kv[1]))[:3]
            raise ProvisioningError(
                f"the tags of {machine.cluster} node {machine.index} take {len(text)} characters encoded, over the "
                f"{limit} this cloud's field holds (longest: {', '.join(f'{k}={v!r}' for k, v in longest)}). "
                "Fix: a shorter cluster name or offer label")
        return text

    def decode(self, machine: MachineName, text: str) -> dict[str, str]:
        """The tags a text holds; {} for a text skyward did not write."""
        try:
            raw = base64.b64decode(text, validate=True).decode() if self.ascii_armor else text
            body = json.loads(raw) if raw else {}
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return {}
        if not isinstance(body, dict):
            return {}
        tags: dict[str, str] = {}
        for key, value in body.items():
            if key == _LEFT_OUT:
                continue
            tags[_LETTERS.get(key) or _unescape(key)] = str(value)
        for letter in str(body.get(_LEFT_OUT) or ""):
            key = _LETTERS.get(letter)
            if key in _DERIVED:
                value = _DERIVED[key][1](machine, tags)
                if value is not None:
                    tags[key] = value
        return tags


def _escape(key: str) -> str:
    return _ESCAPE + key if len(key) <= 1 or key.startswith(_ESCAPE) else key


def _unescape(key: str) -> str:
    return key[1:] if key.startswith(_ESCAPE) else key
