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
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtri

from pipeline.errors import DataError
from pipeline.tables.read import names, short

NUMERIC_ENCODINGS = ("standard", "quantile", "mode")  # the one list of names; config validates it
FORMAT = "fcgan-table-transformer"
VERSION = 1
MAX_QUANTILES = 1000  # as sklearn's QuantileTransformer: fine enough, and small as JSON
QUANTILE_TAIL = 1e-7  # the outermost knots sit at +-5.2 sigma (sklearn's BOUNDS_THRESHOLD)
MODE_MIN_WEIGHT = 0.005  # CTGAN drops mixture components lighter than this
MODE_SCALE = 4.0  # CTGAN: (x - mu) / (4 sigma) puts a mode's values inside (-1, 1)
MODE_CLIP = 0.99
NUMPY_KINDS = "biufO"  # the numpy dtypes a column may have (bool, int, uint, float, object)
EXTENSION_DTYPES = ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
                    "Float32", "Float64", "boolean")


@dataclass(frozen=True)
class Span:
    """One block of the encoded vector, for the generator's output heads."""

    column: str
    start: int
    width: int
    activation: str  # "softmax" (a one-hot: a category, or a mode indicator) | "none" | "tanh"


# --- dtypes as JSON -----------------------------------------------------------------------------


def _dtype_to_json(dtype: Any, column: str) -> dict[str, Any]:
    if isinstance(dtype, pd.CategoricalDtype):
        return {"category": {"categories": [_scalar(v, column) for v in dtype.categories],
                             "categories_dtype": _dtype_to_json(dtype.categories.dtype, column),
                             "ordered": bool(dtype.ordered)}}
    if isinstance(dtype, pd.StringDtype):
        nan = isinstance(dtype.na_value, float)  # pandas 3's default "str" dtype: NaN, not NA
        return {"string": dtype.storage, "na": "nan" if nan else "NA"}
    if isinstance(dtype, np.dtype) and dtype.kind in NUMPY_KINDS:
        return {"numpy": dtype.name}
    if str(dtype) in EXTENSION_DTYPES:
        return {"extension": str(dtype)}
    raise DataError(f"column {column!r}: dtype {short(dtype)} is not supported (numbers, "
                    "booleans, text and pandas categories are)")


def _dtype_from_json(data: Any) -> Any:
    if not isinstance(data, dict) or len(data) not in (1, 2):
        raise ValueError(f"bad dtype {short(data)}")
    if "numpy" in data:
        dtype = np.dtype(str(data["numpy"]))
        if dtype.kind not in NUMPY_KINDS:
            raise ValueError(f"dtype {dtype} is not allowed")
        return dtype
    if "extension" in data:
        if data["extension"] not in EXTENSION_DTYPES:
            raise ValueError(f"dtype {short(data['extension'])} is not allowed")
        return pd.api.types.pandas_dtype(data["extension"])
    if "string" in data:
        if data["string"] not in ("python", "pyarrow") or data.get("na") not in ("nan", "NA"):
            raise ValueError(f"bad string dtype {short(data)}")
        if data["na"] == "nan":
            return pd.StringDtype(data["string"], na_value=np.nan)
        return pd.StringDtype(data["string"])
    if "category" in data:
        spec = data["category"]
        inner = _dtype_from_json(spec["categories_dtype"])
        categories = pd.Index(_scalars(spec["categories"]), dtype=inner)
        return pd.CategoricalDtype(categories, ordered=_bool(spec["ordered"]))
    raise ValueError(f"bad dtype {short(data)}")


