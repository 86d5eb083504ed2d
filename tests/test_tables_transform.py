from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.tables.columns import Span
from pipeline.tables.numeric import NUMERIC_ENCODINGS
from pipeline.tables.read import read_table
from pipeline.tables.shipped import write_shipped
from pipeline.tables.transform import TableTransformer

CATEGORICAL = ("colour", "member", "grade", "size", "city", "score")
FLOATS = ("weight", "ratio")


def mixed(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "colour": rng.choice(["red", "green", "blue"], n).astype(object),
        "level": rng.integers(-100, 121, n).astype(np.int8),
        "member": rng.choice([True, False], n),
        "weight": rng.normal(70.0, 10.0, n),
        "grade": rng.choice([3, 1, 2], n),
        "size": pd.Categorical(rng.choice(["S", "M", "L"], n), categories=["S", "M", "L", "XL"],
                               ordered=True),  # XL is never used: it must survive anyway
        "count": rng.integers(0, 10_000, n),
        "city": pd.array(rng.choice(["Oslo", "Lima"], n), dtype="string"),
        "ratio": rng.uniform(0.0, 1.0, n).astype(np.float32),
        "score": rng.choice([0.5, 1.5], n),
    })


@pytest.fixture(scope="module", params=NUMERIC_ENCODINGS)
def fitted(request: pytest.FixtureRequest) -> tuple[TableTransformer, pd.DataFrame]:
    frame = mixed()
    return TableTransformer.fit(frame, CATEGORICAL, request.param, max_modes=5, seed=0), frame


def test_round_trip_keeps_values_dtypes_order(
        fitted: tuple[TableTransformer, pd.DataFrame]) -> None:
    transformer, frame = fitted
    encoded = transformer.transform(frame)
    assert encoded.dtype == np.float32 and encoded.shape == (len(frame), transformer.dim)
    back = transformer.inverse_transform(encoded)
    assert list(back.columns) == list(frame.columns)
    assert back.dtypes.to_dict() == frame.dtypes.to_dict()
    for name in frame.columns:
        if name in FLOATS:
            tolerance = 1e-5 * float(frame[name].std())
            np.testing.assert_allclose(back[name], frame[name], rtol=0, atol=tolerance)
        else:  # categories and integers: exact
            pd.testing.assert_series_equal(back[name], frame[name], check_exact=True)
    assert list(back["size"].cat.categories) == ["S", "M", "L", "XL"] and back["size"].cat.ordered


def test_json_round_trip_gives_the_same_encoding(
        fitted: tuple[TableTransformer, pd.DataFrame]) -> None:
    transformer, frame = fitted
    data = transformer.to_dict()
    assert data["version"] == 1 and data["numeric_encoding"] == transformer.numeric_encoding
    loaded = TableTransformer.from_dict(json.loads(json.dumps(data, allow_nan=False)))
    assert loaded.spans == transformer.spans and loaded.dim == transformer.dim
    assert loaded.columns == transformer.columns and loaded.categorical == CATEGORICAL
    np.testing.assert_array_equal(loaded.transform(frame), transformer.transform(frame))
    samples = np.random.default_rng(5).normal(size=(50, transformer.dim))
    pd.testing.assert_frame_equal(loaded.inverse_transform(samples),
                                  transformer.inverse_transform(samples))
    assert loaded.to_dict() == data


def test_spans_tile_the_vector(fitted: tuple[TableTransformer, pd.DataFrame]) -> None:
    transformer, frame = fitted
    end = 0
    for span in transformer.spans:
        assert span.start == end and span.width >= 1
        end += span.width
    assert end == transformer.dim
    assert [s.column for s in transformer.spans if s.activation != "tanh"] == list(frame.columns)
    widths = {s.column: s.width for s in transformer.spans if s.column in CATEGORICAL}
    assert widths == {"colour": 3, "member": 2, "grade": 3, "size": 4, "city": 2, "score": 2}
    assert all(s.activation == "softmax" for s in transformer.spans if s.column in CATEGORICAL)
    numeric = [s for s in transformer.spans if s.column not in CATEGORICAL]
    if transformer.numeric_encoding == "mode":
        assert [s.activation for s in numeric] == ["tanh", "softmax"] * 4
    else:
        assert [(s.activation, s.width) for s in numeric] == [("none", 1)] * 4
    # One-hot blocks hold exactly one 1 per row.
    encoded = transformer.transform(frame)
    for span in transformer.spans:
        if span.activation == "softmax":
            block = encoded[:, span.start:span.start + span.width]
            assert set(np.unique(block)) <= {0.0, 1.0} and (block.sum(axis=1) == 1).all()


def test_categories_in_a_stable_order() -> None:
    frame = pd.DataFrame({"c": ["b", "a", "c", "a"], "g": [3, 1, 2, 1]})
    transformer = TableTransformer.fit(frame, ["c", "g"])
    np.testing.assert_array_equal(transformer.transform(frame), [
        [0, 1, 0, 0, 0, 1], [1, 0, 0, 1, 0, 0], [0, 0, 1, 0, 1, 0], [1, 0, 0, 1, 0, 0]])
    columns = transformer.to_dict()["columns"]
    assert [c["categories"] for c in columns] == [["a", "b", "c"], [1, 2, 3]]


