"""`RemoteCloud`: what every cloud of rented machines driven through SSH (AWS, RunPod, Vast.ai) shares.

A remote cloud differs from the others only in its API. What is the same is written here once:

- the boot environment, from three class-level shell snippets (how a machine learns its own id and
  private address, and how it ends itself) plus the config's node resources;
- the listing reuse (`describe_ttl`): launchers poll, and every cloud's API has rate limits;
- "an unknown id is not an error" when ending machines: each cloud's API wrapper raises the typed
  `NotFoundError` for an id it does not know, and `terminate` handles it here, once (a batch call
  that fails for one unknown id is retried id by id);
- the boot log's tail for error messages, trimmed here once: a cloud only reads its log
  (`read_log`), or keeps its `no_log` sentence where its API has none.

A new cloud shaped like RunPod writes its API wrapper, `launch`, `describe`, `end_machine`,
`set_tags` and `ssh_endpoint`, and names its snippets; see docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import ClassVar

from skyward_ray.cluster import ssh_keys
from skyward_ray.cluster.contract import BootEnvironment, Cloud, NotFoundError, Role
from skyward_ray.errors import ProvisioningError
from skyward_ray.node.sshd import OWN_HOST_KEY
from skyward_ray.planning.providers import RemoteMachineConfig

# How much of a head's log is read for the host key it printed: the second print, before Ray
# starts, is within the last few hundred lines; the first within the first few.
HOST_KEY_LOG_LINES = 5000


class RemoteCloud(Cloud):
    """A `Cloud` of rented machines, each booting itself, ended by the cloud's API or by itself."""

    config: RemoteMachineConfig
    describe_ttl: ClassVar[float] = 1.0  # launchers poll; spare the API's rate limits

    #: shell expression giving the machine's own instance id
    instance_id_shell: ClassVar[str]
    #: shell expression giving the machine's private address (the one other nodes reach)
    node_ip_shell: ClassVar[str]
    #: the command that ends this machine (and its billing) when Ray exits
    shutdown_command: ClassVar[str]
    #: shell expression giving the machine's place in a batch started by one call: a cloud that
    #: implements `launch_many` names it; None: the cloud's API starts one machine per call
    launch_index_shell: ClassVar[str | None] = None
    #: what this cloud's boot log is called in messages ("console output", "log")
    log_name: ClassVar[str] = "log"
    #: said instead of a log where the cloud's API gives none
    no_log: ClassVar[str] = "(this provider keeps no node log)"
    #: the head's host key: its own sshd's (`skyward_ray.node.sshd`, a container cloud's head), made and
    #: printed at boot; a cloud whose boot runner makes the machine's keys names that one
    head_host_key_file: ClassVar[str | None] = OWN_HOST_KEY

    # -- machines -------------------------------------------------------------------------------
    def shutdown_shell(self) -> str:
        """The shutdown command for this config (a cloud whose command names its API's address
        builds it from the config)."""
        return self.shutdown_command

    def boot_environment(self, role: Role, index: int) -> BootEnvironment:
        return BootEnvironment(instance_id_shell=self.instance_id_shell, node_ip_shell=self.node_ip_shell,
                               shutdown_command=self.shutdown_shell(), secrets_after_boot=True,
                               launch_index_shell=self.launch_index_shell,
                               **self.config.node_resources())

    def terminate(self, instance_ids: list[str]) -> None:
        """End these machines (never stop them: a stopped machine keeps billing its disk). An id the
        cloud does not know is already gone: a call refused for one is retried for each id alone."""
        ids = sorted(set(instance_ids), key=str)
        if not ids:
            return
        try:
            self.end_machines(ids)
        except NotFoundError:
            for instance_id in ids:
                with contextlib.suppress(NotFoundError):
                    self.end_machines([instance_id])

    def end_machines(self, instance_ids: list[str]) -> None:
        """End these machines in as few calls as the API allows; raises `NotFoundError` if the cloud
        refuses the call for an unknown id. By default one `end_machine` call each."""
        for instance_id in instance_ids:
            self.end_machine(instance_id)

    def end_machine(self, instance_id: str) -> None:
        """End one machine; `NotFoundError` where the cloud does not know the id."""
        raise NotImplementedError(f"{type(self).__name__} ends machines with end_machines()")

    # -- boot log -------------------------------------------------------------------------------
    def read_log(self, instance_id: str, lines: int) -> str | None:
        """The machine's boot log as the cloud gives it (at least its last `lines` lines); None
        where the cloud's API has no log."""
        return None

    def printed_host_key(self, instance_id: str) -> str | None:
        """The ed25519 host key the head printed on its log (`Cloud.head_host_key_file`), as the cloud
        shows it: None until it is there. Two different keys there: refused, nothing pinned."""
        keys = ssh_keys.printed_host_keys(self.read_log(instance_id, HOST_KEY_LOG_LINES) or "")
        if len(keys) > 1:
            raise ProvisioningError(
                f"{type(self.config).__name__}: the {self.log_name} of {instance_id} shows {len(keys)} different SSH host "
                "keys; something else printed one there, so none is trusted. The pool is ended")
        return next(iter(keys), None)

    def log_tail(self, instance_id: str, lines: int = 30) -> str:
        """The last lines of the boot log, for error messages: a courtesy, so it never raises."""
        try:
            text = self.read_log(instance_id, lines)
        except Exception as error:
            return f"(no {self.log_name}: {error})"
        if text is None:
            return self.no_log
        return "\n".join(text.splitlines()[-lines:]) or f"(the {self.log_name} is empty so far)"


class LaterTags:
    """Tags set on a machine after its launch, for a cloud that cannot change them on a running
    machine (RunPod's env and name, Docker's labels): kept in this process and laid over what the
    cloud lists. Only `ray up`'s node updaters set tags after a launch; skyward's own paths never do."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changes: dict[str, dict[str, str]] = {}

    def set(self, instance_id: str, tags: Mapping[str, str]) -> None:
        with self._lock:
            self._changes.setdefault(instance_id, {}).update(tags)

    def over(self, instance_id: str, listed: Mapping[str, str]) -> dict[str, str]:
        """The cloud's tags of this machine with the later ones laid over them."""
        with self._lock:
            return {**listed, **self._changes.get(instance_id, {})}


@contextlib.contextmanager
def typed_errors(translate: Callable[[BaseException], BaseException | None]) -> Iterator[None]:
    """Raise what `translate` makes of an exception (a typed error of `skyward_ray.errors`), or the
    exception itself where it returns None: every cloud's API wrapper is this plus its table."""
    try:
        yield
    except Exception as error:
        typed = translate(error)
        if typed is None:
            raise
        raise typed from None
