"""SQLite files, for the two stores that can live in one (Optuna's and MLflow's): where a
sqlite:/// URL points, what a database file begins with, and the lock that one process at a
time creates a schema under."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def sqlite_path(uri: str) -> Path:
    """The file of a ``sqlite:///`` URL (its query string dropped)."""
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


@contextmanager
def schema_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<path>.lock``: two processes creating (or migrating) one fresh
    database's schema at once race in the migrations and can leave it unusable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
