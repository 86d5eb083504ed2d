"""Table metrics on tiny frames with known answers, and the Evaluator on a small table Dataset."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.dataset import Dataset, TableParts
from pipeline.metrics import privacy, registry, tabular
from pipeline.metrics.evaluator import Evaluator
from pipeline.tables.transform import TableTransformer

METADATA = {"columns": {"x": {"sdtype": "numerical"}, "y": {"sdtype": "numerical"},
                        "colour": {"sdtype": "categorical"}, "size": {"sdtype": "categorical"},
                        "flag": {"sdtype": "boolean"}, "count": {"sdtype": "numerical"}}}
CATEGORICAL = ("colour", "size", "flag")


def table(n: int, seed: int) -> pd.DataFrame:
    """y follows x (r ~ 0.95) and colour is x's quartile, so two pairs have strong trends."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({
        "x": x,
        "y": 0.9 * x + 0.3 * rng.normal(size=n),
        "colour": np.array(list("abcd"))[np.digitize(x, [-0.67, 0.0, 0.67])],
        "size": np.array(["S", "M", "L"])[rng.integers(0, 3, n)],
        "flag": rng.random(n) < 0.3,
        "count": rng.integers(0, 50, n),
    })


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    return table(400, seed=0)


# --- quality ------------------------------------------------------------------------------------


def test_a_table_against_itself_is_perfect(real: pd.DataFrame) -> None:
    assert tabular.quality(real, real, METADATA) == {
        "column_shapes": 1.0, "pair_trends": 1.0, "quality": 1.0}
    cats = tabular.category_metrics(real, real, CATEGORICAL)
    assert cats["category_coverage"] == 1.0
    assert cats["category_kl"] == pytest.approx(0.0, abs=1e-9)
    det = privacy.detection(real, real, METADATA)
    assert det == {"detection": 1.0, "detection_auc": 0.5}  # every fold clipped at chance


def test_quality_is_sdmetrics_quality_report(real: pd.DataFrame) -> None:
    """Below the pair bound the three numbers are QualityReport's own (its thresholds too)."""
    from sdmetrics.reports import QualityReport

    synth = table(300, seed=1)
    synth["y"] = synth["y"] * 0.5 + 0.5  # weaker x-y trend, another shape
    report = QualityReport()
    report.generate({"t": real}, {"t": synth}, {"tables": {"t": METADATA}}, verbose=False)
    props = report.get_properties().set_index("Property")["Score"]
    ours = tabular.quality(real, synth, METADATA)
    assert ours["column_shapes"] == pytest.approx(props["Column Shapes"], abs=1e-12)
    assert ours["pair_trends"] == pytest.approx(props["Column Pair Trends"], abs=1e-12)
    assert ours["quality"] == pytest.approx(report.get_score(), abs=1e-12)
    assert ours["pair_trends"] < 0.95


