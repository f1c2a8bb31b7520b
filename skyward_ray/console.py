"""The one console skyward_ray talks through (stderr, so a script's stdout stays its own), and its
`logging` side.

Progress lines for a person go through `console` (rich, with live lines on a terminal). Every
message is also a record of the `skyward_ray` logger, so a program can route, filter or silence
them the standard way; diagnostics that are not for the interactive console go only to the logger
(`log`). `SKYWARD_QUIET=1` (or `--quiet`) silences the progress lines; errors are raised, never only
printed. When stderr is not a terminal (piped, logged), lines are never wrapped: a URL or a cost
line stays one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from skyward_ray import names

#: the package's logger: status lines at INFO, diagnostics at DEBUG
log = logging.getLogger("skyward_ray")


def node_logs_enabled() -> bool:
    """Whether Ray's "(raylet)" messages from the nodes reach this process's stderr:
    `SKYWARD_NODE_LOGS=1`, or the `skyward_ray` logger set to DEBUG (`skyward-ray --verbose`)."""
    flag = os.environ.get(names.ENV_NODE_LOGS, "")
    if flag:
        return flag not in ("0", "false", "no")
    return log.isEnabledFor(logging.DEBUG)


def set_verbosity(verbose: bool = False, quiet: bool = False) -> None:
    """`--verbose`: DEBUG records of `skyward_ray` to stderr (and Ray's "(raylet)" messages, unless
    SKYWARD_NODE_LOGS says otherwise); `--quiet`: no progress lines (SKYWARD_QUIET=1, inherited by
    the processes this one starts)."""
    if quiet:
        os.environ[names.ENV_QUIET] = "1"
    if verbose:
        log.setLevel(logging.DEBUG)
        if not any(getattr(handler, "skyward_verbose", False) for handler in log.handlers):
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
            handler.skyward_verbose = True  # type: ignore[attr-defined]
            handler.addFilter(lambda record: not getattr(record, "on_console", False))  # printed already
            log.addHandler(handler)


def output_console(min_width: int) -> Console:
    """A command's stdout console: tables at least `min_width` wide; text lines never wrapped when
    piped (a URL, an `eval` line or a cost line stays whole for the reader and for `grep`)."""
    probe = Console()
    return Console(width=max(probe.width, min_width), highlight=False, soft_wrap=not probe.is_terminal)


class _SkywardConsole:
    def __init__(self) -> None:
        self._console = Console(stderr=True, highlight=False)
        if not self._console.is_terminal:
            self._console.soft_wrap = True  # piped: one message, one line (no wrap mid-URL)

    @property
    def quiet(self) -> bool:
        return os.environ.get(names.ENV_QUIET, "") not in ("", "0")

    def print(self, *args: Any, **kwargs: Any) -> None:
        text = " ".join(str(arg) for arg in args if isinstance(arg, str))
        if text:
            log.info(text, extra={"on_console": not self.quiet})
        if not self.quiet:
            self._console.print(*args, **kwargs)

    @property
    def interactive(self) -> bool:
        """Whether live displays make sense: a terminal, and not silenced."""
        return not self.quiet and self._console.is_terminal

    def live(self, text: str) -> Any:
        """A started single-line live display (`.update(text)`, `.stop()`)."""
        from rich.live import Live
        from rich.text import Text

        class _Line:
            def __init__(self, console: Console) -> None:
                self._live = Live(Text(text), console=console, refresh_per_second=4, transient=False)
                self._live.start()

            def update(self, line: str) -> None:
                self._live.update(Text(line))

            def stop(self) -> None:
                self._live.stop()

        return _Line(self._console)

    @contextlib.contextmanager
    def status(self, message: str) -> Iterator[None]:
        if self.quiet or not self._console.is_terminal:
            self.print(message + " ...")
            yield
            return
        log.info(message, extra={"on_console": True})
        with self._console.status(message):
            yield


console = _SkywardConsole()