def _scalar(value: Any, column: str) -> str | bool | int | float:
    """A category as a JSON value: text, a boolean, an integer or a finite float."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise DataError(f"column {column!r}: category {short(repr(value))} is not text, a boolean "
                    "or a finite number")


def _scalars(values: Any) -> list[str | bool | int | float]:
    if not isinstance(values, list) or not values:
        raise ValueError("categories must be a non-empty list")
    for value in values:
        if not isinstance(value, (str, bool, int, float)) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"bad category {short(repr(value))}")
    if not pd.Index(values, dtype=object).is_unique:
        raise ValueError("categories repeat")
    return values


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


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true/false, got {short(repr(value))}")
    return value


# --- one column -----------------------------------------------------------------------------------


class _Column:
    """The fitted encoding of one column: its block(s) of the vector and the way back."""

    kind = ""

    def __init__(self, name: str, dtype: Any) -> None:
        self.name = name
        self.dtype = dtype

    def spans(self, start: int) -> list[Span]:
        raise NotImplementedError

    def encode(self, values: pd.Series) -> np.ndarray:  # (N, width) float64
        raise NotImplementedError

    def decode(self, block: np.ndarray) -> pd.Series:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind,
                "dtype": _dtype_to_json(self.dtype, self.name)}


class _Categorical(_Column):
    kind = "categorical"

    def __init__(self, name: str, dtype: Any, categories: list[Any]) -> None:
        super().__init__(name, dtype)
        self.categories = categories
        self._index = pd.Index(categories, dtype=object)
        self._values = np.empty(len(categories), dtype=object)
        self._values[:] = categories

    @classmethod
    def fit(cls, values: pd.Series) -> _Categorical:
        name = str(values.name)
        _dtype_to_json(values.dtype, name)  # refuse datetimes etc. now, not when saving
        if isinstance(values.dtype, pd.CategoricalDtype):
            # The dtype's own order, unused categories included: decoding gives back the dtype.
            found = list(values.dtype.categories)
        else:
            unique = pd.unique(values.to_numpy(dtype=object))
            found = sorted(unique, key=lambda v: (type(v).__name__, v))
        categories = [_scalar(v, name) for v in found]
        if not categories:
            raise DataError(f"column {name!r}: no categories (an empty column)")
        if not pd.Index(categories, dtype=object).is_unique:
            raise DataError(f"column {name!r}: categories that compare equal "
                            f"({names(categories)}), mixed numbers and booleans?")
        return cls(name, values.dtype, categories)

    def spans(self, start: int) -> list[Span]:
        return [Span(self.name, start, len(self.categories), "softmax")]

    def encode(self, values: pd.Series) -> np.ndarray:
        codes = self._index.get_indexer(values.to_numpy(dtype=object))
        if (codes < 0).any():
            unknown = pd.unique(values[codes < 0].to_numpy(dtype=object))
            raise DataError(f"column {self.name!r}: categories not seen when fitting: "
                            f"{names(list(unknown))}")
        block = np.zeros((len(values), len(self.categories)))
        block[np.arange(len(values)), codes] = 1.0
        return block

    def decode(self, block: np.ndarray) -> pd.Series:
        codes = block.argmax(axis=1)
        if isinstance(self.dtype, pd.CategoricalDtype):
            return pd.Series(pd.Categorical.from_codes(codes, dtype=self.dtype), name=self.name)
        return pd.Series(self._values[codes], name=self.name).astype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "categories": list(self.categories)}


class _Numeric(_Column):
    """Shared by the numeric encodings: the observed range, and the dtype to decode into."""

    kind = "numeric"
    encoding = ""

    def __init__(self, name: str, dtype: Any, low: float, high: float) -> None:
        super().__init__(name, dtype)
        self.low, self.high = low, high
        self.integer = pd.api.types.is_integer_dtype(dtype)

    @staticmethod
    def floats(values: pd.Series) -> np.ndarray:
        array = values.to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isfinite(array).all():
            raise DataError(f"column {values.name!r}: {int((~np.isfinite(array)).sum())} rows "
                            "are NaN or +-inf")
        return array

    @staticmethod
    def range_of(values: np.ndarray, integer: bool) -> tuple[float, float]:
        low, high = float(values.min()), float(values.max())
        return (float(round(low)), float(round(high))) if integer else (low, high)

    def encode(self, values: pd.Series) -> np.ndarray:
        return self.encode_floats(self.floats(values))

    def decode(self, block: np.ndarray) -> pd.Series:
        values = np.clip(self.decode_floats(block), self.low, self.high)
        if self.integer:
            values = np.rint(values)
        return pd.Series(values, name=self.name).astype(self.dtype)

    def encode_floats(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode_floats(self, block: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def spans(self, start: int) -> list[Span]:
        return [Span(self.name, start, 1, "none")]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "encoding": self.encoding, "min": self.low, "max": self.high}


class _Standard(_Numeric):
    encoding = "standard"

    def __init__(self, name: str, dtype: Any, low: float, high: float, mean: float,
                 std: float) -> None:
        super().__init__(name, dtype, low, high)
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, name: str, dtype: Any, x: np.ndarray, low: float, high: float,
            **_: Any) -> _Standard:
        std = float(x.std())
        return cls(name, dtype, low, high, float(x.mean()), std if std > 0 else 1.0)

    def encode_floats(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std)[:, None]

    def decode_floats(self, block: np.ndarray) -> np.ndarray:
        return block[:, 0] * self.std + self.mean

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "mean": self.mean, "std": self.std}


class _Quantile(_Numeric):
    """Piecewise-linear between the empirical quantiles and the matching normal quantiles: a
    value between two knots maps linearly between their z, so decoding is exact interpolation
    back (sklearn's QuantileTransformer maps to [0, 1] first, which loses digits at the tails)."""

    encoding = "quantile"

    def __init__(self, name: str, dtype: Any, low: float, high: float,
                 quantiles: np.ndarray) -> None:
        super().__init__(name, dtype, low, high)
        if len(quantiles) < 2 or np.any(np.diff(quantiles) < 0):
            raise ValueError("quantiles must be at least 2 and non-decreasing")
        self.quantiles = quantiles
        levels = np.linspace(0.0, 1.0, len(quantiles))
        self.z = ndtri(np.clip(levels, QUANTILE_TAIL, 1.0 - QUANTILE_TAIL))

    @classmethod
    def fit(cls, name: str, dtype: Any, x: np.ndarray, low: float, high: float,
            **_: Any) -> _Quantile:
        levels = np.linspace(0.0, 1.0, max(2, min(MAX_QUANTILES, len(x))))
        quantiles = np.maximum.accumulate(np.quantile(x, levels))  # monotone despite rounding
        return cls(name, dtype, low, high, quantiles)

    def encode_floats(self, x: np.ndarray) -> np.ndarray:
        # Forward and backward interpolation averaged (as sklearn does): a value repeated over
        # many knots lands in the middle of their z range, not at its edge.
        q, z = self.quantiles, self.z
        up = np.interp(x, q, z)
        down = -np.interp(-x, -q[::-1], -z[::-1])
        return (0.5 * (up + down))[:, None]

    def decode_floats(self, block: np.ndarray) -> np.ndarray:
        return np.interp(block[:, 0], self.z, self.quantiles)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "quantiles": self.quantiles.tolist()}