def test_standard_is_mean_and_std() -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]})
    encoded = TableTransformer.fit(frame, []).transform(frame)
    np.testing.assert_allclose(encoded[:, 0], (frame["x"] - 2.5) / np.sqrt(1.25), rtol=1e-6)


def test_quantile_maps_a_skewed_column_to_a_normal() -> None:
    x = np.random.default_rng(0).exponential(3.0, 2000)
    frame = pd.DataFrame({"x": x})
    transformer = TableTransformer.fit(frame, [], "quantile")
    z = transformer.transform(frame)[:, 0].astype(np.float64)
    assert (np.argsort(z, kind="stable") == np.argsort(x, kind="stable")).all()  # monotone
    assert abs(np.median(z)) < 0.01 and abs(z.mean()) < 0.02 and abs(z.std() - 1.0) < 0.05
    assert abs(pd.Series(x).skew()) > 1.5 and abs(pd.Series(z).skew()) < 0.05
    assert len(transformer.to_dict()["columns"][0]["quantiles"]) == 1000
    np.testing.assert_allclose(transformer.inverse_transform(z[:, None])["x"], x, atol=1e-4)


def test_mode_finds_two_modes_of_a_bimodal_column() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-5.0, 0.5, 200), rng.normal(5.0, 1.0, 200)])
    frame = pd.DataFrame({"x": x})
    transformer = TableTransformer.fit(frame, [], "mode", seed=0)
    column = transformer.to_dict()["columns"][0]
    heavy = [(m, s) for m, s, w in zip(column["means"], column["stds"], column["weights"],
                                       strict=True) if w > 0.05]
    assert len(heavy) == 2
    (left, left_std), (right, right_std) = heavy
    assert abs(left + 5.0) < 0.2 and abs(right - 5.0) < 0.3
    assert 0.4 < left_std < 0.8 and 0.8 < right_std < 1.4  # the prior widens them a little
    encoded = transformer.transform(frame)
    assert transformer.spans == (Span("x", 0, 1, "tanh"), Span("x", 1, len(column["means"]),
                                                               "softmax"))
    mode = encoded[:, 1:].argmax(axis=1)
    means = np.array(column["means"])
    assert (np.abs(means[mode[:200]] + 5.0) < 0.2).all()  # each cluster picks its own mode
    assert (np.abs(means[mode[200:]] - 5.0) < 0.3).all()
    assert np.abs(encoded[:, 0]).max() <= 0.99
    np.testing.assert_allclose(transformer.inverse_transform(encoded)["x"], x, atol=1e-5)


def test_mode_round_trips_a_heavy_tail() -> None:
    # 60 lies ~20 sigma beyond the bulk: CTGAN would clip it to the mode's 4-sigma edge.
    x = np.append(np.random.default_rng(0).normal(0.0, 1.0, 300), 60.0)
    frame = pd.DataFrame({"x": x})
    transformer = TableTransformer.fit(frame, [], "mode", max_modes=3, seed=0)
    back = transformer.inverse_transform(transformer.transform(frame))["x"]
    np.testing.assert_allclose(back, x, atol=1e-4)


@pytest.mark.parametrize("encoding", NUMERIC_ENCODINGS)
def test_decoding_clips_to_the_fitted_range(encoding: str) -> None:
    frame = pd.DataFrame({"small": np.array([-3, 0, 5, 120, 7, 9], dtype=np.int8),
                          "f": [0.5, 1.0, 2.0, 4.0, 3.0, 2.5]})
    transformer = TableTransformer.fit(frame, [], encoding, max_modes=2)
    # Every scalar far out, with every choice of mode: values beyond the range come back as
    # its edges; an int8 never wraps.
    widths = [s.width for s in transformer.spans if s.activation == "softmax"] or [1]
    rows = []
    for sign in (1e6, -1e6):
        for k in range(max(widths)):
            row = np.full(transformer.dim, sign)
            for span in transformer.spans:
                if span.activation == "softmax":
                    row[span.start:span.start + span.width] = 0.0
                    row[span.start + min(k, span.width - 1)] = 1.0
            rows.append(row)
    back = transformer.inverse_transform(np.array(rows))
    assert back["small"].dtype == np.int8
    assert back["small"].max() == 120 and back["small"].min() == -3
    assert back["f"].max() == 4.0 and back["f"].min() == 0.5


def test_transform_refuses_unknown_categories_nan_and_missing_columns() -> None:
    frame = mixed(60)
    transformer = TableTransformer.fit(frame, CATEGORICAL)
    purple = frame.assign(colour=["purple", *frame["colour"][1:]])
    with pytest.raises(DataError, match=r"'colour'.*not seen.*purple"):
        transformer.transform(purple)
    with pytest.raises(DataError, match=r"'weight'.*1 rows are NaN"):
        transformer.transform(frame.assign(weight=[np.nan, *frame["weight"][1:]]))
    with pytest.raises(DataError, match=r"missing \[count\], unexpected \[extra\]"):
        transformer.transform(frame.drop(columns=["count"]).assign(extra=1))
    with pytest.raises(DataError, match="width"):
        transformer.inverse_transform(np.zeros((3, transformer.dim + 1)))
    with pytest.raises(DataError, match="NaN"):
        transformer.inverse_transform(np.full((3, transformer.dim), np.nan))


