from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.tables.read import MAX_TABLE_BYTES, read_table, split_rows
from pipeline.tables.shipped import SHIPPED, write_shipped


def small_frame(n: int = 100) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "colour": rng.choice(["red", "green", "blue"], n),
        "weight": rng.normal(70.0, 10.0, n),
        "year": rng.choice([2007, 2008, 2009], n),  # 3 values in 100 rows: codes
        "count": rng.integers(0, 1000, n),  # many values: a number
        "member": rng.choice([True, False], n),
        "grade": rng.choice([1, 2, 3, 4], n),
    })


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_kinds_order_digest_of_a_csv(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    small_frame().to_csv(path, index=False)
    table = read_table(path)
    assert list(table.frame.columns) == ["colour", "weight", "year", "count", "member", "grade"]
    assert table.categorical == ("colour", "year", "member", "grade")
    assert table.frame["member"].dtype == bool and table.frame["count"].dtype == np.int64
    assert table.label is None and table.source == str(path.resolve())
    assert table.digest == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    pd.testing.assert_frame_equal(table.frame, small_frame(), check_exact=False)


def test_columns_label_and_named_categorical(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    small_frame().to_csv(path, index=False)
    # Asked out of order: the frame keeps file order, and the label joins even when not asked.
    table = read_table(path, columns=["grade", "weight"], label="count", categorical=["weight"])
    assert list(table.frame.columns) == ["weight", "count", "grade"]
    assert table.categorical == ("weight", "count", "grade")  # count: the label, so categorical
    assert table.label == "count"


def test_integer_rule_needs_few_values_and_many_rows_each(tmp_path: Path) -> None:
    # 4 values in 60 rows is not below 5% of the rows (3), so "grade" is a number here.
    path = tmp_path / "t.csv"
    small_frame(60).to_csv(path, index=False)
    assert "grade" not in read_table(path).categorical
    assert "grade" in read_table(path, categorical=["grade"]).categorical


def test_tsv_parquet_npy_read_the_same(tmp_path: Path) -> None:
    frame = small_frame()
    frame.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    with_category = frame.assign(colour=frame["colour"].astype("category"))
    with_category.to_parquet(tmp_path / "t.parquet", index=False)
    tsv = read_table(tmp_path / "t.tsv").frame
    parquet = read_table(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(tsv, frame, check_exact=False)
    assert isinstance(parquet.frame["colour"].dtype, pd.CategoricalDtype)
    assert parquet.categorical == ("colour", "year", "member", "grade")

    array = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32)
    np.save(tmp_path / "t.npy", array)
    npy = read_table(tmp_path / "t.npy")
    assert list(npy.frame.columns) == ["c0", "c1", "c2"] and npy.categorical == ()
    np.testing.assert_array_equal(npy.frame.to_numpy(), array)


def test_npy_header_bomb_is_refused_fast(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npy"
    with path.open("wb") as handle:  # a header that claims 10**12 rows, then 4 rows of data
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 3)})
        handle.write(np.zeros((4, 3)).tobytes())
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"bomb\.npy.*\(1000000000000, 3\).*96 bytes"):
        read_table(path)
    assert time.perf_counter() - start < 1.0