class _Mode(_Numeric):
    """CTGAN's mode-specific normalisation: a Bayesian Gaussian mixture finds the column's modes;
    a value is (x - mu_k) / (4 sigma_k) for its mode k ("tanh"), then the one-hot of k.

    The mode is not drawn from the posterior as CTGAN does: it is the most probable mode among
    those whose +-3.96 sigma window holds the value (the most probable of all where none does,
    and the value is clipped to the window). So `transform` is a pure function (the same frame,
    the same vector, before and after a JSON round trip), and as `fit` widens each mode to hold
    its values, every fitted value decodes back without being clipped."""

    encoding = "mode"

    def __init__(self, name: str, dtype: Any, low: float, high: float, means: np.ndarray,
                 stds: np.ndarray, weights: np.ndarray) -> None:
        super().__init__(name, dtype, low, high)
        if not len(means) == len(stds) == len(weights):
            raise ValueError("means, stds and weights differ in length")
        self.means, self.stds, self.weights = means, stds, weights

    @classmethod
    def fit(cls, name: str, dtype: Any, x: np.ndarray, low: float, high: float, *,
            max_modes: int, seed: int, **_: Any) -> _Mode:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import BayesianGaussianMixture

        # Fitted in standard units: the mixture's covariance floor (reg_covar) is absolute, so
        # a column in millimetres and one in millions would otherwise get different modes.
        centre, scale = float(x.mean()), float(x.std()) or 1.0
        mixture = BayesianGaussianMixture(
            n_components=max(1, min(max_modes, len(x))),
            weight_concentration_prior_type="dirichlet_process",
            weight_concentration_prior=0.001, random_state=seed)  # CTGAN's (rdt's) settings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mixture.fit(((x - centre) / scale)[:, None])
        keep = mixture.weights_ > MODE_MIN_WEIGHT
        means = centre + scale * mixture.means_[keep, 0]
        stds = scale * np.sqrt(mixture.covariances_[keep].reshape(-1))
        weights = mixture.weights_[keep] / mixture.weights_[keep].sum()
        # A heavy tail's outliers lie beyond every mode's +-3.96 sigma window, where CTGAN clips
        # them (they come back at the window's edge); each mode is widened to hold the values
        # most probable under it, so every fitted value has a window and decodes back.
        mode = _log_posterior(x, means, stds, weights).argmax(axis=1)
        for k in np.unique(mode):
            reach = np.abs(x[mode == k] - means[k]).max() / (MODE_SCALE * MODE_CLIP)
            stds[k] = max(stds[k], reach * (1 + 1e-6))
        order = np.argsort(means)  # modes left to right: easier to read in the JSON
        return cls(name, dtype, low, high, means[order], stds[order], weights[order])

    def spans(self, start: int) -> list[Span]:
        return [Span(self.name, start, 1, "tanh"),
                Span(self.name, start + 1, len(self.means), "softmax")]

    def encode_floats(self, x: np.ndarray) -> np.ndarray:
        scaled = (x[:, None] - self.means) / (MODE_SCALE * self.stds)  # (N, K)
        log_post = _log_posterior(x, self.means, self.stds, self.weights)
        inside = np.abs(scaled) < MODE_CLIP
        log_post = np.where(inside | ~inside.any(axis=1, keepdims=True), log_post, -np.inf)
        mode = log_post.argmax(axis=1)
        rows = np.arange(len(x))
        block = np.zeros((len(x), 1 + len(self.means)))
        block[:, 0] = np.clip(scaled[rows, mode], -MODE_CLIP, MODE_CLIP)
        block[rows, 1 + mode] = 1.0
        return block

    def decode_floats(self, block: np.ndarray) -> np.ndarray:
        mode = block[:, 1:].argmax(axis=1)
        return np.clip(block[:, 0], -1.0, 1.0) * MODE_SCALE * self.stds[mode] + self.means[mode]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "means": self.means.tolist(), "stds": self.stds.tolist(),
                "weights": self.weights.tolist()}


