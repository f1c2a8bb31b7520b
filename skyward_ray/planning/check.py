"""`sky.check()` / `skyward-ray check`: can a pool launch on each provider, before one is asked for?

The first contact with a cloud is where keys, regions, quotas, permissions and balances turn out
wrong, and a failed launch says so only after minutes (and sometimes dollars). A check answers in
seconds and costs nothing: per provider, one row of findings, each with what to do when it fails.
It provisions nothing: every cloud call it makes is a read, or an EC2 `DryRun`.

What is generic lives here: running the providers' probes in parallel (threads: every probe waits
on the network), the extra each provider needs (`ProviderConfig.require_extra`), turning a probe's
unexpected exception into a failed finding, and the report (a table, or JSON). What is asked of a
cloud lives in its own package: a config names its probe module (`ProviderConfig.check_module`,
`node_providers/<name>/check.py`) whose `probe(config)` returns its `Finding`s, so nothing here
knows a provider.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from skyward_ray.errors import AuthError, ProviderUnavailableError, SkywardError
from skyward_ray.planning.providers import PROVIDERS, ProviderConfig, provider_from_name

Status = Literal["ok", "warn", "fail"]
#: the default seconds one provider's probe may take before its row says it did not answer
PROBE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Finding:
    """One thing checked: `fail` means a pool cannot launch until `fix` is done; `warn` means it
    can, with a limit worth knowing (a zero quota for one family, no region configured)."""

    what: str
    status: Status
    detail: str
    fix: str = ""

    @classmethod
    def ok(cls, what: str, detail: str) -> "Finding":
        return cls(what, "ok", detail)

    @classmethod
    def warn(cls, what: str, detail: str, fix: str = "") -> "Finding":
        return cls(what, "warn", detail, fix)

    @classmethod
    def fail(cls, what: str, detail: str, fix: str = "") -> "Finding":
        return cls(what, "fail", detail, fix)


@dataclass(frozen=True)
class ProviderReport:
    """One provider's findings, in the order its probe made them."""

    provider: str
    findings: tuple[Finding, ...]
    seconds: float = 0.0

    @property
    def can_launch(self) -> bool:
        """No finding failed."""
        return all(finding.status != "fail" for finding in self.findings)

    def as_dict(self) -> dict[str, object]:
        return {"provider": self.provider, "can_launch": self.can_launch, "seconds": round(self.seconds, 2),
                "findings": [asdict(finding) for finding in self.findings]}


@dataclass(frozen=True)
class CheckReport:
    """Every checked provider's report, in the order asked. `requested`: the providers were named
    (then each must be able to launch), else every known one was checked (then one is enough)."""

    providers: tuple[ProviderReport, ...]
    requested: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """What the exit code says: every requested provider can launch (or, none named, at least one)."""
        verdicts = [report.can_launch for report in self.providers]
        return all(verdicts) if self.requested else any(verdicts)

    def __getitem__(self, provider: str) -> ProviderReport:
        for report in self.providers:
            if report.provider == provider:
                return report
        raise KeyError(provider)

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "providers": [report.as_dict() for report in self.providers]}

    def lines(self) -> list[str]:
        """The report as plain text: one header per provider, one line per finding, a fix under a failure."""
        marks = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
        out: list[str] = []
        for report in self.providers:
            verdict = "can launch" if report.can_launch else "cannot launch"
            out.append(f"{report.provider}: {verdict} ({report.seconds:.1f}s)")
            for finding in report.findings:
                out.append(f"  [{marks[finding.status]}] {finding.what}: {finding.detail}")
                if finding.fix and finding.status != "ok":
                    out.append(f"         fix: {finding.fix}")
        out.extend(f"note: {note}" for note in self.notes)
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def api_key_account(source: str | None, read: Callable[[], dict[str, Any]], cloud: str,
                    fix: str) -> tuple[list[Finding], dict[str, Any] | None]:
    """An API-key cloud's first findings: where the key came from (`source`, None: no key) and one
    cheap authenticated read of the account (`read`). Returns them and the account, or None when
    the rest cannot be checked (no key, a refused key: `fix` says what to do)."""
    if source is None:
        return [Finding.fail("credentials", "no API key", fix)], None
    findings = [Finding.ok("credentials", f"API key from {source}")]
    try:
        account = read()
    except AuthError:
        return [*findings, Finding.fail("valid", f"{cloud} refused the API key", fix)], None
    except SkywardError as error:
        return [*findings, Finding.fail("valid", str(error))], None
    findings.append(Finding.ok("valid", f"account {account.get('id') or '?'}"))
    return findings, account


