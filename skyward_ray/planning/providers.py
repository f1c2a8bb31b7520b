"""Provider configs: the typed, user-facing half of a provider, and the registry that finds them.

A provider config (`sky.AWS(...)`, `sky.Local()`, ...) says which cloud and how to use it, and
knows where that cloud sells things (`list_offers`). It never imports Ray, so `sky.plan(...)` and
`skyward-ray offers` stay pure data work. The machine half, a `skyward_ray.cluster.contract.Cloud`
behind a generic Ray node provider, is named by `node_provider` and imported only when a pool is
launched.

Each config class lives in its cloud's package (`node_providers/<name>/config.py`); `PROVIDERS`
below is the one list of where they are, so nothing in `skyward_ray/` branches on a name.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ConfigDict, Field, field_validator
from pydantic.fields import FieldInfo

from skyward_ray import names
from skyward_ray._validation import SpecModel
from skyward_ray.errors import ProviderUnavailableError, SpecError

if TYPE_CHECKING:
    from skyward_ray.planning.accelerators import Accelerator
    from skyward_ray.planning.offers import Offer

# provider name → "module:ConfigClass"
PROVIDERS: dict[str, str] = {
    "local": "node_providers.local.config:Local",
    "container": "node_providers.container.config:Container",
    "aws": "node_providers.aws.config:AWS",
    "runpod": "node_providers.runpod.config:RunPod",
    "vastai": "node_providers.vastai.config:VastAI",
}


class ProviderConfig(SpecModel):
    """Base of every provider config. `name` is the value `Offer.provider` carries.

    Fields here are the ones every provider honours; a subclass adds its cloud's own. No field is
    a free-form dict: a typo is an error that names the field, before anything is provisioned.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ClassVar[str]
    #: "module:Class" of this provider's Ray node provider, or None while provisioning is not built
    node_provider: ClassVar[str | None] = None
    #: True when nodes run on the driver's own machine and interpreter (Image.pip goes to Ray's
    #: runtime_env there; apt and another Python cannot be honoured)
    nodes_share_driver_python: ClassVar[bool] = False
    #: True when this process can be a plain Ray driver of the cluster (it shares the head's
    #: machine and network: the local provider); otherwise the driver uses Ray Client through an
    #: SSH tunnel to the head
    direct_driver: ClassVar[bool] = False
    #: the package extra that installs this cloud's SDK (`pip install 'skyward-ray[<extra>]'`)
    extra: ClassVar[str | None] = None
    #: top-level modules the node provider imports; a pool is refused, naming `extra`, without them
    required_modules: ClassVar[tuple[str, ...]] = ()
    #: the module whose `probe(config)` checks this cloud for `sky.check()` / `skyward-ray check`
    #: (credentials, quotas, balance: `skyward_ray.planning.check`); None: the `check` module beside
    #: the config's own (`node_providers/<name>/check.py`), when there is one
    check_module: ClassVar[str | None] = None

    boot_timeout: float = Field(default=600.0, gt=0, description="seconds to wait for every node to join")
    heartbeat_grace: float = Field(
        default=30.0, gt=0, description="seconds without a driver heartbeat before the nodes stop themselves"
    )
    key_dir: str | None = Field(
        default=None, description="where a cluster's SSH keys are kept while it lives (default ~/.skyward_ray/keys)")
    simulate_accelerators: bool = Field(
        default=False,
        description="every node advertises the offer's accelerators to Ray with no hardware behind them "
                    "(exercise placement on a laptop or in CI)",
    )

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: object) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # error messages name every field and what it takes, from the field descriptions
        cls._spec_hints = {name: info.description or "see the class docstring"
                           for name, info in cls.model_fields.items()}

    def without_secrets(self) -> dict[str, object]:
        """The config's fields minus its secrets (fields declared `repr=False`, such as `api_key`):
        what may be written to a state file. A secret comes back from the environment when read."""
        secret = {name for name, info in type(self).model_fields.items() if not info.repr}
        return self.model_dump(mode="json", exclude=secret)

    def list_offers(self, accelerator: "Accelerator | None" = None) -> "list[Offer]":
        """Every offer this provider has that could serve `accelerator` (a hint; may be broader)."""
        raise NotImplementedError

    def for_region(self, region: str | None) -> "ProviderConfig":
        """This config for a plan that asks for `region` (the spec's filter): a cloud that lists offers
        only in a configured region looks in the asked one instead. Default: unchanged."""
        return self

    def offer_notes(self) -> list[str]:
        """What the plan should say about where this config looked for offers (e.g. no region set)."""
        return []

    def require_provisioning(self) -> str:
        """The node provider's "module:Class", or a typed refusal saying provisioning is not built
        or this cloud's SDK is not installed (before anything is planned, printed or started)."""
        self.require_extra()
        if self.node_provider is None:
            raise ProviderUnavailableError(
                f"provider={self.name!r}: skyward_ray can list and compare {self.name} offers (sky.plan, "
                f"`skyward-ray offers`) but cannot start {self.name} machines yet. Fix: choose another provider, "
                f"e.g. provider='aws' or provider='local', or drop {self.name!r} from provider="
            )
        return self.node_provider

    def require_extra(self) -> None:
        """`ProviderUnavailableError` naming the pip command when a module this cloud's machines
        need is missing: a bare `ModuleNotFoundError` mid-launch names neither the cloud nor the fix."""
        missing = [module for module in self.required_modules if not _importable(module)]
        if missing:
            command = f"pip install 'skyward-ray[{self.extra}]'" if self.extra else f"pip install {' '.join(missing)}"
            raise ProviderUnavailableError(
                f"provider={self.name!r} needs {', '.join(missing)}, which is not installed. Fix: {command}")


