"""Price snapshots: generic CSV tables, one set per provider, parsed once and cached.

A snapshot is a published price list: the shipped ones are copied from the public SkyPilot catalog
by `catalog/tools/build_snapshots.py`, and every row carries its `source` (file and commit) and
`as_of` (that commit's date; empty where it is not recorded). Offers from a live API replace
snapshot rows later; until then these let `sky.plan` work with no credentials. This module only
reads tables: what the columns mean is the business of the provider's module in `node_providers/`.

A row whose `as_of` is empty (the source's publication date was not known when the table was
built) is dated here by the table file's last commit in git, and says so: `dated_by` is
"published" (the source's own date), "catalog commit" (the prices are at least that old; a git
checkout only) or "undated" (an installed copy without git history: no date is made up).

`SKYWARD_RAY_CATALOG_DIR` points the loader at another directory of snapshot CSVs (tests use it
for fixture tables with known quirks).
"""

from __future__ import annotations

import csv
import os
import subprocess
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


DATED_BY_SOURCE = "published"
DATED_BY_COMMIT = "catalog commit"
UNDATED = "undated"


@lru_cache(maxsize=64)
def _read(path: str, mtime_ns: int) -> tuple[Row, ...]:
    if mtime_ns < 0:
        return ()
    with open(path, newline="", encoding="utf-8") as handle:
        lines = (line for line in handle if not line.startswith("#"))
        table = list(csv.DictReader(lines))
    committed = commit_date(path) if any(not row.get("as_of") for row in table) else None
    for row in table:
        if row.get("as_of"):
            row["dated_by"] = DATED_BY_SOURCE
        else:
            row["as_of"], row["dated_by"] = (committed, DATED_BY_COMMIT) if committed else ("", UNDATED)
    return tuple(table)


def commit_date(path: str) -> str | None:
    """The ISO date of the last git commit that changed `path`; None outside a git checkout."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        done = subprocess.run(["git", "-C", directory, "log", "-1", "--format=%cI", "--", os.path.basename(path)],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    stamp = done.stdout.strip()
    return stamp if done.returncode == 0 and stamp else None


def dating(row: Row) -> dict[str, object]:
    """An offer's price date fields from its snapshot row: when (`price_as_of`), what that date is
    (`price_dated_by`) and which published list it is (`price_reference`, the row's `source`)."""
    return {"price_as_of": as_of(row.get("as_of", "")), "price_dated_by": row.get("dated_by") or UNDATED,
            "price_reference": row.get("source") or None}


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
