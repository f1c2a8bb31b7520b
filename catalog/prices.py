"""Price snapshots: generic CSV tables, one set per provider, parsed once and cached.

A snapshot is a published price list: the shipped ones are copied from the public SkyPilot catalog
by `catalog/tools/build_snapshots.py`, and every row carries its `source` (file and commit) and
`as_of` (that commit's date; empty where it is not recorded). Offers from a live API replace
snapshot rows later; until then these let `sky.plan` work with no credentials. This module only
reads tables: what the columns mean is the business of the provider's module in `node_providers/`.

`SKYWARD_RAY_CATALOG_DIR` points the loader at another directory of snapshot CSVs (tests use it
for fixture tables with known quirks).
"""

from __future__ import annotations

import csv
import os
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

SNAPSHOT_DIR = Path(__file__).with_name("snapshots")
CATALOG_DIR_ENV = "SKYWARD_RAY_CATALOG_DIR"

Row = dict[str, str]


def snapshot_dir() -> Path:
    override = os.environ.get(CATALOG_DIR_ENV)
    return Path(override) if override else SNAPSHOT_DIR


def snapshot_path(table: str) -> Path:
    return snapshot_dir() / f"{table}.csv"


def snapshot_version(table: str) -> tuple[str, int]:
    """(path, mtime) of a table: a cache key that changes when the file or the directory does."""
    path = snapshot_path(table)
    try:
        return str(path), path.stat().st_mtime_ns
    except FileNotFoundError:
        return str(path), -1


def rows(table: str) -> tuple[Row, ...]:
    """All rows of `snapshots/<table>.csv` as dicts of strings ('' for empty cells); () if absent."""
    return _read(*snapshot_version(table))


@lru_cache(maxsize=64)
def _read(path: str, mtime_ns: int) -> tuple[Row, ...]:
    if mtime_ns < 0:
        return ()
    with open(path, newline="", encoding="utf-8") as handle:
        lines = (line for line in handle if not line.startswith("#"))
        return tuple(csv.DictReader(lines))


def number(value: str) -> float | None:
    """CSV cell → float; '' (not listed) → None. '0' stays 0.0: callers decide what zero means."""
    return float(value) if value not in ("", None) else None


@lru_cache(maxsize=256)
def as_of(value: str) -> datetime | None:
    """'2026-11-01' (or an ISO timestamp) → aware UTC datetime; '' → None."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