def _importable(module: str) -> bool:
    """Whether `import module` can work, without importing it. A `None` in `sys.modules` (an
    import blocked on purpose) makes `find_spec` raise ValueError: that is "not importable"."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


_LOGIN_USER = re.compile(names.LOGIN_USER)


class RemoteMachineConfig(ProviderConfig):
    """A cloud whose nodes are machines of their own (AWS, RunPod, Vast.ai), driven through SSH:
    the login user, how long a live offer listing is reused, and what each node tells Ray it has
    when the detected amounts are not what the user wants scheduled.

    A cloud changes a shared field's default with a class attribute (`defaults`), never by
    declaring the field again."""

    #: this cloud's defaults for the shared fields (its image's login user, its market's pace)
    defaults: ClassVar[dict[str, object]] = {}

    ssh_user: str = Field(default="root", description="the login user on the nodes (default: the cloud's image's)")
    live_offers_ttl: float = Field(default=120.0, ge=0, description="seconds a live offer listing is reused")
    num_cpus: float | None = Field(default=None, gt=0, description="CPUs each node advertises to Ray (default: detected)")
    num_gpus: float | None = Field(default=None, ge=0, description="GPUs each node advertises to Ray (default: detected)")
    memory: int | None = Field(default=None, gt=0, description="bytes of memory each node advertises to Ray")
    object_store_memory: int | None = Field(default=None, ge=75 * 1024**2, description="bytes of object store per node")
    resources: dict[str, float] = Field(
        default_factory=dict, description="extra custom Ray resources per node, e.g. {'accelerator_type:T4': 1}")

    @field_validator("ssh_user")
    @classmethod
    def _login_user(cls, value: str) -> str:
        # It reaches the head's sshd_config and the driver's `ssh` command line: a plain name only.
        if not _LOGIN_USER.fullmatch(value):
            raise SpecError(f"{cls.__name__}.ssh_user={value!r} is not a plain POSIX user name. Fix: letters, "
                            "digits, '_', '.', '-' (not first), at most 32, e.g. 'root' or 'ubuntu'")
        return value

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """A cloud's `defaults` become its fields' real defaults (in its schema, its `help`, and
        `model_dump(exclude_defaults=True)`, which must round-trip a value the user set that is
        another cloud's default: AWS with `ssh_user="root"`)."""
        super().__pydantic_init_subclass__(**kwargs)
        fields = cls.__pydantic_fields__
        changed = {name: value for name, value in cls.defaults.items() if fields[name].default != value}
        for name, value in changed.items():
            fields[name] = FieldInfo.merge_field_infos(fields[name], default=value)
        if changed:
            cls.model_rebuild(force=True)

    def node_resources(self) -> dict[str, object]:
        """These settings as `BootEnvironment` fields."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "memory": self.memory,
                "object_store_memory": self.object_store_memory, "resources": dict(self.resources)}


def provider_class(name: str) -> type[ProviderConfig]:
    """'aws' → the AWS config class; an unknown name → SpecError listing the known ones."""
    path = PROVIDERS.get(name.strip().lower())
    if path is None:
        raise SpecError(f"Unknown provider {name!r}. Known providers: {', '.join(sorted(PROVIDERS))}.")
    module, _, attribute = path.partition(":")
    cls = getattr(importlib.import_module(module), attribute)
    assert issubclass(cls, ProviderConfig), path
    return cls


def provider_classes() -> dict[str, type[ProviderConfig]]:
    """Every known provider config class by name."""
    return {name: provider_class(name) for name in PROVIDERS}


def provider_from_name(name: str) -> ProviderConfig:
    """'aws' → AWS() with its defaults."""
    return provider_class(name)()
