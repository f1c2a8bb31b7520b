"""`@sky.function`: lazy calls that run nowhere until they are sent to a pool.

Calling a decorated function runs nothing; it returns a `PendingFunction` (the function plus its
arguments). The operators decide where it runs:

    pending >> pool      one node, the value
    pending @ pool       every node, a list ordered by node index
    pending > pool       start it, a concurrent.futures.Future
    a & b, gather(...)   a group; group >> pool runs them in parallel, results in argument order

The Ray remote function is built once per decorated function and reused, so Ray exports the code
once per cluster, not once per call.
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import sys
import uuid
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from skyward_ray.api import attempts, user_code
from skyward_ray.errors import SpecError

P = ParamSpec("P")
R = TypeVar("R")

_RAY_RESOURCE_NAMES = {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}


class FunctionOptions(BaseModel):
    """Per-function options of `@sky.function(...)`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_retries: int = Field(default=3, ge=-1, description="retries on node loss; -1 = forever. Not on the "
                                                            "function's errors: an exception, sys.exit, a crash")
    timeout: float | None = Field(default=None, gt=0, description="seconds before the call is cancelled")
    resources: dict[str, float] | None = Field(
        default=None, description='per call, e.g. {"CPU": 2, "GPU": 1}; default: 1 CPU and all of a node\'s accelerators'
    )

    @field_validator("resources")
    @classmethod
    def _non_negative(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, amount in (value or {}).items():
            if amount < 0:
                raise ValueError(f"resources[{key!r}]={amount}: resource amounts must be >= 0")
        return value

    def ray_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"max_retries": self.max_retries, "retry_exceptions": False}
        if self.resources is not None:
            custom = {}
            for key, amount in self.resources.items():
                if key in _RAY_RESOURCE_NAMES:
                    options[_RAY_RESOURCE_NAMES[key]] = amount
                else:
                    custom[key] = amount
            if custom:
                options["resources"] = custom
        return options


