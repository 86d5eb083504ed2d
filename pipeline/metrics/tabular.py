"""Scores of synthetic tables: decoded rows against real ones, in the original columns.

SDMetrics is the library the field scores synthetic tables with, so column shapes and column pair
trends are its QualityReport's two properties: shapes by its own classes, pair trends by them
(``quality``) or, at every evaluation of a run, by a vectorized copy of its rules that the tests
hold equal to them (``pair_trends``: its pandas group-bys cost ~10 ms a pair). What it lacks is
written here: a bound on the column pairs (its pair trends grow with the square of the columns),
and category coverage and KL (detection and the DCR share: privacy.py).
SDMetrics is imported inside the functions: it takes seconds to import, and points and images
never need it.

One job past 300 lines: the quality score and the exact copy of its pair-trend rules belong
together, since the tests hold one equal to the other.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

# Pair trends cost ~10 ms a pair at 10,000 rows (pandas group-bys, one pair at a time): 190
# pairs, every pair of 20 columns, keep one evaluation near 2-3 s; all 4,950 pairs of 100
# columns would take ~50 s (1,000 of them took 10.4 s, and moved pair_trends by 0.01).
MAX_PAIRS = 190
# A category the synthetic rows never produce costs p * log(p / eps) in KL(real || synth)
# instead of infinity: ~14 nats per unit of p, so it dominates the mean but stays finite.
CATEGORY_EPS = 1e-6


@contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's global generator for the block, then give the caller's state back.

    SDMetrics draws from it unseeded (ContingencySimilarity subsamples rows above 50,000);
    seeded here, identical samples score identically, and the caller's stream is untouched.
    """
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


# --- quality: column shapes and column pair trends -----------------------------------------------


@dataclass(frozen=True)
class PairSample:
    """The column pairs that pair trends are computed on: all of them up to ``MAX_PAIRS``, else
    that many drawn once from ``seed`` (the same pairs at every evaluation of a run)."""

    pairs: tuple[tuple[str, str], ...]
    total: int  # pairs of the table's columns
    seed: int

    @property
    def rule(self) -> str:
        """One line for the run's tags."""
        if len(self.pairs) == self.total:
            return f"all {self.total} column pairs"
        return (f"{len(self.pairs)} of {self.total} column pairs, drawn uniformly with seed "
                f"{self.seed}")


def column_pairs(columns: Sequence[str], max_pairs: int = MAX_PAIRS, seed: int = 0) -> PairSample:
    everything = list(itertools.combinations(columns, 2))
    if len(everything) <= max_pairs:
        return PairSample(tuple(everything), len(everything), seed)
    # Pairs, not columns, are drawn: each column then takes part in ~2 * max_pairs / n of them,
    # where drawing 20 columns would leave the other 80 out of the score entirely.
    pick = np.random.default_rng(seed).choice(len(everything), size=max_pairs, replace=False)
    return PairSample(tuple(everything[i] for i in sorted(pick)), len(everything), seed)


@cache
def _report_thresholds() -> tuple[float, float]:
    """QualityReport's real-data thresholds (correlation, association): in recent SDMetrics
    (0.32 here) only pairs whose real columns are related count in its pair trends; older
    versions have none (0), and every pair counts."""
    from sdmetrics.reports import QualityReport

    report = QualityReport()
    return (float(getattr(report, "real_correlation_threshold", 0.0)),
            float(getattr(report, "real_association_threshold", 0.0)))


def quality(real: pd.DataFrame, synth: pd.DataFrame, metadata: Mapping[str, Any], *,
            pairs: PairSample | None = None, seed: int = 0) -> dict[str, float]:
    """SDMetrics' QualityReport on one table: column_shapes (KSComplement for numbers,
    TVComplement for categories, averaged over columns), pair_trends (CorrelationSimilarity or
    ContingencySimilarity per pair, averaged over the pairs that meet the report's thresholds
    on the real side) and quality, their mean. All in [0, 1], higher is better.

    ``pairs`` (default: ``column_pairs`` of the metadata's columns, from ``seed``) bounds the
    pairs; with every pair the three numbers are QualityReport's own. pair_trends is NaN when
    no pair's real columns are related enough (nothing to preserve): quality is then
    column_shapes alone, as in the report.

    As in the report, a number paired with a category is binned by each side's own range
    (np.histogram_bin_edges of real, then of synth), so bins differ wherever the extremes do:
    two real samples of 2,000-10,000 rows score 0.86-0.96 in pair trends. Evaluator.floor
    gives the real-vs-real value to read a run's scores against. To score many synthetic
    tables against one real one, ``Quality`` computes the same numbers faster.
    """
    pairs = pairs if pairs is not None else column_pairs(list(metadata["columns"]), seed=seed)
    return _quality(real, synth, metadata, pairs.pairs, seed)


