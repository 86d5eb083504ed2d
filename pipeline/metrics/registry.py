"""The metric registry: every metric the Evaluator can compute, grouped in families.

A family is a set of metrics computed together from one prepared real side (PRDC's four share a
k-NN pass, the three mode metrics one nearest-centre pass). Each says which datasets it applies
to, how to prepare its real side once per run, and how to score generated samples (its scorer,
in scorers.py). Config validation, the study objective check, the Evaluator and compare's columns
all read this list: adding a metric is one entry here and its scorer (plus its own code and tests).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pipeline.dataset import TableParts
from pipeline.metrics.scorers import (
    NDB_BINS,
    Reference,
    Scorer,
    categories,
    classes,
    dcr,
    detection,
    fid,
    kid,
    modes,
    ndb,
    prdc,
    quality,
)

VAL_PREFIX = "val/"  # metrics of an evaluation are logged as val/<name>, step = epoch
EVAL_SECONDS = "eval_seconds"  # logged beside the metrics: what an evaluation cost
MIN_SAMPLES = 10  # the k-NN metrics need more points than their k (5)


def val_key(name: str) -> str:
    return f"{VAL_PREFIX}{name}"


class DatasetTraits(Protocol):
    """What applicability depends on: a loaded Dataset or a registry entry both have these.

    Some table families also depend on the table's columns (categorical ones, a label), which
    only a loaded Dataset knows (its ``table``). A registry entry has no ``table``: there such a
    family may apply, so that config and study validation, which see names only, accept its
    metrics; the Evaluator checks again with the loaded table (see ``_table_may``).
    """

    @property
    def kind(self) -> str: ...

    @property
    def has_centres(self) -> bool: ...


@dataclass(frozen=True)
class Metric:
    name: str
    better: Literal["higher", "lower"]
    main: bool = False  # a column of compare's table and a line of the comparison figure
    objective: bool = True  # False: logged only, a study may not optimize it


@dataclass(frozen=True)
class Family:
    metrics: tuple[Metric, ...]
    applies: Callable[[DatasetTraits], bool]
    prepare: Callable[[Reference], Scorer]
    min_samples: int = MIN_SAMPLES
    lacks: str = ""  # why it may not apply, for the error that names its metrics

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)


def _any(traits: DatasetTraits) -> bool:
    return True


def _not_tables(traits: DatasetTraits) -> bool:
    return traits.kind != "table"


def _images(traits: DatasetTraits) -> bool:
    return traits.kind == "images"


def _mixtures(traits: DatasetTraits) -> bool:
    return traits.has_centres


def _tables(traits: DatasetTraits) -> bool:
    return traits.kind == "table"


def _table_may(traits: DatasetTraits, need: Callable[[TableParts], bool]) -> bool:
    """A table family that needs something of the table's columns: decided by a loaded
    Dataset's ``table``; a registry entry has none, and there the family may apply."""
    if traits.kind != "table":
        return False
    parts = getattr(traits, "table", None)
    return parts is None or need(parts)


def _categorical_tables(traits: DatasetTraits) -> bool:
    return _table_may(traits, lambda parts: bool(parts.transformer.categorical))


def _labelled(traits: DatasetTraits) -> bool:
    """Class labels: images have them (an image folder only when sorted into class
    sub-folders), a table when data.label names its label column. A registry entry has no
    labels to look at: there the family may apply."""
    if traits.kind == "images":
        return getattr(traits, "num_classes", 0) is not None
    return _table_may(traits, lambda parts: parts.label is not None)


