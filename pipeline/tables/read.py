"""Read a user's table file into a clean DataFrame, and refuse what an MLP GAN cannot model.

Every refusal is a one-line DataError that names the file and the column, and says which setting
(data.columns, data.categorical, data.dropna) gets past it. Nothing here writes a file.

One job past 300 lines: each refusal is a check of the table as read, and they run in order.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import DataError

# pandas holds several times a file's size in memory while it parses (object columns, the
# intermediate string buffers), and the encoded float32 tensor comes on top: 2 GB keeps a table
# inside the memory of an ordinary machine. A bigger table is better sampled down first.
MAX_TABLE_BYTES = 2 * 1024**3
SUFFIXES = (".csv", ".tsv", ".parquet", ".npy")
# An integer column is a category when it has a handful of values that each repeat a lot (codes,
# ratings, years of a study); a count or a measurement has many values, or few rows per value.
INT_CATEGORICAL_MAX_DISTINCT = 10
INT_CATEGORICAL_MAX_FRACTION = 0.05  # distinct values below this fraction of the rows
# Text with a distinct value in most rows (names, ids, comments) has no categories to learn.
FREE_TEXT_MIN_DISTINCT = 50
FREE_TEXT_MIN_FRACTION = 0.5
DATE_SAMPLE = 200  # strings tried as dates: enough to tell, cheap on a large table
DATE_MIN_FRACTION = 0.9  # a column of dates may hold a few odd entries
MIN_SPLIT_ROWS = 2  # a split of one row has no spread for a metric to compare
MESSAGE_CHARS = 200


def short(value: object, limit: int = MESSAGE_CHARS) -> str:
    """`value` as text cut to `limit` characters, so that an error message stays one short line."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def names(items: Sequence[object]) -> str:
    return short("[" + ", ".join(str(item) for item in items) + "]")


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame  # the chosen columns, in file order (label included), clean
    categorical: tuple[str, ...]  # which of them are categorical
    label: str | None
    source: str  # resolved path
    digest: str  # sha256 of the file bytes, first 16 hex characters


def read_table(
    path: str | Path,
    *,
    columns: Sequence[str] | None = None,
    label: str | None = None,
    categorical: Sequence[str] = (),
    dropna: bool = False,
    max_bytes: int = MAX_TABLE_BYTES,
) -> Table:
    """Read a .csv/.tsv/.parquet/.npy table, keep `columns` (all by default; the label always)
    and decide which columns are categorical: text, booleans, pandas categories, integer codes
    with few values, the label and those named in `categorical`. Numeric is the rest."""
    file = Path(path).expanduser().resolve()
    where = f"table {short(file)}"
    if not file.exists():
        raise DataError(f"{where}: no such file")
    if not file.is_file():
        raise DataError(f"{where}: not a file")
    if file.suffix.lower() not in SUFFIXES:
        raise DataError(f"{where}: unknown suffix {file.suffix!r} (expected one of "
                        f"{', '.join(SUFFIXES)})")
    size = file.stat().st_size
    if size > max_bytes:
        raise DataError(f"{where} is {_size(size)}, over the {_size(max_bytes)} bound that keeps "
                        "a table in memory; sample its rows or columns down first")
    digest = _sha256(file)
    # infer_objects: an object column of Python bools or numbers (parquet) becomes bool/numeric
    frame = _load(file, where).infer_objects()
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise DataError(f"{where} is empty ({frame.shape[0]} rows, {frame.shape[1]} columns)")
    frame.columns = pd.Index([str(name) for name in frame.columns])
    if not frame.columns.is_unique:
        twice = sorted({name for name in frame.columns if (frame.columns == name).sum() > 1})
        raise DataError(f"{where}: column names repeat: {names(twice)}")

    available = list(frame.columns)
    for setting, asked in (("data.columns", columns or ()), ("data.categorical", categorical),
                           ("data.label", [label] if label is not None else [])):
        missing = [name for name in asked if name not in available]
        if missing:
            raise DataError(f"{where}: {setting} names {names(missing)}, not columns of the "
                            f"table; its columns are {names(available)}")
    chosen = set(columns) if columns else set(available)
    if label is not None:
        chosen.add(label)
    outside = [name for name in categorical if name not in chosen]
    if outside:
        raise DataError(f"{where}: data.categorical names {names(outside)}, which data.columns "
                        "leaves out")
    frame = frame[[name for name in available if name in chosen]]

    frame = _drop_missing(frame, where, dropna)
    _refuse_unusable(frame, where)
    picked = set(categorical) | ({label} if label is not None else set())
    kinds = tuple(name for name in frame.columns if name in picked or _is_categorical(frame[name]))
    return Table(frame=frame, categorical=kinds, label=label, source=str(file), digest=digest)