class Quality:
    """``quality`` against one real table, prepared once: ``Quality(real, metadata)(synth)``
    returns ``quality(real, synth, metadata)``.

    Only the pairs that can count are computed (``related``): the report averages the pairs
    whose real columns meet its thresholds, a test on the real rows alone, so a pair that fails
    it (weakly related columns, a constant column) adds nothing at any evaluation. On the
    benchmark's 20-column table 32 of 190 pairs pass (9 of the 190 drawn from 100 columns).
    Those are scored by ``pair_trends``, SDMetrics' rules vectorized: the quality score's cost
    falls from ~1.0 s (every pair, SDMetrics) to ~0.2 s (the related ones) to ~0.06 s (2,000
    rows, 20 columns). Where SDMetrics subsamples rows, or a column has another sdtype, its own
    code scores them.
    """

    def __init__(self, real: pd.DataFrame, metadata: Mapping[str, Any], *,
                 pairs: PairSample | None = None, seed: int = 0) -> None:
        self.real, self.metadata, self.seed = real, metadata, seed
        self.pairs = pairs if pairs is not None else column_pairs(list(metadata["columns"]),
                                                                  seed=seed)
        self.related = related_pairs(real, metadata, self.pairs)
        self.sdtypes = {name: meta["sdtype"] for name, meta in metadata["columns"].items()}

    def __call__(self, synth: pd.DataFrame) -> dict[str, float]:
        # Above the subsample size SDMetrics draws rows for each contingency pair from numpy's
        # global generator: every pair must then be computed, in order, for the same draws.
        if self.related is None or _subsamples(len(synth)):
            return _quality(self.real, synth, self.metadata, self.pairs.pairs, self.seed)
        if not set(self.sdtypes.values()) <= set(_SHAPES):
            return _quality(self.real, synth, self.metadata, self.related, self.seed)
        shapes = _column_shapes(self.real, synth, self.metadata, self.seed)
        return _combine(shapes, pair_trends(self.real, synth, self.sdtypes, self.related))


