"""The one console skyward_ray talks through (stderr, so a script's stdout stays its own).

`SKYWARD_QUIET=1` silences progress messages; errors are raised, never only printed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from skyward_ray import names


class _SkywardConsole:
    def __init__(self) -> None:
        self._console = Console(stderr=True, highlight=False)

    @property
    def quiet(self) -> bool:
        return os.environ.get(names.ENV_QUIET, "") not in ("", "0")

    def print(self, *args: Any, **kwargs: Any) -> None:
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
        with self._console.status(message):
            yield


console = _SkywardConsole()
