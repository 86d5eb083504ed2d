"""A table's columns, one at a time: the base class of a fitted column encoding, the categorical
(one-hot) encoding, and the dtypes and categories as JSON, checked when loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.tables.read import names, short

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


def dtype_to_json(dtype: Any, column: str) -> dict[str, Any]:
    if isinstance(dtype, pd.CategoricalDtype):
        return {"category": {"categories": [_scalar(v, column) for v in dtype.categories],
                             "categories_dtype": dtype_to_json(dtype.categories.dtype, column),
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


def dtype_from_json(data: Any) -> Any:
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
        inner = dtype_from_json(spec["categories_dtype"])
        categories = pd.Index(scalars(spec["categories"]), dtype=inner)
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


def scalars(values: Any) -> list[str | bool | int | float]:
    if not isinstance(values, list) or not values:
        raise ValueError("categories must be a non-empty list")
    for value in values:
        if not isinstance(value, (str, bool, int, float)) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"bad category {short(repr(value))}")
    if not pd.Index(values, dtype=object).is_unique:
        raise ValueError("categories repeat")
    return values


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true/false, got {short(repr(value))}")
    return value


# --- one column -----------------------------------------------------------------------------------


class Column:
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
                "dtype": dtype_to_json(self.dtype, self.name)}


class Categorical(Column):
    kind = "categorical"

    def __init__(self, name: str, dtype: Any, categories: list[Any]) -> None:
        super().__init__(name, dtype)
        self.categories = categories
        self._index = pd.Index(categories, dtype=object)
        self._values = np.empty(len(categories), dtype=object)
        self._values[:] = categories

    @classmethod
    def fit(cls, values: pd.Series) -> Categorical:
        name = str(values.name)
        dtype_to_json(values.dtype, name)  # refuse datetimes etc. now, not when saving
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