def related_pairs(real: pd.DataFrame, metadata: Mapping[str, Any],
                  pairs: PairSample) -> tuple[tuple[str, str], ...] | None:
    """The pairs of ``pairs`` whose real columns meet QualityReport's thresholds, decided by
    SDMetrics' own code (the real rows scored against themselves: where the real side fails,
    a pair scores NaN or is marked under the threshold, whatever the synthetic side). Every
    pair where the report has no thresholds (older SDMetrics); None where the real rows are
    subsampled (above ``num_rows_subsample``), which leaves the test to chance."""
    if _subsamples(len(real)):
        return None
    correlation_threshold, association_threshold = _report_thresholds()
    if correlation_threshold <= 0 and association_threshold <= 0:
        return pairs.pairs
    trends = _pair_trends()
    details = trends._generate_details(real, real, metadata, column_pairs=list(pairs.pairs))
    if not len(details):
        return ()
    meets = details["Meets Threshold?"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    counted = set(zip(details["Column 1"][meets], details["Column 2"][meets], strict=True))
    return tuple(pair for pair in pairs.pairs if pair in counted)


def _subsamples(rows: int) -> bool:
    """Whether SDMetrics' pair trends subsample a side of this many rows."""
    limit = _pair_trends().num_rows_subsample
    return bool(limit) and rows > limit


def _pair_trends() -> Any:
    """A ColumnPairTrends with QualityReport's thresholds."""
    from sdmetrics.reports.single_table._properties import ColumnPairTrends

    correlation_threshold, association_threshold = _report_thresholds()
    trends = ColumnPairTrends()
    trends.real_correlation_threshold = correlation_threshold
    trends.real_association_threshold = association_threshold
    return trends


def _column_shapes(real: pd.DataFrame, synth: pd.DataFrame, metadata: Mapping[str, Any],
                   seed: int) -> float:
    from sdmetrics.reports.single_table._properties import ColumnShapes

    with _numpy_seed(seed), warnings.catch_warnings():
        # scipy's KS test falls back to its asymptotic p-value on ties; the statistic is exact.
        warnings.filterwarnings("ignore", "ks_2samp: Exact calculation", RuntimeWarning)
        return float(ColumnShapes().get_score(real, synth, metadata))


def _quality(real: pd.DataFrame, synth: pd.DataFrame, metadata: Mapping[str, Any],
             pairs: Sequence[tuple[str, str]], seed: int) -> dict[str, float]:
    shapes = _column_shapes(real, synth, metadata, seed)
    trends = _pair_trends()
    with _numpy_seed(seed):
        # get_score would take every pair; _generate_details takes the pairs to compute, and
        # _compute_average is the report's own rule (pairs under a threshold do not count).
        trends.details = trends._generate_details(real, synth, metadata, column_pairs=list(pairs))
    return _combine(shapes, float(trends._compute_average()) if len(trends.details) else math.nan)


def _combine(shapes: float, pair_trends: float) -> dict[str, float]:
    both = [s for s in (shapes, pair_trends) if not math.isnan(s)]
    return {"column_shapes": shapes, "pair_trends": pair_trends,
            "quality": sum(both) / len(both) if both else math.nan}


# ColumnPairTrends' shape of each sdtype this module's tables have (SDMetrics' _sdtype_to_shape).
_SHAPES = {"numerical": "continuous", "categorical": "discrete", "boolean": "discrete"}


def pair_trends(real: pd.DataFrame, synth: pd.DataFrame, sdtypes: Mapping[str, str],
                pairs: Sequence[tuple[str, str]]) -> float:
    """ColumnPairTrends' score on ``pairs`` (ones that meet its real-side thresholds, as
    ``related_pairs`` picks them), equal to SDMetrics' own to rounding (tests/
    test_metrics_tabular.py) at ~0.1 ms a pair instead of ~7-10 ms.

    Written by hand for speed only: SDMetrics scores a pair with pandas group-bys, one pair at
    a time, which made the quality score (the table study's objective, at every evaluation)
    most of an evaluation's cost. The same rules: two numbers by 1 - |r_real - r_synth| / 2
    (Pearson; a constant synthetic column has no r and drops out), anything else by 1 - the
    total variation distance of the pair's joint frequencies, a number binned into
    numpy.histogram_bin_edges' 10 bins of its own side's range. NaN without a pair.
    """
    scores = []
    for a, b in pairs:
        if _SHAPES[sdtypes[a]] == _SHAPES[sdtypes[b]] == "continuous":
            r_real = _pearson(real[a].to_numpy(float), real[b].to_numpy(float))
            r_synth = _pearson(synth[a].to_numpy(float), synth[b].to_numpy(float))
            if not math.isnan(r_real) and not math.isnan(r_synth):
                scores.append(1.0 - abs(r_real - r_synth) / 2.0)
            continue
        mixed = _SHAPES[sdtypes[a]] != _SHAPES[sdtypes[b]]
        codes = []
        for name in (a, b):
            binned = mixed and _SHAPES[sdtypes[name]] == "continuous"
            sides = [_bins(frame[name]) if binned else frame[name].to_numpy(dtype=object)
                     for frame in (real, synth)]
            joint, uniques = pd.factorize(np.concatenate(sides), use_na_sentinel=False)
            codes.append((joint[: len(real)], joint[len(real):], len(uniques)))
        (ra, sa, na), (rb, sb, nb) = codes
        p = np.bincount(ra * nb + rb, minlength=na * nb) / len(real)
        q = np.bincount(sa * nb + sb, minlength=na * nb) / len(synth)
        scores.append(1.0 - np.abs(p - q).sum() / 2.0)
    return float(np.mean(scores)) if scores else math.nan


def _bins(values: pd.Series) -> np.ndarray:
    """ColumnPairTrends' discretization of one side's numbers (its own range, 10 bins)."""
    x = values.to_numpy(dtype=float)
    return np.digitize(x, np.histogram_bin_edges(x[~np.isnan(x)])).astype(object)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """scipy's pearsonr on the rows without NaN; NaN where either column is constant (where
    SDMetrics' CorrelationSimilarity refuses the pair)."""
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    xm, ym = x - x.mean(), y - y.mean()
    r = float(np.dot(xm / np.linalg.norm(xm), ym / np.linalg.norm(ym)))
    return max(-1.0, min(1.0, r))


# --- categories ----------------------------------------------------------------------------------


def _frequencies(values: pd.Series) -> pd.Series:
    """Share of each category present (a pandas category dtype also lists unused ones)."""
    counts = values.value_counts(dropna=False)
    counts = counts[counts > 0]
    index = pd.Index(counts.index.to_numpy(dtype=object), dtype=object)
    return pd.Series(counts.to_numpy(dtype=np.float64) / counts.sum(), index=index)


def category_metrics(real: pd.DataFrame, synth: pd.DataFrame,
                     categorical: Sequence[str]) -> dict[str, float]:
    """Mode collapse in the categorical columns, each column weighted equally.

    category_coverage: the mean over columns of the share of the real categories that the
    synthetic rows contain (1 = none missing). category_kl: the mean of KL(real || synth) of the
    category frequencies, in nats, the synthetic ones smoothed by ``CATEGORY_EPS``.
    """
    if not categorical:
        raise ValueError("no categorical columns: the category metrics do not apply")
    coverages, kls = [], []
    for column in categorical:
        p, q = _frequencies(real[column]), _frequencies(synth[column])
        coverages.append(float(q.reindex(p.index, fill_value=0.0).gt(0).mean()))
        support = p.index.union(q.index)
        p_all = p.reindex(support, fill_value=0.0).to_numpy()
        q_all = q.reindex(support, fill_value=0.0).to_numpy()
        q_smooth = (q_all + CATEGORY_EPS) / (1.0 + CATEGORY_EPS * len(support))
        present = p_all > 0
        kls.append(float((p_all[present] * np.log(p_all[present] / q_smooth[present])).sum()))
    return {"category_coverage": float(np.mean(coverages)), "category_kl": float(np.mean(kls))}