def probe_function(config: ProviderConfig) -> Callable[[ProviderConfig], list[Finding]] | None:
    """The provider's `probe(config) -> list[Finding]`, from the module its config names, else the
    `check` module beside the config's own; None when neither exists."""
    cls = type(config)
    module = cls.check_module or f"{cls.__module__.rpartition('.')[0]}.check"
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return importlib.import_module(module).probe if found else None


def check_provider(config: ProviderConfig) -> ProviderReport:
    """One provider's report: its extra, then its own probe. A probe that raises is one failed
    finding naming the error (a check never raises because a cloud answered strangely)."""
    started = time.monotonic()
    findings: list[Finding] = []
    try:
        config.require_extra()
    except ProviderUnavailableError as error:
        findings.append(Finding.fail("extra", "the cloud's SDK is not installed", str(error).split("Fix: ")[-1]))
        return ProviderReport(config.name, tuple(findings), time.monotonic() - started)
    if config.extra:
        findings.append(Finding.ok("extra", f"skyward-ray[{config.extra}] is installed"))
    probe = probe_function(config)
    if probe is None:
        findings.append(Finding.warn("probe", f"no check is written for {config.name} yet"))
    else:
        try:
            findings.extend(probe(config))
        except SkywardError as error:
            findings.append(Finding.fail("probe", str(error)))
        except Exception as error:  # a check reports; it does not crash on one cloud's surprise
            findings.append(Finding.fail("probe", f"{type(error).__name__}: {error}"))
    return ProviderReport(config.name, tuple(findings), time.monotonic() - started)


def _configs(providers: Iterable[str | ProviderConfig] | str | None) -> tuple[list[ProviderConfig], bool]:
    if providers is None:
        return [provider_from_name(name) for name in PROVIDERS], False
    if isinstance(providers, (str, ProviderConfig)):
        providers = [providers]
    configs: list[ProviderConfig] = []
    for item in providers:
        if isinstance(item, ProviderConfig):
            configs.append(item)
        else:
            configs.extend(provider_from_name(name) for name in str(item).split(",") if name.strip())
    return configs, True


def check(providers: Sequence[str | ProviderConfig] | str | ProviderConfig | None = None,
          timeout: float = PROBE_TIMEOUT_S) -> CheckReport:
    """Whether a pool could launch on each provider (`"aws,runpod"`, names, or configs such as
    `sky.AWS(region="eu-west-1")`; default: every known provider), checked in parallel. Costs nothing
    and creates nothing. `report.ok` is False when a named provider cannot launch; `print(report)`
    says why and what to do; `report.as_dict()` is the JSON of `skyward-ray check --json`."""
    configs, requested = _configs(providers)
    with warnings.catch_warnings():  # an offer listing's fallback notes: the findings say what matters
        warnings.simplefilter("ignore")
        return CheckReport(tuple(_run(configs, timeout)), requested)


def _run(configs: list[ProviderConfig], timeout: float) -> list[ProviderReport]:
    reports: list[ProviderReport] = []
    pool = ThreadPoolExecutor(max_workers=max(1, len(configs)), thread_name_prefix="sky-check")
    futures = [pool.submit(check_provider, config) for config in configs]
    deadline = time.monotonic() + timeout
    for config, future in zip(configs, futures):
        try:
            reports.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
        except TimeoutError:
            reports.append(ProviderReport(config.name, (Finding.fail(
                "probe", f"no answer within {timeout:.0f}s",
                "check the network to the cloud's API, then run `skyward-ray check` again"),), timeout))
    pool.shutdown(wait=False)  # a probe past the deadline is not waited for (its thread ends with its call)
    return reports
