"""Environment variables set for one block and put back after: what the simulated clouds' clients read."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def scoped_environment(env: dict[str, str], hide_prefixes: tuple[str, ...] = ()) -> Iterator[None]:
    """Set `env` for the block; variables starting with `hide_prefixes` (and not in `env`) are
    hidden meanwhile, so a developer's real credentials never reach a simulated cloud. Everything
    is restored (or removed) after."""
    hidden = {k: v for k, v in os.environ.items() if k.startswith(hide_prefixes) and k not in env}
    saved = {k: os.environ.get(k) for k in env}
    for key in hidden:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.environ.update(hidden)
