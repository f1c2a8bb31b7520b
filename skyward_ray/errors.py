"""Typed errors. Each one says what was asked, what was tried, and what to do about it."""

from __future__ import annotations


class SkywardError(Exception):
    """Base of every error skyward_ray raises on purpose."""


class SpecError(SkywardError, ValueError):
    """Bad user input, found before anything is provisioned. The message names the field and the fix."""


class UnknownAcceleratorError(SpecError):
    """An accelerator name that is not in the catalog; the message lists the closest names."""


class NoOffersError(SkywardError):
    """No offer matches what was asked; the message says, per provider, why not."""


class ProvisioningError(SkywardError):
    """Provisioning failed; the message lists every offer tried and its cause."""


class CapacityError(ProvisioningError):
    """The provider has no capacity for this offer now (blocks that offer/zone; try the next)."""


class AuthError(ProvisioningError):
    """Credentials are missing or refused (blocks the whole provider)."""


class QuotaError(ProvisioningError):
    """An account limit stops the request (blocks the whole provider)."""


class SpotQuotaError(QuotaError):
    """An account limit on spot capacity (e.g. AWS `MaxSpotInstanceCountExceeded`): blocks this
    provider's spot offers only; its on-demand offers are still tried."""


class TeardownError(SkywardError):
    """Teardown could not confirm that every machine ended; `instance_ids` names what may be left."""

    def __init__(self, message: str, instance_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.instance_ids = list(instance_ids or [])


class ProviderUnavailableError(SpecError):
    """A provider whose offers can be listed but whose machines cannot be started (yet); raised
    before anything is provisioned."""


class BootTimeoutError(ProvisioningError):
    """A node did not join the Ray cluster in time; the message names it and shows its log tail."""


class NodeLostError(SkywardError, RuntimeError):
    """A node was lost while a call pinned to it (`@`) ran; the message names the node."""


class PoolLostError(SkywardError, RuntimeError):
    """The pool's head node was lost (a spot reclaim, a host failure): the pool cannot go on. Raised
    in the user's code; every remaining machine of the pool is ended."""


class HostKeyChangedError(PoolLostError):
    """The head's SSH host key changed while the pool ran (its tunnel reconnected to a server that
    is not the head this pool started): a security event, raised at once. The pool's connection is
    cut and every machine of the pool is ended; a handler of `PoolLostError` catches it too."""


class PoolClosedError(SkywardError, RuntimeError):
    """Work was sent to a pool whose `with` block has exited."""


class NotInTaskError(SkywardError, RuntimeError):
    """A task-only helper (`instance_info`, `shard`) was called outside a task."""


class FunctionTimeoutError(SkywardError, TimeoutError):
    """A call ran longer than its `timeout=`; the task was cancelled."""


class FunctionCrashedError(SkywardError, RuntimeError):
    """The worker running a call ended because of the call's own code: it called `sys.exit()` or
    `os._exit()`, crashed (a segfault in a C extension) or was killed (out of memory). That is the
    user's error, like an exception: it is not retried (only calls on a lost node are). The message
    names the node and the worker's log files there."""


class StalePricesWarning(UserWarning):
    """A plan was chosen from snapshot prices older than `planning.plan.STALE_PRICE_DAYS` days (or
    undated): the real price may differ. The plan's notes say the same."""
