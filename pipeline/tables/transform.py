"""Encode a table into the float vectors an MLP GAN learns, and decode its samples back.

One object, fitted once (CTGAN's DataTransformer is the model): categorical columns become
one-hot blocks; numeric columns are standardised, mapped to a normal through their quantiles,
or given CTGAN's mode-specific normalisation. The fitted state is plain numbers and names, so
`to_dict` is JSON and `from_dict` rebuilds it with no pickle: it is stored with the MLflow run
and loading it must not run code.

Decoding clips every numeric column to the [min, max] seen when fitting: a table's columns
rarely allow values outside their range (ages, counts, prices), a generator's tail often wanders
outside it, and an integer column must not overflow its dtype (an int8 wraps past 127).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.tables.columns import (
    Categorical,
    Column,
    Span,
    dtype_from_json,
    dtype_to_json,
    scalars,
)
from pipeline.tables.numeric import NUMERIC, NUMERIC_ENCODINGS, Mode, Numeric, Quantile, Standard
from pipeline.tables.read import names, short

FORMAT = "fcgan-table-transformer"
VERSION = 1


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {short(repr(value))}")
    return float(value)


def _floats(values: Any, positive: bool = False) -> np.ndarray:
    if not isinstance(values, list) or not values:
        raise ValueError("expected a non-empty list of numbers")
    array = np.array([_float(v) for v in values], dtype=np.float64)
    if positive and not np.all(array > 0):
        raise ValueError("expected positive numbers")
    return array


def _column_from_dict(data: Any) -> Column:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ValueError(f"bad column entry {short(data)}")
    name, dtype = data["name"], dtype_from_json(data["dtype"])
    if data["kind"] == "categorical":
        categories = scalars(data["categories"])
        if isinstance(dtype, pd.CategoricalDtype) and list(dtype.categories) != categories:
            raise ValueError(f"column {name!r}: categories differ from its dtype's")
        column = Categorical(name, dtype, categories)
        # Each category decodes to itself in that dtype: a float dtype with text categories,
        # say, fails here and not when sampling.
        if column.decode(np.eye(len(categories))).tolist() != categories:
            raise ValueError(f"column {name!r}: categories do not fit dtype {dtype}")
        return column
    if data["kind"] != "numeric":
        raise ValueError(f"column {name!r}: unknown kind {short(data['kind'])}")
    if not (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)):
        raise ValueError(f"column {name!r}: numeric with dtype {dtype}")
    low, high = _float(data["min"]), _float(data["max"])
    if low > high:
        raise ValueError(f"column {name!r}: min above max")
    if pd.api.types.is_integer_dtype(dtype):  # so that decoding never wraps around
        bounds = np.iinfo(np.dtype(str(dtype).lower()))
        if low < bounds.min or high > bounds.max:
            raise ValueError(f"column {name!r}: [min, max] beyond {dtype}")
    encoding = data["encoding"]
    if encoding == "standard":
        return Standard(name, dtype, low, high, _float(data["mean"]),
                         float(_floats([data["std"]], positive=True)[0]))
    if encoding == "quantile":
        return Quantile(name, dtype, low, high, _floats(data["quantiles"]))
    if encoding == "mode":
        return Mode(name, dtype, low, high, _floats(data["means"]),
                     _floats(data["stds"], positive=True), _floats(data["weights"], positive=True))
    raise ValueError(f"column {name!r}: unknown encoding {short(encoding)}")



class TableTransformer:
    """Fitted once on a table; `transform` encodes frames with the same columns, and
    `inverse_transform` decodes vectors into the original columns, order and dtypes."""

    def __init__(self, columns: Sequence[Column], numeric_encoding: str) -> None:
        self._columns = list(columns)
        self.numeric_encoding = numeric_encoding
        self.columns: tuple[str, ...] = tuple(c.name for c in self._columns)
        self.categorical: tuple[str, ...] = tuple(
            c.name for c in self._columns if isinstance(c, Categorical))
        spans: list[Span] = []
        for column in self._columns:
            spans += column.spans(spans[-1].start + spans[-1].width if spans else 0)
        self.spans: tuple[Span, ...] = tuple(spans)
        self.dim: int = spans[-1].start + spans[-1].width if spans else 0

    @classmethod
    def fit(cls, frame: pd.DataFrame, categorical: Sequence[str],
            numeric_encoding: str = "standard", *, max_modes: int = 10,
            seed: int = 0) -> TableTransformer:
        if numeric_encoding not in NUMERIC_ENCODINGS:
            raise DataError(f"unknown numeric encoding {numeric_encoding!r} (expected one of "
                            f"{', '.join(NUMERIC_ENCODINGS)})")
        if frame.shape[0] == 0 or frame.shape[1] == 0:
            raise DataError(f"cannot fit a table of {frame.shape[0]} rows and "
                            f"{frame.shape[1]} columns")
        if max_modes < 1:
            raise DataError(f"max_modes must be at least 1, not {max_modes}")
        names_ = [str(c) for c in frame.columns]
        if len(set(names_)) != len(names_) or names_ != list(frame.columns):
            raise DataError(f"column names must be unique strings, not {names(names_)}")
        unknown = [name for name in categorical if name not in names_]
        if unknown:
            raise DataError(f"categorical column(s) {names(unknown)} are not in the frame's "
                            f"columns {names(names_)}")
        encoder = NUMERIC[numeric_encoding]
        columns: list[Column] = []
        for name in names_:
            values = frame[name]
            if name in categorical:
                columns.append(Categorical.fit(values))
                continue
            if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
                raise DataError(f"column {name!r} has dtype {values.dtype}, not numbers; list it "
                                "as categorical")
            dtype_to_json(values.dtype, name)
            x = Numeric.floats(values)
            integer = pd.api.types.is_integer_dtype(values)
            low, high = Numeric.range_of(x, integer)
            columns.append(encoder.fit(name, values.dtype, x, low, high, max_modes=max_modes,
                                       seed=seed))
        return cls(columns, numeric_encoding)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """(N, dim) float32; DataError on missing columns, NaN or unseen categories."""
        missing = [name for name in self.columns if name not in frame.columns]
        extra = [str(name) for name in frame.columns if name not in self.columns]
        if missing or extra:
            raise DataError(f"the frame's columns differ from the fitted ones: missing "
                            f"{names(missing)}, unexpected {names(extra)}")
        if not self._columns:
            return np.zeros((len(frame), 0), dtype=np.float32)
        blocks = [column.encode(frame[column.name]) for column in self._columns]
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def inverse_transform(self, x: np.ndarray) -> pd.DataFrame:
        """Decoded rows: categories by argmax, modes by argmax, numbers clipped to the fitted
        [min, max] (see the module's docstring) and integers rounded; the original dtypes."""
        array = np.asarray(x, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise DataError(f"samples of shape {array.shape} do not match the table encoding "
                            f"of width {self.dim}")
        if not np.isfinite(array).all():
            raise DataError(f"{int((~np.isfinite(array)).any(axis=1).sum())} sampled rows hold "
                            "NaN or +-inf (did the generator diverge?)")
        parts: dict[str, pd.Series] = {}
        offset = 0
        for column in self._columns:
            width = sum(span.width for span in column.spans(0))
            parts[column.name] = column.decode(array[:, offset:offset + width])
            offset += width
        return pd.DataFrame(parts, columns=list(self.columns))

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "numeric_encoding": self.numeric_encoding,
                "columns": [column.to_dict() for column in self._columns]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TableTransformer:
        try:
            if not isinstance(data, Mapping):
                raise ValueError(f"expected a mapping, got {type(data).__name__}")
            if data.get("format") != FORMAT:
                raise ValueError(f"format {short(repr(data.get('format')))}, expected {FORMAT!r}")
            if data.get("version") != VERSION:
                raise ValueError(f"version {short(repr(data.get('version')))}, expected {VERSION}")
            encoding = data["numeric_encoding"]
            if encoding not in NUMERIC_ENCODINGS:
                raise ValueError(f"unknown numeric encoding {short(repr(encoding))}")
            entries = data["columns"]
            if not isinstance(entries, list):
                raise ValueError("columns must be a list")
            columns = [_column_from_dict(entry) for entry in entries]
            if len({c.name for c in columns}) != len(columns):
                raise ValueError("column names repeat")
            if any(isinstance(c, Numeric) and c.encoding != encoding for c in columns):
                raise ValueError(f"a numeric column's encoding differs from {encoding!r}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise DataError(f"bad table transformer dict: {short(what)}") from None
        return cls(columns, encoding)

    def sdv_metadata(self) -> dict[str, Any]:
        """SDMetrics' single-table metadata: each column's sdtype."""
        def sdtype(column: Column) -> str:
            if isinstance(column, Numeric):
                return "numerical"
            plain_bool = (pd.api.types.is_bool_dtype(column.dtype)
                          and not isinstance(column.dtype, pd.CategoricalDtype))
            return "boolean" if plain_bool else "categorical"

        return {"columns": {c.name: {"sdtype": sdtype(c)} for c in self._columns}}