def test_npy_must_be_2d_numbers(tmp_path: Path) -> None:
    np.save(tmp_path / "flat.npy", np.arange(5))
    with pytest.raises(DataError, match=r"flat\.npy.*2-D"):
        read_table(tmp_path / "flat.npy")
    np.save(tmp_path / "text.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(DataError, match=r"text\.npy.*numbers"):
        read_table(tmp_path / "text.npy")


def write_csv(text: str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / "bad.csv"
        path.write_text(text)
        return path
    return write


def write_bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path
    return write


def frame_file(frame: pd.DataFrame, name: str = "bad.csv") -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / name
        if name.endswith(".parquet"):
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        return path
    return write


rng = np.random.default_rng(2)
GOOD = "a,b\n1,x\n2,y\n3,x\n"
BAD: dict[str, tuple[Callable[[Path], Path], dict[str, Any], list[str]]] = {
    "missing file": (lambda folder: folder / "absent.csv", {}, ["absent.csv", "no such file"]),
    "unknown suffix": (write_bytes("t.xlsx", b"PK"), {}, ["t.xlsx", ".csv, .tsv, .parquet, .npy"]),
    "corrupt parquet": (write_bytes("bad.parquet", b"not parquet at all"), {},
                        ["bad.parquet", "corrupt"]),
    "not utf-8": (write_bytes("bad.csv", b"a,b\n\xff\xfe,\x80\n"), {}, ["bad.csv", "corrupt"]),
    "zero bytes": (write_bytes("bad.csv", b""), {}, ["bad.csv", "empty"]),
    "header only": (write_csv("a,b\n"), {}, ["bad.csv", "empty (0 rows"]),
    "unknown column": (write_csv(GOOD), {"columns": ["a", "nope"]},
                       ["data.columns", "nope", "[a, b]"]),
    "unknown categorical": (write_csv(GOOD), {"categorical": ["zz"]},
                            ["data.categorical", "zz", "[a, b]"]),
    "unknown label": (write_csv(GOOD), {"label": "y"}, ["data.label", "[y]", "[a, b]"]),
    "categorical left out": (write_csv(GOOD), {"columns": ["a"], "categorical": ["b"]},
                             ["data.categorical", "[b]", "leaves out"]),
    "nan": (write_csv("a,b,c\n1,x,1.5\n,y,2.5\n3,,3.5\n4,z,4.5\n"), {},
            ["2 rows", "'a' (1 NaN/None", "'b' (1 NaN/None", "data.dropna=true"]),
    "inf": (write_csv("a,b\n1,inf\n2,-inf\n3,1.0\n"), {}, ["2 rows", "'b' (0 NaN/None, 2 inf)"]),
    "all rows dropped": (write_csv("a,b\n1,\n,2\n"), {"dropna": True}, ["bad.csv", "no rows"]),
    "constant": (write_csv("a,b,k\n1,x,7\n2,y,7\n3,x,7\n"), {},
                 ["[k]", "one value", "data.columns=[a, b]"]),
    "date strings": (frame_file(pd.DataFrame({
        "day": pd.date_range("2020-01-01", periods=30).strftime("%Y-%m-%d"),
        "v": np.arange(30.0)})), {}, ["[day]", "dates", "data.columns=[v]"]),
    "datetime dtype": (frame_file(pd.DataFrame({
        "when": pd.date_range("2020-01-01", periods=30, freq="h"), "v": np.arange(30.0)}),
        "bad.parquet"), {}, ["bad.parquet", "[when]", "dates", "data.columns=[v]"]),
    "free text": (frame_file(pd.DataFrame({
        "note": [f"comment number {i}" for i in range(80)], "v": rng.normal(size=80)})),
        {}, ["[note]", "free text", "data.columns=[v]"]),
    "over the bound": (write_csv("a,b\n" + "1234567,x\n" * 150_000), {"max_bytes": 1024**2},
                       ["bad.csv", "is 1.4 MB, over the 1.0 MB bound"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_naming_file_and_column(case: str, tmp_path: Path) -> None:
    make, kwargs, expected = BAD[case]
    folder = tmp_path / "in"
    folder.mkdir()
    path = make(folder)
    before = tree(tmp_path)
    with pytest.raises(DataError) as caught:
        read_table(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 700, message
    assert path.name in message, message
    for part in expected:
        assert part in message, (part, message)
    assert tree(tmp_path) == before  # nothing written, nothing removed


def test_long_column_lists_are_cut(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    pd.DataFrame({f"a_rather_long_column_name_{i}": [i, i + 1] for i in range(40)}).to_csv(
        path, index=False)
    with pytest.raises(DataError) as caught:
        read_table(path, columns=["nope"])
    assert str(caught.value).count("a_rather_long_column_name_") < 10
    assert "..." in str(caught.value)


def test_dropna_drops_rows_and_restores_integers(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n1,x,1.5\n,y,2.5\n3,,3.5\n4,z,4.5\n5,x,inf\n")
    table = read_table(path, dropna=True)
    assert table.frame["a"].tolist() == [1, 4] and table.frame["a"].dtype == np.int64
    assert table.frame["b"].tolist() == ["x", "z"] and table.frame["c"].tolist() == [1.5, 4.5]
    assert table.frame.index.tolist() == [0, 1]


def test_dropna_gives_back_booleans(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("flag,v\nTrue,1.5\n,2.5\nFalse,3.5\nTrue,0.5\n")  # read as objects
    table = read_table(path, dropna=True)
    assert table.frame["flag"].dtype == bool and table.frame["flag"].tolist() == [True, False, True]
    assert table.categorical == ("flag",)


def test_nan_outside_the_chosen_columns_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,\n2,y\n3,x\n")
    assert read_table(path, columns=["a"]).frame["a"].tolist() == [1, 2, 3]


def test_weekday_and_month_names_are_categories_not_dates(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"day": ["sun", "mon", "may", "rain"] * 10, "v": np.arange(40.0)}).to_csv(
        path, index=False)
    assert read_table(path).categorical == ("day",)


def test_split_rows_is_a_seeded_partition() -> None:
    frame = pd.DataFrame({"v": np.arange(10)}, index=np.arange(100, 110))
    train, test = split_rows(frame, 0.3, seed=0)
    assert (len(train), len(test)) == (7, 3)
    assert sorted([*train.index, *test.index]) == list(frame.index)
    assert (train["v"] + 100).tolist() == train.index.tolist()  # rows keep their labels
    again, _ = split_rows(frame, 0.3, seed=0)
    other, _ = split_rows(frame, 0.3, seed=1)
    assert again.index.tolist() == train.index.tolist()
    assert other.index.tolist() != train.index.tolist()


@pytest.mark.parametrize(("n", "fraction"), [(3, 0.5), (10, 0.05), (10, 0.95), (10, 1.0)])
def test_split_rows_refuses_tiny_parts(n: int, fraction: float) -> None:
    with pytest.raises(DataError, match="test_fraction"):
        split_rows(pd.DataFrame({"v": range(n)}), fraction, seed=0)


def test_bound_is_two_gigabytes() -> None:
    assert MAX_TABLE_BYTES == 2 * 1024**3


def test_shipped_penguins_reads_with_sensible_kinds(tmp_path: Path) -> None:
    path = write_shipped("penguins", tmp_path / "sub" / "penguins.csv")
    table = read_table(path, label="species")
    assert table.frame.shape == (333, 8)
    assert table.categorical == ("species", "island", "sex", "year")
    assert table.frame["body_mass_g"].dtype == np.int64
    assert sorted(table.frame["species"].unique()) == ["Adelie", "Chinstrap", "Gentoo"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["penguins.csv"]  # no leftovers


@pytest.mark.parametrize(("name", "shape", "categorical"), [
    ("fair", (6366, 9), ("rate_marriage", "religious", "educ", "occupation", "occupation_husb")),
    ("seattle_weather", (1461, 5), ("weather",)),
    ("breast_cancer", (569, 31), ("diagnosis",)),
])
def test_shipped_tables_load_offline(name: str, shape: tuple[int, int],
                                     categorical: tuple[str, ...], tmp_path: Path) -> None:
    table = read_table(write_shipped(name, tmp_path / f"{name}.parquet"))
    assert table.frame.shape == shape and table.categorical == categorical
    if name == "breast_cancer":
        assert table.frame["diagnosis"].value_counts().to_dict() == {"benign": 357,
                                                                     "malignant": 212}


def test_write_shipped_refuses_unknown_names_and_suffixes(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"iris.*penguins"):
        write_shipped("iris", tmp_path / "x.csv")
    with pytest.raises(DataError, match=r"\.xlsx"):
        write_shipped("penguins", tmp_path / "x.xlsx")
    assert list(tmp_path.iterdir()) == []
    assert set(SHIPPED) == {"penguins", "fair", "seattle_weather", "breast_cancer"}
