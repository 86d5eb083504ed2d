"""Score samples from any model against a dataset -> metrics.

The samples: an (N, D) array in the dataset's own scale, as a .npy file or a CSV of numbers (what
``sample --out x.csv`` writes); for a table, also its decoded rows (.csv, .tsv or .parquet with
the table's columns, what ``sample`` writes for a table), encoded here as training encodes them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import ConfigError, DataConfig, EvalConfig
from pipeline.data import load_dataset
from pipeline.dataset import Dataset
from pipeline.metrics import Evaluator
from pipeline.metrics.registry import MIN_SAMPLES

# The sample size the metrics' known answers and floors are read at: eval.n_samples' default,
# PacGAN's 2,500 points for the mixtures (the README's results use it or more). Fewer still
# score (down to each family's min_samples: 10 for the k-NN metrics, 200 for NDB), but the
# size-dependent ones drift with n: coverage, recall and modes_covered fall, KID and FID grow
# noisier, so scores of fewer samples are not comparable with those tables.
VALIDATED_SAMPLES = EvalConfig.n_samples
ROW_SUFFIXES = (".csv", ".tsv", ".parquet")  # a table's decoded rows (exported.write_samples)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def evaluate_file(
    data_name: str,
    samples_path: str | Path,
    *,
    root: str | None = None,
    path: str | None = None,
    overrides: Sequence[str] = (),
    metrics: Sequence[str] | None = None,
    cache_dir: str | Path = EvalConfig.cache_dir,
    warn: Callable[[str], None] = _stderr,
) -> dict[str, float]:
    """The metrics of ``samples_path`` against dataset ``data_name`` (``path``: data.path, a
    table file or an image folder; ``overrides``: data.key=value settings, as training had
    them). ``warn`` gets one line when there are fewer samples than the metrics were read at."""
    file = Path(samples_path)
    check_samples_file(file)  # before the dataset loads, which can take seconds
    dataset = load_dataset(data_config(data_name, root=root, path=path, overrides=overrides))
    samples = read_samples(file, dataset)
    if samples.dtype.kind not in "fiu" or not np.isfinite(samples).all():
        raise ConfigError(f"--samples: {samples_path} holds {samples.dtype} values, expected "
                          f"finite numbers (no NaN, no infinity)")
    if samples.ndim != 2 or samples.shape[1] != dataset.dim or len(samples) < MIN_SAMPLES:
        raise ConfigError(
            f"--samples: got shape {samples.shape}, expected (N, {dataset.dim}) with "
            f"N >= {MIN_SAMPLES} for {data_name}"
        )
    line = small_sample_warning(len(samples), dataset)
    if line:
        warn(line)
    try:
        evaluator = Evaluator(dataset, n_samples=len(samples), metrics=metrics,
                              cache_dir=Path(cache_dir))
    except ValueError as exc:  # an unknown metric name
        raise ConfigError(f"--metrics: {exc}") from None
    return evaluator.evaluate(torch.from_numpy(samples.astype(np.float32)))


def data_config(name: str, *, root: str | None = None, path: str | None = None,
                overrides: Sequence[str] = ()) -> DataConfig:
    """The dataset's settings: the defaults, then the options, then data.key=value."""
    from pipeline.config_load import load_config

    others = [o for o in overrides if not o.startswith("data.")]
    if others:
        raise ConfigError(f"evaluate: {others[0]!r}: only data.key=value settings apply here")
    given = {"name": name, "root": root, "path": path}
    extra = {"data": {k: v for k, v in given.items() if v is not None}}
    return load_config(None, overrides, extra=extra).data


def check_samples_file(file: Path) -> None:
    if not file.is_file():
        raise ConfigError(f"--samples: {file}: no such file")
    if file.suffix.lower() not in (".npy", *ROW_SUFFIXES):
        raise ConfigError(f"--samples: {file}: expected a .npy or .csv file (as `python -m "
                          f"pipeline sample --out` writes; a table's rows also .tsv or "
                          f".parquet), got {file.suffix or 'no suffix'}")


def read_samples(file: Path, dataset: Dataset) -> np.ndarray:
    """The samples as an (N, D) array, read by the file's suffix."""
    check_samples_file(file)
    suffix = file.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--samples: cannot read {file} as .npy ({exc})") from None
    if dataset.table is not None and suffix in ROW_SUFFIXES:
        return encode_rows(file, dataset)
    if suffix == ".csv":
        return read_csv_numbers(file)
    raise ConfigError(f"--samples: {file}: {suffix} holds a table's rows; {dataset.name} is not "
                      f"a table: expected a .npy or .csv file")


def read_csv_numbers(file: Path) -> np.ndarray:
    """Comma-separated numbers, one sample a row (``sample --out x.csv``); a header line of
    column names is skipped."""
    reason = ""
    for skip in (0, 1):
        try:
            return np.loadtxt(file, delimiter=",", ndmin=2, skiprows=skip)
        except ValueError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    raise ConfigError(f"--samples: cannot read {file} as comma-separated numbers ({reason})")


def encode_rows(file: Path, dataset: Dataset) -> np.ndarray:
    """A table's decoded rows, read with the real table's column types and encoded as its
    training rows are: a missing column or an unseen category is one line."""
    import pandas as pd

    from pipeline.errors import DataError

    assert dataset.table is not None
    parts = dataset.table
    readers: dict[str, Callable[[Path], Any]] = {
        ".csv": pd.read_csv, ".tsv": lambda f: pd.read_csv(f, sep="\t"),
        ".parquet": pd.read_parquet}
    try:
        frame = readers[file.suffix.lower()](file)
        frame.columns = [str(c) for c in frame.columns]
        real = parts.train_frame
        frame = frame.astype({c: real[c].dtype for c in frame.columns if c in real.columns})
        return parts.transformer.transform(frame)
    except DataError as exc:
        raise ConfigError(f"--samples: {file}: {exc}") from None
    except Exception as exc:  # parsers and casts raise anything from ParserError to TypeError
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"--samples: cannot read {file} as rows of the table "
                          f"({type(exc).__name__}: {text[:200]})") from None


def small_sample_warning(n: int, dataset: Dataset) -> str | None:
    """One line when ``n`` is below the validated size (the training split's size, if that
    is smaller: the Evaluator caps its subsets there); None otherwise."""
    want = min(VALIDATED_SAMPLES, len(dataset.train))
    if n >= want:
        return None
    why = "eval.n_samples" if want == VALIDATED_SAMPLES else "the training split's size"
    return (f"warning: {n} samples, fewer than the {want} the metrics are read at ({why}): "
            f"coverage, recall and mode counts come out lower and KID/FID noisier; compare "
            f"only scores of equal sample sizes")
