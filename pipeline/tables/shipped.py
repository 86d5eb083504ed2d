"""Tables that installed packages ship inside themselves, so a table study runs offline.

Each loader returns the table as read_table should see it: columns that pandas made floats only
because of a missing value, or that a package stores as float codes, are integers again (so that
read_table's integer rule can call the codes categorical).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.tables.read import names


def _whole_floats_to_int(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for name in frame.columns:
        values = frame[name]
        if pd.api.types.is_float_dtype(values) and np.all(values.to_numpy() % 1 == 0):
            frame[name] = values.astype(np.int64)
    return frame


def penguins() -> pd.DataFrame:
    """Palmer penguins, the 333 complete rows of 344: species, island and sex are text; the
    flipper length and body mass are whole numbers (mm, g); year (2007-2009) comes out
    categorical under read_table's integer rule (3 values), which is what it is: a cohort."""
    from palmerpenguins import load_penguins

    return _whole_floats_to_int(load_penguins().dropna().reset_index(drop=True))


def fair() -> pd.DataFrame:
    """statsmodels' affairs survey (6,366 rows): rate_marriage, religious, educ, occupation and
    occupation_husb are integer codes stored as floats (they become categorical); age,
    yrs_married and children are binned with half-year bin values, so they stay numeric."""
    from statsmodels.datasets import fair as fair_data

    return _whole_floats_to_int(fair_data.load_pandas().data)


def seattle_weather() -> pd.DataFrame:
    """vega_datasets' Seattle weather, 1,461 days, without its 'date' column: a GAN of rows has no
    use for a date, and read_table would refuse it. weather is the 5-way category."""
    from vega_datasets import data

    return data.seattle_weather().drop(columns=["date"])


def breast_cancer() -> pd.DataFrame:
    """sklearn's Wisconsin breast cancer (569 rows, 30 measurements), the target as a text label
    column "diagnosis" (malignant/benign) in place of sklearn's 0/1 "target"."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.drop(columns=["target"])
    frame["diagnosis"] = bunch.target_names[bunch.target.to_numpy()].astype(object)
    return frame


SHIPPED: dict[str, Callable[[], pd.DataFrame]] = {
    "penguins": penguins,
    "fair": fair,
    "seattle_weather": seattle_weather,
    "breast_cancer": breast_cancer,
}
WRITERS = (".csv", ".tsv", ".parquet")


def write_shipped(name: str, out: str | Path) -> Path:
    """Write the shipped table `name` to `out` (.csv, .tsv or .parquet by its suffix); the file
    appears whole or not at all (written beside it, then renamed)."""
    if name not in SHIPPED:
        raise DataError(f"unknown shipped table {name!r} (expected one of {names(list(SHIPPED))})")
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in WRITERS:
        raise DataError(f"cannot write table {name!r} to {path}: unknown suffix {suffix!r} "
                        f"(expected one of {', '.join(WRITERS)})")
    try:
        frame = SHIPPED[name]()
    except ImportError as exc:
        raise DataError(f"shipped table {name!r} needs a package that is not installed ({exc}); "
                        "pip install palmerpenguins vega_datasets statsmodels") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    os.chmod(partial, 0o644)  # mkstemp makes it private; a table is an ordinary file
    try:
        if suffix == ".parquet":
            frame.to_parquet(partial, index=False)
        else:
            frame.to_csv(partial, index=False, sep="\t" if suffix == ".tsv" else ",")
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return path