def with_unrelated(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns whose pairs the report never counts: a constant number, a constant category
    (undefined correlation or association) and noise (under the real-side thresholds)."""
    rng = np.random.default_rng(len(frame))
    return frame.assign(const=3.0, kind="k", noise=rng.normal(size=len(frame)))


META_UNRELATED = {"columns": {**METADATA["columns"], "const": {"sdtype": "numerical"},
                              "kind": {"sdtype": "categorical"},
                              "noise": {"sdtype": "numerical"}}}


def test_prepared_quality_computes_only_the_pairs_that_count(real: pd.DataFrame) -> None:
    """Quality leaves out the pairs that fail the report's real-side test and scores exactly
    what quality() and QualityReport score."""
    from sdmetrics.reports import QualityReport

    real_u, synth = with_unrelated(real), with_unrelated(table(300, seed=1))
    synth["y"] = synth["y"] * 0.5 + 0.5
    scorer = tabular.Quality(real_u, META_UNRELATED)
    assert scorer.pairs.total == 36
    # x-y (r ~ 0.95), x-colour and y-colour (colour is x's quartile) are related; every pair
    # with const, kind or noise is not.
    assert scorer.related is not None
    assert set(scorer.related) == {("x", "y"), ("x", "colour"), ("y", "colour")}
    ours = scorer(synth)
    assert ours == tabular.quality(real_u, synth, META_UNRELATED)
    report = QualityReport()
    report.generate({"t": real_u}, {"t": synth}, {"tables": {"t": META_UNRELATED}},
                    verbose=False)
    props = report.get_properties().set_index("Property")["Score"]
    assert ours["column_shapes"] == pytest.approx(props["Column Shapes"], abs=1e-12)
    assert ours["pair_trends"] == pytest.approx(props["Column Pair Trends"], abs=1e-12)
    assert ours["quality"] == pytest.approx(report.get_score(), abs=1e-12)


def test_prepared_quality_with_no_related_pair_has_no_pair_trends(real: pd.DataFrame) -> None:
    meta = {"columns": {c: META_UNRELATED["columns"][c] for c in ("x", "const", "noise")}}
    frame = with_unrelated(real)[["x", "const", "noise"]]
    scorer = tabular.Quality(frame, meta)
    assert scorer.related == ()
    scores = scorer(frame)
    assert math.isnan(scores["pair_trends"]) and scores["quality"] == scores["column_shapes"]
    assert math.isnan(tabular.quality(frame, frame, meta)["pair_trends"])


def test_prepared_quality_computes_every_pair_where_sdmetrics_subsamples(
        real: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above num_rows_subsample each contingency pair draws rows from numpy's generator: every
    pair is computed, in order, so that the draws (and the scores) stay quality()'s."""
    from sdmetrics.reports.single_table._properties import base

    monkeypatch.setattr(base, "DEFAULT_NUM_ROWS_SUBSAMPLE", 200)
    real_u, synth = with_unrelated(real), with_unrelated(table(300, seed=1))
    assert tabular.Quality(real_u, META_UNRELATED).related is None  # 400 real rows: subsampled
    small = real_u.iloc[:150]
    scorer = tabular.Quality(small, META_UNRELATED)
    assert scorer.related is not None  # 150 real rows are not, 300 synthetic ones are
    assert scorer(synth) == tabular.quality(small, synth, META_UNRELATED, seed=0)
    assert tabular.Quality(real_u, META_UNRELATED, seed=4)(synth) == tabular.quality(
        real_u, synth, META_UNRELATED, seed=4)


def test_shuffled_columns_keep_shapes_and_lose_pair_trends(real: pd.DataFrame) -> None:
    rng = np.random.default_rng(5)
    shuffled = pd.DataFrame({c: real[c].to_numpy()[rng.permutation(len(real))] for c in real})
    scores = tabular.quality(real, shuffled, METADATA)
    assert scores["column_shapes"] == 1.0  # the same values in every column
    # x-y (r ~ 0.95) and x-colour are the pairs over the report's thresholds: with r ~ 0 the
    # correlation similarity is ~1 - 0.95 / 2.
    assert scores["pair_trends"] < 0.6
    assert scores["quality"] == pytest.approx((1.0 + scores["pair_trends"]) / 2)


def unlike(real: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Synthetic rows that differ from ``real`` in many ways at once: other shapes and trends,
    a category the real rows lack, pandas category and plain bool dtypes, a shifted range."""
    synth = table(300, seed=seed)
    rng = np.random.default_rng(seed)
    synth["y"] = synth["y"] * rng.uniform(-1, 1) + rng.normal()
    synth["x"] = synth["x"] * rng.uniform(0.5, 2)
    synth.loc[rng.random(300) < 0.1, "colour"] = "e"
    synth["size"] = synth["size"].astype("category")
    synth["count"] = rng.integers(10, 90, 300)
    return synth


@pytest.mark.parametrize("seed", range(6))
def test_prepared_pair_trends_are_sdmetrics_own(real: pd.DataFrame, seed: int) -> None:
    """The hand-written pair trends (Quality's fast path) against ColumnPairTrends on the same
    pairs: numbers with numbers, numbers with categories (binned per side), categories with
    booleans, each synthetic table unlike the real one in another way."""
    synth = unlike(real, seed)
    scorer = tabular.Quality(real, METADATA)
    assert scorer.related is not None and len(scorer.related) >= 3
    assert scorer(synth) == pytest.approx(
        tabular._quality(real, synth, METADATA, scorer.related, 0), abs=1e-12)


def test_a_constant_synthetic_number_drops_out_of_pair_trends_as_in_sdmetrics(
        real: pd.DataFrame) -> None:
    synth = unlike(real, 0).assign(y=1.5)  # x-y has no correlation on the synthetic side
    scorer = tabular.Quality(real, METADATA)
    ours = scorer(synth)
    assert ours == pytest.approx(tabular._quality(real, synth, METADATA, scorer.related, 0),
                                 abs=1e-12)
    assert not math.isnan(ours["pair_trends"])


def test_column_pairs_are_bounded_and_seeded() -> None:
    few = tabular.column_pairs([f"c{i}" for i in range(20)])
    assert len(few.pairs) == few.total == 190
    assert few.rule == "all 190 column pairs"
    columns = [f"c{i}" for i in range(100)]
    many = tabular.column_pairs(columns, seed=3)
    assert many.total == 4950 and len(set(many.pairs)) == tabular.MAX_PAIRS
    assert all(columns.index(a) < columns.index(b) for a, b in many.pairs)
    assert many == tabular.column_pairs(columns, seed=3)
    assert many.pairs != tabular.column_pairs(columns, seed=4).pairs
    assert many.rule.startswith("190 of 4950 column pairs") and "seed 3" in many.rule


# --- categories --------------------------------------------------------------------------------


def test_a_missing_category_is_uncovered(real: pd.DataFrame) -> None:
    synth = real.copy()
    synth.loc[synth["colour"] == "d", "colour"] = "a"  # 'd' (x's top quartile) never generated
    scores = tabular.category_metrics(synth=synth, real=real, categorical=CATEGORICAL)
    assert scores["category_coverage"] == pytest.approx((3 / 4 + 1 + 1) / 3)
    assert scores["category_kl"] > 0.5  # ~p_d * log(p_d / eps) / 3 columns


def test_category_kl_has_its_known_value() -> None:
    real = pd.DataFrame({"flag": [True, True, False, False]})
    synth = pd.DataFrame({"flag": [True, True, True, True]})
    scores = tabular.category_metrics(real, synth, ["flag"])
    eps = tabular.CATEGORY_EPS
    q_true, q_false = (1 + eps) / (1 + 2 * eps), eps / (1 + 2 * eps)
    assert scores["category_coverage"] == 0.5
    assert scores["category_kl"] == pytest.approx(
        0.5 * math.log(0.5 / q_true) + 0.5 * math.log(0.5 / q_false), rel=1e-12)


def test_category_metrics_count_used_categories_only() -> None:
    """A pandas category dtype lists categories no row has: they are not 'real categories'."""
    dtype = pd.CategoricalDtype(["a", "b", "c"])
    real = pd.DataFrame({"c": pd.Series(["a", "b", "a"], dtype=dtype)})
    synth = pd.DataFrame({"c": pd.Series(["a", "a", "a"], dtype=dtype)})
    assert tabular.category_metrics(real, synth, ["c"])["category_coverage"] == 0.5
    with pytest.raises(ValueError, match="no categorical columns"):
        tabular.category_metrics(real, synth, [])


# --- detection ---------------------------------------------------------------------------------


def test_detection_is_sdmetrics_logistic_detection(real: pd.DataFrame) -> None:
    """The same folds and classifier: SDMetrics' score when it draws its folds from seed 3.
    (Numbers and string categories only: SDMetrics drops booleans and takes ints as numbers.)"""
    from sdmetrics.single_table import LogisticDetection

    cols = ["x", "y", "colour", "size"]
    meta = {"columns": {c: METADATA["columns"][c] for c in cols}}
    synth = table(300, seed=1)[cols]
    synth["x"] += 0.4
    state = np.random.get_state()
    np.random.seed(3)
    expected = LogisticDetection.compute(real[cols], synth, meta)
    np.random.set_state(state)
    scores = privacy.detection(real[cols], synth, meta, seed=3)
    assert scores["detection"] == pytest.approx(expected, abs=1e-9)
    assert 0.0 < scores["detection"] < 1.0
    assert scores["detection_auc"] == pytest.approx(1 - scores["detection"] / 2)


def test_detection_tells_shifted_rows_and_not_fresh_ones(real: pd.DataFrame) -> None:
    fresh = privacy.detection(real, table(400, seed=2), METADATA)
    assert fresh["detection_auc"] < 0.6 and fresh["detection"] > 0.8
    shifted = table(400, seed=2)
    shifted["x"] += 3.0
    far = privacy.detection(real, shifted, METADATA)
    assert far["detection_auc"] > 0.95 and far["detection"] < 0.1
    assert privacy.detection(real, shifted, METADATA) == far  # seeded folds


def test_detection_takes_a_category_the_real_rows_lack(real: pd.DataFrame) -> None:
    synth = table(400, seed=2)
    synth.loc[:9, "colour"] = "e"  # LogisticDetection's encoder, fitted on real rows, fails here
    scores = privacy.detection(real, synth, METADATA)
    assert 0.5 <= scores["detection_auc"] < 0.7


# --- dcr ---------------------------------------------------------------------------------------


def gaussian(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 5))


def test_dcr_share_copies_and_fresh_rows() -> None:
    train, test = gaussian(400, 0), gaussian(400, 1)
    copies = train[np.random.default_rng(2).integers(0, 400, 1000)]
    assert privacy.dcr_share(train, test, copies) == 1.0
    assert privacy.dcr_share(train, test, gaussian(1000, 3)) == pytest.approx(0.5, abs=0.05)


def test_dcr_share_subsamples_the_larger_split() -> None:
    """Training split twice the held-out one: fresh rows stay at ~0.5, and copies of all the
    training rows are caught for the sampled half only: ~0.5 + 0.5 / 2."""
    train, test = gaussian(800, 0), gaussian(400, 1)
    assert privacy.dcr_share(train, test, gaussian(1000, 3)) == pytest.approx(0.5, abs=0.05)
    copies = train[np.random.default_rng(2).integers(0, 800, 1000)]
    assert privacy.dcr_share(train, test, copies) == pytest.approx(0.75, abs=0.05)


def test_dcr_share_counts_ties_half() -> None:
    """One-hot rows of a 3-category column: most fresh rows have twins in both splits."""
    rng = np.random.default_rng(0)

    def onehot(n: int) -> np.ndarray:
        return np.eye(3)[rng.integers(0, 3, n)].astype(np.float32)

    share = privacy.dcr_share(onehot(300), onehot(300), onehot(1000))
    assert share == pytest.approx(0.5, abs=0.01)


# --- the Evaluator on a table ------------------------------------------------------------------

TABLE_METRICS = ["fid", "precision", "recall", "density", "coverage", "classes_covered",
                 "class_kl", "column_shapes", "pair_trends", "quality", "category_coverage",
                 "category_kl", "detection", "detection_auc", "dcr_share"]
TABLE_ONLY = ["fid", *TABLE_METRICS[5:]]


def table_dataset(train: pd.DataFrame, test: pd.DataFrame, categorical: tuple[str, ...],
                  label: str | None = None) -> Dataset:
    transformer = TableTransformer.fit(pd.concat([train, test]), categorical)
    # Codes in reverse order on purpose: the metrics read each category's code off the data.
    order = sorted(set(train[label]) | set(test[label]), reverse=True) if label else []

    def codes(frame: pd.DataFrame) -> torch.Tensor | None:
        if label is None:
            return None
        return torch.from_numpy(pd.Categorical(frame[label], categories=order).codes
                                .astype(np.int64))

    def encode(frame: pd.DataFrame) -> torch.Tensor:
        return torch.from_numpy(transformer.transform(frame))

    return Dataset(name="toy", kind="table", train=encode(train), test=encode(test),
                   train_labels=codes(train), test_labels=codes(test),
                   num_classes=len(order) if label else None,
                   table=TableParts(transformer, train, test, label))


@pytest.fixture(scope="module")
def toy() -> Dataset:
    return table_dataset(table(300, seed=10), table(300, seed=11), CATEGORICAL, label="colour")


@pytest.fixture(scope="module")
def toy_evaluator(toy: Dataset) -> Evaluator:
    return Evaluator(toy, n_samples=300)


@pytest.fixture(scope="module")
def toy_tables_only(toy: Dataset) -> Evaluator:
    """FID and the table metrics: KID's 50 subsets and PRDC cost more than all of them here."""
    return Evaluator(toy, n_samples=300, metrics=TABLE_ONLY)


def encode(ds: Dataset, frame: pd.DataFrame) -> torch.Tensor:
    assert ds.table is not None
    return torch.from_numpy(ds.table.transformer.transform(frame))


def test_table_evaluator_scores_fresh_rows_well(toy: Dataset, toy_evaluator: Evaluator) -> None:
    assert toy_evaluator.metrics == tuple(TABLE_METRICS)
    assert toy_evaluator.feature_name == "table-encoding"
    assert toy_evaluator.pair_rule == "all 15 column pairs"
    scores = toy_evaluator.evaluate(encode(toy, table(300, seed=12)))
    assert list(scores) == TABLE_METRICS
    assert all(math.isfinite(v) for v in scores.values())
    assert scores["quality"] > 0.85 and scores["column_shapes"] > 0.85
    assert scores["category_coverage"] == 1.0 and scores["category_kl"] < 0.05
    assert scores["classes_covered"] == 4 and scores["class_kl"] < 0.05
    assert scores["detection_auc"] < 0.65
    assert scores["dcr_share"] == pytest.approx(0.5, abs=0.1)


def test_table_real_side_is_the_held_out_split(toy: Dataset,
                                               toy_tables_only: Evaluator) -> None:
    assert toy.test is not None
    held_out = toy_tables_only.evaluate(toy.test)
    assert held_out["fid"] == pytest.approx(0.0, abs=1e-6)  # the very rows of the real side
    assert held_out["quality"] > 0.99  # float32 encoding moves floats by ~1e-7
    assert held_out["class_kl"] == pytest.approx(0.0, abs=1e-12)
    assert toy_tables_only.evaluate(toy.train)["fid"] > 100 * max(held_out["fid"], 1e-9)


def test_table_floor_is_the_training_split(toy: Dataset, toy_evaluator: Evaluator) -> None:
    floor = toy_evaluator.floor()
    assert list(floor) == TABLE_METRICS
    assert all(math.isfinite(v) for v in floor.values())
    assert floor["column_shapes"] > 0.85 and floor["category_coverage"] == 1.0
    # SDMetrics bins a number by each side's own range before its contingency with a category,
    # so two real samples of 300 rows differ on x-colour and y-colour: pair_trends 0.72 here.
    assert floor["quality"] > 0.75
    # The "generator" is the training split itself, as large as the held-out one: all copies.
    assert floor["dcr_share"] == 1.0
    assert toy_evaluator.floor() == floor


def test_a_collapsed_table_generator_scores_badly(toy: Dataset,
                                                  toy_tables_only: Evaluator) -> None:
    noise = 0.01 * torch.randn(300, toy.dim, generator=torch.Generator().manual_seed(0))
    bad = toy_tables_only.evaluate(toy.train[:1] + noise)  # one training row, decoded 300 times
    assert bad["classes_covered"] == 1
    assert bad["category_coverage"] < 0.5
    assert bad["quality"] < 0.6
    assert bad["detection_auc"] > 0.9


def test_rows_are_decoded_once_and_table_families_are_skippable(
        toy: Dataset, toy_tables_only: Evaluator, monkeypatch: pytest.MonkeyPatch) -> None:
    assert toy.table is not None and toy.test is not None
    transformer = toy.table.transformer
    calls = []
    decode = transformer.inverse_transform

    def counting(x: np.ndarray) -> pd.DataFrame:
        calls.append(len(x))
        return decode(x)

    monkeypatch.setattr(transformer, "inverse_transform", counting)
    toy_tables_only.evaluate(toy.test)
    assert calls == [300]  # five families read the decoded rows
    assert list(toy_tables_only.evaluate(toy.test, only={"fid"})) == ["fid"]
    assert calls == [300]  # a light evaluation without table metrics decodes nothing
    assert list(toy_tables_only.evaluate(toy.test, only={"quality"})) == [
        "column_shapes", "pair_trends", "quality"]
    assert calls == [300, 300]


@dataclass(frozen=True)
class TableEntry:
    """What config and study validation see: a registry entry, with no table loaded."""

    kind: str = "table"
    has_centres: bool = False


def test_applicability_is_decided_by_the_loaded_table() -> None:
    numeric = table(100, seed=0)[["x", "y", "count"]]
    plain = table_dataset(numeric, table(100, seed=1)[["x", "y", "count"]], ())
    # Names only: every table metric may apply (the loaded table decides).
    assert set(TABLE_METRICS) <= set(registry.applicable_metrics(TableEntry()))
    here = registry.applicable_metrics(plain)
    assert "category_coverage" not in here and "classes_covered" not in here
    assert {"quality", "detection", "dcr_share", "fid"} <= set(here)
    assert "kid" not in registry.applicable_metrics(TableEntry()) and "kid" not in here
    with pytest.raises(ValueError, match=r"\['category_coverage'\] do not apply to this table "
                       r"dataset \(no categorical columns\)"):
        Evaluator(plain, n_samples=50, metrics=["category_coverage"])
    with pytest.raises(ValueError, match=r"no class labels: images, or a table with data.label"):
        Evaluator(plain, n_samples=50, metrics=["classes_covered"])
    with pytest.raises(ValueError, match=r"\(tables only\)"):
        registry.resolve_metrics(TableEntry(kind="points"), ["quality"])
    # dcr_share is logged, never an objective.
    keys = registry.objective_keys(TableEntry(), None)
    assert "val/quality" in keys and "val/dcr_share" not in keys
