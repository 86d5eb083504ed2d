"""Faults of the machine, not of the input: a full disk, a read-only or damaged store.

A trial that hits one would be followed by others that hit it too, so a sweep stops at the
first, with one line (exit 1) instead of a traceback per trial; the trial ends FAILED, and
whatever could not be written then (a run left RUNNING) is ended when the same command resumes
the study, once space or permission is back. Errors reach us wrapped by several libraries (an
OSError inside SQLAlchemy inside MLflow), so the whole chain is read, and SQLite's own words
where it has no errno.
"""

from __future__ import annotations

import errno

_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
DAMAGED = "a damaged database"
# SQLite reports these in words (its result codes, as sqlite3's messages spell them)
_WORDS = {
    "database or disk is full": "no space left on the device",
    "no space left on device": "no space left on the device",
    "attempt to write a readonly database": "a read-only store",
    "read-only file system": "a read-only file system",
    "disk i/o error": "a disk I/O error",
    "unable to open database file": "the database file cannot be opened (folder read-only?)",
    "file is not a database": f"{DAMAGED} (SQLite: file is not a database)",
    "database disk image is malformed": f"{DAMAGED} (SQLite: database disk image is malformed)",
}
WHAT_TO_DO = "free space or make the store writable, then run the same command again"
WHAT_TO_DO_DAMAGED = ("move the damaged file aside and restore it from a copy, or set "
                      "MLFLOW_TRACKING_URI to another store (a study resumes only where its "
                      "runs are)")


class StorageFault(RuntimeError):
    """A write refused by the disk or a store; the message says which and what to do."""


def storage_fault(exc: BaseException) -> str | None:
    """What the machine refused, in a few words (with the file where known), if ``exc`` or
    anything it wraps is a full disk, a read-only file system or store, or a permission error;
    else None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, StorageFault):
            return str(e)
        if isinstance(e, OSError) and e.errno in _ERRNOS:
            where = f" ({e.filename})" if e.filename else ""
            return f"{_ERRNOS[e.errno]}{where}"
        said = fault_words(str(e))
        if said is not None:
            return said
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]
    return None


def fault_words(text: str) -> str | None:
    """A fault named in words (SQLite's, or an OSError's as a library reworded it)."""
    text = text.lower()
    for words, what in _WORDS.items():
        if words in text:
            return what
    return None


def fault_message(what: str, reason: str, *, resumes: bool = False) -> str:
    if reason.startswith(DAMAGED):
        return f"{what}: {reason}; {WHAT_TO_DO_DAMAGED}"
    return f"{what}: {reason}; {WHAT_TO_DO}{' (it resumes the study)' if resumes else ''}"