def split_rows(frame: pd.DataFrame, test_fraction: float,
               seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): a shuffle of the rows drawn from `seed`, `test_fraction` of them held out.
    Both parts keep the original index labels; within each part rows stay in table order."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"data.test_fraction must lie strictly between 0 and 1, not "
                        f"{test_fraction}")
    n = len(frame)
    n_test = round(n * test_fraction)
    if n_test < MIN_SPLIT_ROWS or n - n_test < MIN_SPLIT_ROWS:
        raise DataError(f"a table of {n} rows split with data.test_fraction={test_fraction} leaves "
                        f"{n - n_test} training and {n_test} test rows; each needs at least "
                        f"{MIN_SPLIT_ROWS}")
    order = np.random.default_rng(seed).permutation(n)
    test = np.sort(order[:n_test])
    train = np.sort(order[n_test:])
    return frame.iloc[train], frame.iloc[test]


# --- loading ------------------------------------------------------------------------------------


def _size(n: int) -> str:
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GB"
    return f"{n / 1024**2:.1f} MB" if n >= 1024**2 else f"{n} bytes"


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    try:
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"table {short(file)}: unreadable ({short(exc)})") from None
    return digest.hexdigest()[:16]


def _load(file: Path, where: str) -> pd.DataFrame:
    readers: dict[str, Callable[[Path], pd.DataFrame]] = {
        ".csv": lambda f: pd.read_csv(f, low_memory=False),
        ".tsv": lambda f: pd.read_csv(f, sep="\t", low_memory=False),
        ".parquet": pd.read_parquet,
        ".npy": lambda f: _load_npy(f, where),
    }
    try:
        return readers[file.suffix.lower()](file)
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{where} is empty (no columns)") from None
    except Exception as exc:  # parsers raise anything from UnicodeDecodeError to ArrowInvalid
        raise DataError(f"{where}: unreadable or corrupt ({type(exc).__name__}: "
                        f"{short(exc, 120)})") from None