def _log_posterior(x: np.ndarray, means: np.ndarray, stds: np.ndarray,
                   weights: np.ndarray) -> np.ndarray:
    """(N, K) log posterior of each mode, up to a per-row constant."""
    return np.log(weights) - np.log(stds) - 0.5 * ((x[:, None] - means) / stds) ** 2


NUMERIC: dict[str, type[_Standard] | type[_Quantile] | type[_Mode]] = {
    "standard": _Standard, "quantile": _Quantile, "mode": _Mode}
assert tuple(NUMERIC) == NUMERIC_ENCODINGS


def _column_from_dict(data: Any) -> _Column:
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ValueError(f"bad column entry {short(data)}")
    name, dtype = data["name"], _dtype_from_json(data["dtype"])
    if data["kind"] == "categorical":
        categories = _scalars(data["categories"])
        if isinstance(dtype, pd.CategoricalDtype) and list(dtype.categories) != categories:
            raise ValueError(f"column {name!r}: categories differ from its dtype's")
        column = _Categorical(name, dtype, categories)
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
        return _Standard(name, dtype, low, high, _float(data["mean"]),
                         float(_floats([data["std"]], positive=True)[0]))
    if encoding == "quantile":
        return _Quantile(name, dtype, low, high, _floats(data["quantiles"]))
    if encoding == "mode":
        return _Mode(name, dtype, low, high, _floats(data["means"]),
                     _floats(data["stds"], positive=True), _floats(data["weights"], positive=True))
    raise ValueError(f"column {name!r}: unknown encoding {short(encoding)}")


# --- the table ------------------------------------------------------------------------------------


class TableTransformer:
    """Fitted once on a table; `transform` encodes frames with the same columns, and
    `inverse_transform` decodes vectors into the original columns, order and dtypes."""

    def __init__(self, columns: Sequence[_Column], numeric_encoding: str) -> None:
        self._columns = list(columns)
        self.numeric_encoding = numeric_encoding
        self.columns: tuple[str, ...] = tuple(c.name for c in self._columns)
        self.categorical: tuple[str, ...] = tuple(
            c.name for c in self._columns if isinstance(c, _Categorical))
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
        columns: list[_Column] = []
        for name in names_:
            values = frame[name]
            if name in categorical:
                columns.append(_Categorical.fit(values))
                continue
            if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
                raise DataError(f"column {name!r} has dtype {values.dtype}, not numbers; list it "
                                "as categorical")
            _dtype_to_json(values.dtype, name)
            x = _Numeric.floats(values)
            integer = pd.api.types.is_integer_dtype(values)
            low, high = _Numeric.range_of(x, integer)
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
            if any(isinstance(c, _Numeric) and c.encoding != encoding for c in columns):
                raise ValueError(f"a numeric column's encoding differs from {encoding!r}")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise DataError(f"bad table transformer dict: {short(what)}") from None
        return cls(columns, encoding)

    def sdv_metadata(self) -> dict[str, Any]:
        """SDMetrics' single-table metadata: each column's sdtype."""
        def sdtype(column: _Column) -> str:
            if isinstance(column, _Numeric):
                return "numerical"
            plain_bool = (pd.api.types.is_bool_dtype(column.dtype)
                          and not isinstance(column.dtype, pd.CategoricalDtype))
            return "boolean" if plain_bool else "categorical"

        return {"columns": {c.name: {"sdtype": sdtype(c)} for c in self._columns}}