def test_fit_refuses_what_it_cannot_encode() -> None:
    frame = pd.DataFrame({"t": ["a", "b"], "x": [1.0, 2.0],
                          "when": pd.to_datetime(["2020-01-01", "2020-01-02"])})
    with pytest.raises(DataError, match=r"'t'.*categorical"):
        TableTransformer.fit(frame[["t", "x"]], [])
    with pytest.raises(DataError, match=r"'when'.*datetime64"):
        TableTransformer.fit(frame[["when", "x"]], ["when"])
    with pytest.raises(DataError, match=r"\[nope\]"):
        TableTransformer.fit(frame[["t", "x"]], ["t", "nope"])
    with pytest.raises(DataError, match="standard, quantile, mode"):
        TableTransformer.fit(frame[["t", "x"]], ["t"], "minmax")


def broken(data: dict[str, Any], change: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    columns = data["columns"]
    numeric = next(c for c in columns if c["kind"] == "numeric")
    categorical = next(c for c in columns if c["kind"] == "categorical")
    if change == "format":
        data["format"] = "pickle"
    elif change == "version":
        data["version"] = 2
    elif change == "no columns key":
        del data["columns"]
    elif change == "dtype":
        numeric["dtype"] = {"numpy": "datetime64[ns]"}
    elif change == "dtype garbage":
        numeric["dtype"] = {"numpy": "not a dtype"}
    elif change == "std":
        numeric["std"] = -1.0
    elif change == "infinite mean":
        numeric["mean"] = float("inf")
    elif change == "min above max":
        numeric["min"], numeric["max"] = numeric["max"], numeric["min"]
    elif change == "no categories":
        categorical["categories"] = []
    elif change == "repeated categories":
        categorical["categories"] = ["a", "a"]
    elif change == "object category":
        categorical["categories"] = [{"__class__": "os.system"}]
    elif change == "encoding":
        numeric["encoding"] = "exec"
    elif change == "kind":
        numeric["kind"] = "image"
    elif change == "categories unlike the dtype":
        categorical["dtype"] = {"numpy": "float64"}  # text categories cannot be floats
    elif change == "range beyond the dtype":
        numeric["dtype"], numeric["max"] = {"numpy": "int8"}, 1000.0  # would wrap when decoded
    elif change == "repeated names":
        columns.append(copy.deepcopy(columns[0]))
    return data


@pytest.mark.parametrize("change", [
    "format", "version", "no columns key", "dtype", "dtype garbage", "std", "infinite mean",
    "min above max", "no categories", "repeated categories", "object category", "encoding",
    "kind", "categories unlike the dtype", "range beyond the dtype", "repeated names"])
def test_from_dict_refuses_a_bad_dict(change: str) -> None:
    frame = pd.DataFrame({"c": ["a", "b", "a"], "x": [1.0, 2.0, 4.0]})
    data = TableTransformer.fit(frame, ["c"]).to_dict()
    TableTransformer.from_dict(data)  # the unbroken dict loads
    with pytest.raises(DataError, match="bad table transformer dict") as caught:
        TableTransformer.from_dict(broken(data, change))
    assert "\n" not in str(caught.value)


def test_from_dict_refuses_non_mappings() -> None:
    with pytest.raises(DataError, match="bad table transformer dict"):
        TableTransformer.from_dict([1, 2])  # type: ignore[arg-type]


def test_sdv_metadata() -> None:
    transformer = TableTransformer.fit(mixed(30), CATEGORICAL)
    assert transformer.sdv_metadata() == {"columns": {
        "colour": {"sdtype": "categorical"}, "level": {"sdtype": "numerical"},
        "member": {"sdtype": "boolean"}, "weight": {"sdtype": "numerical"},
        "grade": {"sdtype": "categorical"}, "size": {"sdtype": "categorical"},
        "count": {"sdtype": "numerical"}, "city": {"sdtype": "categorical"},
        "ratio": {"sdtype": "numerical"}, "score": {"sdtype": "categorical"}}}


def test_penguins_round_trip_through_a_file(tmp_path: Path) -> None:
    # Two of the four measurements: each mixture fit costs a few tenths of a second.
    table = read_table(write_shipped("penguins", tmp_path / "p.csv"), label="species",
                       columns=["island", "bill_length_mm", "body_mass_g", "sex", "year"])
    assert table.categorical == ("species", "island", "sex", "year")
    transformer = TableTransformer.fit(table.frame, table.categorical, "mode", seed=0)
    back = transformer.inverse_transform(transformer.transform(table.frame))
    for name in table.frame.columns:
        if name.startswith("bill"):
            np.testing.assert_allclose(back[name], table.frame[name], atol=1e-4)
        else:
            pd.testing.assert_series_equal(back[name], table.frame[name], check_exact=True)
