"""Where a store is, and a store that opens again after its folder was copied or moved.

``--store`` names an MLflow store as a URI, a runs/ folder (its mlflow.db) or an mlflow.db file.
MLflow writes absolute artifact locations into the database (an experiment's root, each run's
folder, registered model versions, MLflow 3's logged models), so a copied runs/ folder still
reads its artifacts from the original, and a moved one from nowhere. ``relocate`` points the
locations under the old folder's artifacts/ at the artifacts/ beside the database now.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from pipeline.config import TRACKING_SCHEMES, check_tracking_uri
from pipeline.errors import ConfigError
from pipeline.sqlite import sqlite_path

DB_NAME = "mlflow.db"
ARTIFACTS = "artifacts"  # the folder beside the database (tracking.artifact_location)

# (table, column, row filter): every place MLflow 3 writes an absolute artifact location. Other
# columns that hold paths (params, the datasets' sources, the source-file tags) record where
# things were when a run ran, and stay as they are.
LOCATION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("experiments", "artifact_location", ""),
    ("runs", "artifact_uri", ""),
    ("model_versions", "source", ""),
    ("model_versions", "storage_location", ""),
    ("logged_models", "artifact_location", ""),
    ("trace_tags", "value", "key = 'mlflow.artifactLocation'"),
)


def store_uri(text: str) -> str:
    """``--store``: a URI as it is; a runs/ folder or an mlflow.db file as a SQLite URI. A
    store that is not there is a one-line error, never a new empty store."""
    if text.startswith(TRACKING_SCHEMES) or "://" in text:
        check_tracking_uri("--store", text)
        if text.startswith("sqlite:///") and not sqlite_path(text).is_file():
            raise ConfigError(f"--store {text}: {sqlite_path(text)} does not exist")
        return text
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / DB_NAME
        if not path.is_file():
            raise ConfigError(f"--store {text}: no {DB_NAME} in this folder (expected a runs/ "
                              f"folder, an {DB_NAME} file or a URI)")
    elif not path.is_file():
        raise ConfigError(f"--store {text}: no such file or folder")
    # as tracking_uri() writes the project's own store, the lock timeout included
    return f"sqlite:///{path.resolve()}?timeout=60"


def store_db(text: str) -> Path:
    """``--store`` for commands that rewrite the database file itself: SQLite only."""
    uri = store_uri(text)
    if not uri.startswith("sqlite:///"):
        raise ConfigError(f"--store {text}: relocate rewrites SQLite stores (a runs/ folder or "
                          f"its {DB_NAME}); a database server's paths are its own business")
    return sqlite_path(uri).resolve()


def file_path(location: str) -> Path | None:
    """The local path a location names (a file: URI or an absolute path); None for anything
    else (runs:/, models:/, s3:// ...), which a move does not break."""
    if location.startswith("file:"):
        return Path(unquote(urlparse(location).path))
    return Path(location) if location.startswith("/") else None


@dataclass(frozen=True)
class Edit:
    table: str
    column: str
    rowid: int
    old: str
    new: str


@dataclass(frozen=True)
class Plan:
    """What relocating one database changes: ``old`` and ``new`` artifacts folders (None when
    no location needs to move) and the edits; ``outside``: file locations left as they are,
    not under the old artifacts folder (MLflow's Default experiment's ./mlruns, for one)."""

    db: Path
    old: Path | None
    new: Path
    edits: tuple[Edit, ...]
    outside: tuple[str, ...]

    def counts(self) -> Counter[str]:
        return Counter(f"{e.table}.{e.column}" for e in self.edits)


def _columns(conn: sqlite3.Connection) -> Iterator[tuple[str, str, str]]:
    """The location columns this database has (older MLflow schemas lack some)."""
    for table, column, where in LOCATION_COLUMNS:
        names = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
        if column in names:
            yield table, column, where


def _locations(conn: sqlite3.Connection) -> Iterator[tuple[str, str, int, str]]:
    for table, column, where in _columns(conn):
        query = f'SELECT rowid, "{column}" FROM "{table}" WHERE "{column}" IS NOT NULL'
        for rowid, value in conn.execute(query + (f" AND {where}" if where else "")):
            yield table, column, rowid, str(value)


def recorded_roots(conn: sqlite3.Connection) -> set[Path]:
    """The artifacts folders the experiments record: every experiment the pipeline creates
    has the store's own artifacts/ as its root (tracking.experiment_id)."""
    roots = set()
    for (value,) in conn.execute("SELECT artifact_location FROM experiments "
                                 "WHERE artifact_location IS NOT NULL"):
        path = file_path(str(value))
        if path is not None and path.name == ARTIFACTS:
            roots.add(path)
    return roots


def old_root(conn: sqlite3.Connection, new: Path) -> Path | None:
    """The one artifacts folder, other than ``new``, that the experiments record; None if
    there is none (already relocated, or never moved)."""
    others = sorted(str(p) for p in recorded_roots(conn) if p != new)
    if len(others) > 1:
        raise ConfigError(f"the experiments record {len(others)} artifacts folders "
                          f"({', '.join(others)}): say which moved with --from OLD_FOLDER")
    return Path(others[0]) if others else None


def rewrite(value: str, old: Path, new: Path) -> str | None:
    """``value`` with the ``old`` folder replaced by ``new``, in the form it was written in
    (file: URI or plain path); None if it does not lie under ``old``."""
    # as_uri() percent-encodes (what the pipeline writes); file:// and file: with the path as
    # it is are what other writers may have used
    pairs = [(str(old), str(new)), (old.as_uri(), new.as_uri()), (f"file://{old}", f"file://{new}"),
             (f"file:{old}", f"file:{new}")]
    for before, after in pairs:
        if value == before or value.startswith(before + "/"):
            return after + value[len(before):]
    return None


def plan(conn: sqlite3.Connection, db: Path, source: str | Path | None = None) -> Plan:
    new = db.parent / ARTIFACTS
    old = _source_root(source) if source is not None else old_root(conn, new)
    edits, outside = [], []
    for table, column, rowid, value in _locations(conn):
        path = file_path(value)
        if path is None or _under(path, new):
            continue  # not a file, or already here
        changed = None if old is None else rewrite(value, old, new)
        if changed is not None:
            edits.append(Edit(table, column, rowid, value, changed))
        else:
            outside.append(f"{table}.{column} {value}")
    return Plan(db, old if edits else None, new, tuple(edits), tuple(outside))


def _source_root(source: str | Path) -> Path:
    path = file_path(str(source)) or Path(source).expanduser().absolute()
    return Path(str(path).rstrip("/")) if str(path) != "/" else path


def _under(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


@contextmanager
def _connect(db: Path, *, write: bool) -> Iterator[sqlite3.Connection]:
    """Read-only for a dry run (the file cannot change); else one immediate transaction, so
    that no writer adds a run between reading the locations and rewriting them."""
    uri = db.as_uri() + ("" if write else "?mode=ro")
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
    except sqlite3.Error as exc:
        raise ConfigError(f"{db}: cannot open it ({exc})") from None
    with closing(conn):
        try:
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"{db}: not an SQLite database ({exc})") from None
        if not {"experiments", "runs"} <= tables:
            raise ConfigError(f"{db}: not an MLflow store (no experiments or runs table)")
        if write:
            conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if write:
                conn.execute("ROLLBACK")
            raise
        if write:
            conn.execute("COMMIT")


def relocate(store: str = "runs", *, source: str | None = None, apply: bool = False) -> Plan:
    """Plan (and with ``apply`` write) the rewrite of ``store``'s artifact locations from the
    artifacts folder it was created in (or ``source``) to the one beside its database now."""
    db = store_db(store)
    with _connect(db, write=apply) as conn:
        result = plan(conn, db, source)
        if result.edits and not result.new.is_dir():
            raise ConfigError(f"{db}: no {ARTIFACTS}/ folder beside it ({result.new}): copy "
                              f"or move the whole folder, {DB_NAME} and {ARTIFACTS}/ together")
        if apply:
            for e in result.edits:
                conn.execute(f'UPDATE "{e.table}" SET "{e.column}" = ? WHERE rowid = ?',
                             (e.new, e.rowid))
    return result


OUTSIDE_SHOWN = 3  # locations left as they are, listed by name: a Default experiment has many


def report_lines(result: Plan, *, applied: bool) -> list[str]:
    """What ``relocate`` prints: the folders, the count per column, what stays, what next."""
    if result.old is None:
        return [f"{result.db}: every artifact location of its experiments already points at "
                f"{result.new} (nothing to relocate)"]
    lines = [f"{result.db}: artifacts recorded under {result.old}, now at {result.new}"]
    lines += [f"  {where}: {n}" for where, n in sorted(result.counts().items())]
    shown = result.outside[:OUTSIDE_SHOWN]
    lines += [f"  left as it is (not under {result.old}): {where}" for where in shown]
    if len(result.outside) > len(shown):
        lines.append(f"  ... and {len(result.outside) - len(shown)} more left as they are")
    n = len(result.edits)
    lines.append(f"rewritten: {n} locations" if applied else
                 f"dry run, nothing written: add --apply to rewrite these {n} locations")
    return lines


def moved_warning(uri: str) -> str | None:
    """One line for a SQLite store whose experiments keep their artifacts in another folder
    (copied or moved, not relocated): the UI would show its runs without their artifacts."""
    old = stale_root(uri)
    if old is None:
        return None
    folder = sqlite_path(uri).resolve().parent
    return (f"warning: {folder}'s runs keep their artifacts under {old} (copied or moved?): "
            f"`python -m pipeline relocate --store {folder} --apply` points them at its own "
            f"{ARTIFACTS}/")


def stale_root(uri: str) -> Path | None:
    """For a SQLite store: the artifacts folder its experiments record if that is not the one
    beside it (copied or moved, not relocated); None otherwise, or if it cannot tell."""
    if not uri.startswith("sqlite:///"):
        return None
    db = sqlite_path(uri).resolve()
    try:
        with _connect(db, write=False) as conn:
            return old_root(conn, db.parent / ARTIFACTS)
    except ConfigError:
        return None