def _load_npy(file: Path, where: str) -> pd.DataFrame:
    # The header is checked against the file's size before anything is allocated: a header
    # that claims 10**12 rows in a small file is a corrupt file, not a MemoryError.
    with file.open("rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:  # 3.0 exists only for structured dtypes with unicode field names
                raise ValueError(f"format version {version}")
        except ValueError as exc:
            raise DataError(f"{where}: not a valid .npy file ({short(exc, 120)})") from None
        body = file.stat().st_size - handle.tell()
    if len(shape) != 2:
        raise DataError(f"{where}: a .npy table must be 2-D (rows, columns), not shape {shape}")
    if dtype.names is not None or dtype.kind not in "biuf":
        raise DataError(f"{where}: a .npy table must hold numbers, not dtype {dtype}")
    expected = math.prod(shape) * dtype.itemsize
    if expected != body:
        raise DataError(f"{where}: the header says shape {shape} of {dtype} ({expected} bytes) "
                        f"but the file holds {body} bytes of data")
    array = np.load(file, allow_pickle=False)
    return pd.DataFrame(array, columns=[f"c{i}" for i in range(shape[1])])


# --- checks -------------------------------------------------------------------------------------


def _drop_missing(frame: pd.DataFrame, where: str, dropna: bool) -> pd.DataFrame:
    bad = frame.isna()
    numbers = [name for name in frame.columns if _is_number(frame[name])]
    infinite = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    for name in numbers:
        infinite[name] = np.isinf(frame[name].to_numpy(dtype=np.float64, na_value=np.nan))
    rows = (bad | infinite).any(axis=1)
    if not rows.any():
        return frame.reset_index(drop=True)
    if not dropna:
        parts = [f"{name!r} ({int(bad[name].sum())} NaN/None, {int(infinite[name].sum())} inf)"
                 for name in frame.columns if bad[name].any() or infinite[name].any()]
        raise DataError(short(f"{where}: {int(rows.sum())} rows hold NaN/None or +-inf in "
                              f"{', '.join(parts)}", 400)
                        + "; drop those rows with data.dropna=true")
    # infer_objects: booleans beside a missing value were read as objects; now they are bools
    kept = frame.loc[~rows].reset_index(drop=True).infer_objects()
    if kept.empty:
        raise DataError(f"{where}: every row holds a NaN/None or +-inf, so data.dropna=true "
                        "leaves no rows")
    for name in kept.columns:
        # A missing value makes pandas read an integer column as floats; once those rows are
        # gone, whole numbers go back to being integers (counts and codes, not measurements).
        values = kept[name]
        if bad[name].any() and pd.api.types.is_float_dtype(values) and _whole(values):
            kept[name] = values.astype(np.int64)
    return kept


def _refuse_unusable(frame: pd.DataFrame, where: str) -> None:
    problems: dict[str, list[str]] = {"dates": [], "text": [], "constant": [], "other": []}
    for name in frame.columns:
        values = frame[name]
        if pd.api.types.is_datetime64_any_dtype(values) or isinstance(values.dtype, pd.PeriodDtype):
            problems["dates"].append(name)
        elif _is_text(values):
            if not all(isinstance(v, str) for v in values):
                problems["other"].append(name)
            elif _looks_like_dates(values):
                problems["dates"].append(name)
            elif _is_free_text(values):
                problems["text"].append(name)
        elif not (_is_number(values) or pd.api.types.is_bool_dtype(values)
                  or isinstance(values.dtype, pd.CategoricalDtype)):
            problems["other"].append(name)
        if name not in problems["other"] and values.nunique() == 1:
            problems["constant"].append(name)

    def way_out(refused: list[str]) -> str:
        rest = [name for name in frame.columns if name not in refused]
        return f"leave {'it' if len(refused) == 1 else 'them'} out with data.columns={names(rest)}"

    if problems["other"]:
        raise DataError(f"{where}: column(s) {names(problems['other'])} hold values that are "
                        "neither numbers, booleans nor text; " + way_out(problems["other"]))
    if problems["dates"]:
        raise DataError(f"{where}: column(s) {names(problems['dates'])} hold dates, which an MLP "
                        "GAN does not model; " + way_out(problems["dates"]))
    if problems["text"]:
        raise DataError(f"{where}: column(s) {names(problems['text'])} hold free text (a distinct "
                        "value in most rows), which has no categories to learn; "
                        + way_out(problems["text"]))
    if problems["constant"]:
        raise DataError(f"{where}: column(s) {names(problems['constant'])} hold one value only "
                        "(nothing to learn); " + way_out(problems["constant"]))


def _is_number(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _is_text(values: pd.Series) -> bool:
    return pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)


def _whole(values: pd.Series) -> bool:
    array = values.to_numpy(dtype=np.float64)
    return bool(np.all(array == np.round(array)) and np.all(np.abs(array) < 2.0**53))


def _looks_like_dates(values: pd.Series) -> bool:
    sample = values.drop_duplicates().iloc[:DATE_SAMPLE]
    # Only strings with a digit count: dateutil reads "sun" or "may" as dates, and a
    # category of weekdays or months is a category.
    with_digit = sample[sample.str.contains(r"\d", regex=True)]
    if len(with_digit) < DATE_MIN_FRACTION * len(sample):
        return False
    with warnings.catch_warnings():  # "could not infer format": it is a guess on purpose
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(with_digit, errors="coerce", format="mixed")
    return bool(parsed.notna().sum() >= DATE_MIN_FRACTION * len(sample))


def _is_free_text(values: pd.Series) -> bool:
    distinct = values.nunique()
    return distinct > FREE_TEXT_MIN_DISTINCT and distinct > FREE_TEXT_MIN_FRACTION * len(values)


def _is_categorical(values: pd.Series) -> bool:
    if not _is_number(values):  # text, booleans, pandas categories
        return True
    if not pd.api.types.is_integer_dtype(values):
        return False
    distinct = values.nunique()
    return (distinct <= INT_CATEGORICAL_MAX_DISTINCT
            and distinct < INT_CATEGORICAL_MAX_FRACTION * len(values))
