"""The first-contact log: every cloud API call and every node's boot, in the pool's log file.

Why: the first pool on a real account is where things fail for reasons no test saw (a policy that
denies one call, a quota, an image that boots differently). With `SKYWARD_DEBUG=1` (or
`skyward-ray --verbose`, which sets the `skyward_ray` logger to DEBUG) a pool writes one private
file (0600, in the runtime root's `logs/`) holding:

- every cloud API call: provider, operation, duration, outcome (`ok`, or the error's code and
  message), one line each. Each provider module calls `record_call` / `timed_call` from its own
  transport (boto3's events for AWS, the HTTP transport for RunPod, the pacing wrapper for Vast.ai,
  the engine's error mapping for Docker); nothing provider-specific lives here;
- every node's boot log, pulled back from the node (the cloud's log API, or the local machine's
  file) when a launch fails, before its machines are ended.

Its path is printed (and noted on the raised error) when the pool fails. No secret is ever
written: values registered with `register_secret` (the pool's Ray token, a provider's API key)
and anything shaped like a credential (AWS key ids, `Bearer ...`, `api_key=...`, a secret's
`NAME=value`) are masked in every line. Without the switch, nothing is written and the calls cost
one environment read each; the lines still go to the `skyward_ray` logger at DEBUG.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from skyward_ray.cluster import pool_state

ENV_DEBUG = "SKYWARD_DEBUG"
MASK = "[secret]"
_log = logging.getLogger("skyward_ray.api")
_PATTERNS = [
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"),
    re.compile(r"(?i)((?:api[_-]?key|token|password|secret(?:[_-]?access[_-]?key)?|session[_-]?token|"
               r"authorization)[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,;}]+"),
]
_MIN_SECRET = 8  # shorter registered values would mask ordinary words


def enabled() -> bool:
    """Is the first-contact log on: `SKYWARD_DEBUG=1`, or the `skyward_ray` logger at DEBUG (`--verbose`)."""
    if os.environ.get(ENV_DEBUG, "") not in ("", "0"):
        return True
    return logging.getLogger("skyward_ray").isEnabledFor(logging.DEBUG)


class PoolLog:
    """One pool's log file: appended line by line from any thread, every line masked first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        self._file = os.fdopen(descriptor, "a", buffering=1)

    def write(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S") + f".{int(time.time() * 1000) % 1000:03d}"
        lines = [f"{stamp} {line}" for line in mask(text).splitlines() or [""]]
        with self._lock:
            if not self._file.closed:
                self._file.write("\n".join(lines) + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


_state_lock = threading.Lock()
_active: PoolLog | None = None
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Never write `value` (a token, an API key) into any line of the log, nor log it."""
    if value and len(value) >= _MIN_SECRET:
        with _state_lock:
            _secrets.add(value)


def mask(text: str) -> str:
    """`text` with every registered secret and every credential-shaped word replaced by `MASK`."""
    with _state_lock:
        values = sorted(_secrets, key=len, reverse=True)
    for value in values:
        text = text.replace(value, MASK)
    text = _PATTERNS[0].sub(MASK, text)
    for pattern in _PATTERNS[1:]:
        text = pattern.sub(lambda match: match.group(1) + MASK, text)
    return text


def open_pool_log(label: str) -> PoolLog | None:
    """Start this process's pool log (`logs/<label>-<time>.log` in the runtime root) when the log is
    on; None when it is off. Cloud calls and boot logs from now on go there until `close_pool_log`."""
    global _active
    if not enabled():
        return None
    directory = pool_state.runtime_root() / "logs"
    directory.mkdir(mode=0o700, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", label)[:60] or "pool"
    log = PoolLog(directory / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    with _state_lock:
        _active = log
    log.write(f"skyward first-contact log of {label} (pid {os.getpid()}); {ENV_DEBUG}=1 or --verbose wrote it")
    return log


def close_pool_log(log: PoolLog | None) -> None:
    """Stop writing to `log` (the file stays: it is what a failed pool is diagnosed from)."""
    global _active
    if log is None:
        return
    with _state_lock:
        if _active is log:
            _active = None
    log.close()


def active_path() -> Path | None:
    """The file this process's pool is logging to now, if any."""
    log = _active
    return log.path if log is not None else None


def note(text: str) -> None:
    """A line for the pool's log (a step of the launch), and for the `skyward_ray` logger at DEBUG."""
    log = _active
    if log is not None:
        log.write(text)
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug(mask(text))


def record_call(provider: str, operation: str, seconds: float, outcome: str = "ok") -> None:
    """One cloud API call: who, what, how long, and how it ended (`ok`, or the error in a few words)."""
    if _active is None and not _log.isEnabledFor(logging.DEBUG):
        return
    note(f"api {provider} {operation} {seconds * 1000:.0f}ms {' '.join(outcome.split())[:300]}")


def outcome_of(error: BaseException) -> str:
    """An error as a call's outcome: its type and first line."""
    first = (str(error).strip().splitlines() or [""])[0]
    return f"error {type(error).__name__}: {first}"


@contextlib.contextmanager
def timed_call(provider: str, operation: str) -> Iterator[None]:
    """Time the block as one call of `provider`'s API named `operation`, and record its outcome."""
    start = time.monotonic()
    try:
        yield
    except BaseException as error:
        record_call(provider, operation, time.monotonic() - start, outcome_of(error))
        raise
    record_call(provider, operation, time.monotonic() - start)


def record_node_logs(provider: object, instance_ids: list[str], why: str, lines: int = 400) -> None:
    """Each node's boot log (as far as its cloud keeps it), into the pool's log, with `why`; for a
    launch that failed, before its machines are ended. `provider` is a script-booted node provider."""
    if _active is None:
        return
    note(f"boot logs of {len(instance_ids)} node(s): {why}")
    for instance_id in instance_ids:
        try:
            text = provider.log_tail(instance_id, lines)  # type: ignore[attr-defined]
        except Exception as error:  # noqa: BLE001 - the log is a courtesy; the launch's error stands
            text = f"(its log could not be read: {outcome_of(error)})"
        note(f"--- node {instance_id} boot log (last {lines} lines) ---\n{text}\n--- end of node {instance_id} ---")