FAMILIES: tuple[Family, ...] = (
    Family((Metric("fid", "lower", main=True),), _any, fid),
    # KID: torchmetrics' unbiased estimate of MMD^2 (cubic polynomial kernel), the mean over
    # KID_SUBSETS subsets, reported raw, not x1000 as papers often print it. Being unbiased it
    # can come out slightly below 0 when the two sets are alike: near 0 means indistinguishable.
    # Not on tables: a second kernel distance in the encoded space FID already measures, which
    # the table field does not use, and most of a full table evaluation (0.33 of 0.53 s at 20
    # columns, 1.1 of 1.9 s at 100).
    Family((Metric("kid", "lower"),), _not_tables, kid, lacks="not on tables"),
    Family((Metric("precision", "higher"), Metric("recall", "higher"),
            Metric("density", "higher"), Metric("coverage", "higher")), _any, prdc),
    # PacGAN / VEEGAN protocol: needs the known mixture centres.
    Family((Metric("modes_covered", "higher", main=True),
            Metric("high_quality", "higher", main=True),
            Metric("reverse_kl", "lower", main=True),
            Metric("pacgan_score", "higher")), _mixtures, modes, lacks="no mixture centres"),
    # Need class labels: the feature classifier's predictions, or a table's decoded label.
    Family((Metric("classes_covered", "higher", main=True),
            Metric("class_kl", "lower", main=True)), _labelled, classes,
           lacks="no class labels: images, or a table with data.label"),
    # NDB's k-means bins need many dimensions and twice as many samples as bins.
    Family((Metric("ndb_fraction", "lower"),), _images, ndb, min_samples=2 * NDB_BINS,
           lacks="images only"),
    # Tables (tabular.py): SDMetrics' quality report on decoded rows against the held-out split.
    Family((Metric("column_shapes", "higher"), Metric("pair_trends", "higher"),
            Metric("quality", "higher", main=True)), _tables, quality, lacks="tables only"),
    Family((Metric("category_coverage", "higher", main=True), Metric("category_kl", "lower")),
           _categorical_tables, categories, lacks="no categorical columns"),
    Family((Metric("detection", "higher"), Metric("detection_auc", "lower")), _tables,
           detection, lacks="tables only"),
    # Lower = fewer rows nearer the training split than the held-out one; 0.5 is the ideal, and
    # going under it only means worse samples: logged, never optimized (see dcr_share).
    Family((Metric("dcr_share", "lower", objective=False),), _tables, dcr, lacks="tables only"),
)

METRICS: dict[str, Metric] = {m.name: m for family in FAMILIES for m in family.metrics}
MAIN_METRICS: tuple[str, ...] = tuple(name for name, m in METRICS.items() if m.main)


def light_metrics_at(epoch: int, last_epoch: int, full_every: int | None,
                     light: set[str] | None) -> set[str] | None:
    """The metrics an evaluation after ``epoch`` computes: None (every metric) every
    ``full_every`` epochs and at the last, else the light set (eval.full_every_n_epochs)."""
    full = full_every is None or epoch % full_every == 0 or epoch == last_epoch
    return None if full else light


def applicable_metrics(traits: DatasetTraits) -> tuple[str, ...]:
    """Every metric that can be computed for this dataset, in registry order."""
    return tuple(n for f in FAMILIES if f.applies(traits) for n in f.names)


def resolve_metrics(traits: DatasetTraits, requested: Sequence[str] | None) -> tuple[str, ...]:
    """The requested names, checked (None means every applicable metric), in registry order."""
    allowed = applicable_metrics(traits)
    if requested is None:
        return allowed
    if isinstance(requested, str):  # a bare string would otherwise be split into letters
        requested = [requested]
    unknown = [name for name in requested if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric name(s) {unknown}; allowed names are {list(METRICS)}")
    inapplicable = [name for name in requested if name not in allowed]
    if inapplicable:
        reasons = dict.fromkeys(f.lacks for f in FAMILIES
                                if f.lacks and set(f.names) & set(inapplicable))
        why = f" ({'; '.join(reasons)})" if reasons else ""
        raise ValueError(f"metric(s) {inapplicable} do not apply to this {traits.kind} dataset"
                         f"{why}; allowed names here are {list(allowed)}")
    if not requested:
        raise ValueError(f"no metrics requested; allowed names here are {list(allowed)}")
    return tuple(name for name in allowed if name in set(requested))


def check_settings(traits: DatasetTraits, n_samples: int,
                   requested: Sequence[str] | None) -> tuple[str, ...]:
    """The metrics to compute; ValueError for settings that cannot work (too few samples)."""
    resolved = resolve_metrics(traits, requested)
    for family in FAMILIES:
        wanted = [n for n in family.names if n in resolved]
        if wanted and n_samples < family.min_samples:
            raise ValueError(
                f"n_samples={n_samples} is too few for {', '.join(wanted)}: use at least "
                f"{family.min_samples} or leave {'it' if len(wanted) == 1 else 'them'} out of "
                f"the metrics"
            )
    return resolved


def objective_keys(traits: DatasetTraits, requested: Sequence[str] | None) -> list[str]:
    """The val/ keys an evaluation logs that a study may optimize (not the logged-only ones)."""
    names = [n for n in resolve_metrics(traits, requested) if METRICS[n].objective]
    return [val_key(n) for n in (*names, EVAL_SECONDS)]