class RemoteFunction(Generic[P, R]):
    """A function decorated with `@sky.function`. Call it to get a `PendingFunction`."""

    def __init__(self, fn: Callable[P, R], options: FunctionOptions) -> None:
        self.fn = fn
        self.options = options
        self._ray_function: Any = None
        self._channel_key: str | None = None
        self._channel_bytes: bytes | None = None
        self._signature = _signature_of(fn)  # once per function: binding is then a few µs per call
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> "PendingFunction[R]":
        """The call, not run yet. Its arguments are bound to the function's signature now: a wrong
        call fails here, with a `TypeError` naming the function, not later on a remote node."""
        if self._signature is not None:
            try:
                self._signature.bind(*args, **kwargs)
            except TypeError as error:
                raise TypeError(f"{self.fn.__qualname__}{_plain(self._signature)}: {error} "
                                f"(called with {len(args)} positional argument(s) and "
                                f"keywords {sorted(kwargs)})") from None
        return PendingFunction(self, args, kwargs)

    def local(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the undecorated function here, in this process."""
        return self.fn(*args, **kwargs)

    def ray_function(self, shipped: frozenset[str] = frozenset()) -> Any:
        """The Ray remote function, built once (Ray exports it once per cluster). `shipped`: the
        top-level modules the pool's job ships by reference (the others of the user's go by value)."""
        if self._ray_function is None:
            import ray  # here, not at import: decorating and planning never need Ray

            _ship_by_value(self.fn, shipped)
            self._ray_function = ray.remote(**self.options.ray_options())(attempts.guarded(self.fn))
        return self._ray_function

    def channel_function(self, shipped: frozenset[str] = frozenset()) -> tuple[str, Callable[[], bytes]]:
        """This function as the call channel sends it (`channel_client`): a key unique to it, and
        its pickled task function and Ray options (made when first asked, once)."""
        if self._channel_key is None:
            self._channel_key = uuid.uuid4().hex

        def pickled() -> bytes:
            if self._channel_bytes is None:
                from ray import cloudpickle

                _ship_by_value(self.fn, shipped)
                self._channel_bytes = cloudpickle.dumps((attempts.guarded(self.fn), self.options.ray_options()))
            return self._channel_bytes
        return self._channel_key, pickled

    def uses_default_accelerators(self) -> bool:
        resources = self.options.resources
        return resources is None or "GPU" not in resources

    # Cloudpickle may reach this object through the user function's globals; ship only the
    # plain function and options, never the cached Ray handle.
    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteFunction, (self.fn, self.options))

    def _not_called(self, operator: str) -> TypeError:
        return TypeError(
            f"{self.__name__} is a @sky.function but was not called: write {self.__name__}(...) {operator} pool"
        )

    def __rshift__(self, other: object) -> Any:
        raise self._not_called(">>")

    def __matmul__(self, other: object) -> Any:
        raise self._not_called("@")

    def __gt__(self, other: object) -> Any:
        raise self._not_called(">")

    def __repr__(self) -> str:
        return f"<sky.function {self.__module__}.{self.__qualname__}>"


class PendingFunction(Generic[R]):
    """One call, not run yet: a function and its arguments."""

    __slots__ = ("function", "args", "kwargs")

    def __init__(self, function: RemoteFunction[Any, R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.function = function
        self.args = args
        self.kwargs = kwargs

    def __rshift__(self, pool: "Pool") -> R:
        return _pool(pool, ">>").run_one(self)

    def __matmul__(self, pool: "Pool") -> list[R]:
        return _pool(pool, "@").run_on_every_node(self)

    def __gt__(self, pool: "Pool") -> Any:
        return _pool(pool, ">").submit(self)

    def __and__(self, other: "PendingFunction[Any] | PendingGroup") -> "PendingGroup":
        return PendingGroup([self], as_tuple=True) & other

    def __repr__(self) -> str:
        return f"<pending {self.function.__name__}(...)>"


class PendingGroup:
    """Several calls to run in parallel; results come back in argument order."""

    __slots__ = ("items", "as_tuple")

    def __init__(self, items: list[PendingFunction[Any]], as_tuple: bool = False) -> None:
        self.items = items
        self.as_tuple = as_tuple

    def __and__(self, other: "PendingFunction[Any] | PendingGroup") -> "PendingGroup":
        if isinstance(other, PendingGroup):
            return PendingGroup(self.items + other.items, as_tuple=self.as_tuple)
        if isinstance(other, PendingFunction):
            return PendingGroup(self.items + [other], as_tuple=self.as_tuple)
        raise TypeError(not_pending_message(other, "&"))

    def __rshift__(self, pool: "Pool") -> tuple[Any, ...] | list[Any]:
        results = _pool(pool, ">>").run_group(self.items)
        return tuple(results) if self.as_tuple else results

    def __gt__(self, pool: "Pool") -> Any:
        return _pool(pool, ">").submit_group(self.items, as_tuple=self.as_tuple)

    def __matmul__(self, pool: object) -> Any:
        raise TypeError("a group cannot be sent with @ (every node); send each call with `call @ pool`")

    def __len__(self) -> int:
        return len(self.items)


def gather(*pendings: PendingFunction[Any]) -> PendingGroup:
    """Group calls to run in parallel: `sky.gather(*calls) >> pool` returns a list in argument order."""
    for item in pendings:
        if not isinstance(item, PendingFunction):
            raise TypeError(not_pending_message(item, "gather"))
    return PendingGroup(list(pendings), as_tuple=False)


@runtime_checkable
class Pool(Protocol):
    """What the operators need of a pool (`sky.Compute`, `sky.attach`): the ways to send calls.
    This module knows a pool only through it (the pools import this module, not the reverse)."""

    def run_one(self, pending: PendingFunction[Any]) -> Any: ...

    def run_group(self, pendings: list[PendingFunction[Any]]) -> list[Any]: ...

    def run_on_every_node(self, pending: PendingFunction[Any]) -> list[Any]: ...

    def submit(self, pending: PendingFunction[Any]) -> concurrent.futures.Future[Any]: ...

    def submit_group(self, pendings: list[PendingFunction[Any]], as_tuple: bool) -> concurrent.futures.Future[Any]: ...


def _pool(pool: object, operator: str) -> Pool:
    # issubclass on the type, not isinstance: ABCMeta caches it (~0.1 µs; a Protocol isinstance is ~5 µs per `>>`)
    if not issubclass(type(pool), Pool):
        raise TypeError(f"the right side of `{operator}` must be a sky.Compute pool (or a sky.attach one), "
                        f"got {type(pool).__name__}")
    return pool  # type: ignore[return-value]


def not_pending_message(value: object, operator: str) -> str:
    """Why `value` cannot be sent with `operator`, and the fix (a plain value, an undecorated
    function, or a @sky.function not called)."""
    if isinstance(value, RemoteFunction):
        return f"{value.__name__} was not called: pass {value.__name__}(...) to `{operator}`"
    if callable(value):
        name = getattr(value, "__name__", repr(value))
        return f"{name} is not a @sky.function: decorate it with @sky.function and call it, e.g. {name}(...)"
    return f"`{operator}` takes calls of @sky.function functions, got a plain {type(value).__name__}: {value!r:.60}"


def function(fn: Callable[P, R] | None = None, /, *, max_retries: int = 3, timeout: float | None = None,
             resources: dict[str, float] | None = None) -> Any:
    """Decorate a function so that calling it returns a `PendingFunction` to send to a pool.

    Bare (`@sky.function`) or with options (`@sky.function(max_retries=0, timeout=60,
    resources={"GPU": 1})`). `max_retries` covers lost nodes only; an exception raised by your
    code is never retried and reaches you as its own type, and a call that ends its own worker
    (`sys.exit()`, `os._exit()`, a segfault) fails with `sky.FunctionCrashedError` naming the node
    and the worker's log files, not retried either.
    """
    try:
        options = FunctionOptions(max_retries=max_retries, timeout=timeout, resources=resources)
    except ValueError as exc:
        raise SpecError(f"sky.function options: {exc}") from None

    def decorate(target: Callable[P, R]) -> RemoteFunction[P, R]:
        if isinstance(target, RemoteFunction):
            return RemoteFunction(target.fn, options)
        if not callable(target) or inspect.isclass(target):
            raise SpecError(
                f"sky.function decorates a function, got {type(target).__name__} {target!r:.60}; "
                "put @sky.function directly above a `def`"
            )
        return RemoteFunction(target, options)

    if fn is None:
        return decorate
    return decorate(fn)


def _signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    """The signature calls are bound to; None where Python cannot say (some builtins): those
    calls go unchecked, as before."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _plain(signature: inspect.Signature) -> str:
    """`(x, /, factor=2, *, offset=0)`: the parameters a call must fit, without annotations
    (under `from __future__ import annotations` they read as quoted strings)."""
    empty = inspect.Parameter.empty
    parameters = [p.replace(annotation=empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


def _ship_by_value(fn: Callable[..., Any], shipped: frozenset[str]) -> None:
    """Pickle the function's own module by value when it is the user's code that the pool does
    not ship (`shipped`: excluded, or imported after the pool opened; see `user_code`). Shipped
    modules travel by reference: the node imports them from the job's `py_modules`, so classes
    stay the driver's. Modules of installed packages stay references; `__main__` is pickled by
    value already."""
    from ray import cloudpickle

    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    if module is None or module.__name__ in ("__main__", "__mp_main__"):
        return
    top = module.__name__.split(".")[0]
    if top in shipped or top in user_code.OWN_PACKAGES:
        return
    root = sys.modules.get(top)
    if root is not None and user_code.module_sources(root):
        cloudpickle.register_pickle_by_value(module)
