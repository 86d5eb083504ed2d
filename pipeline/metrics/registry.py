"""The metric registry: every metric the Evaluator can compute, grouped in families.

A family is a set of metrics computed together from one prepared real side (PRDC's four share a
k-NN pass, the three mode metrics one nearest-centre pass). Each says which datasets it applies
to, how to prepare its real side once per run, and how to score generated samples. Config
validation, the study objective check, the Evaluator and compare's columns all read this list:
adding a metric is one entry here (plus its own code and tests).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # runtime import would tie pipeline.metrics to pipeline.data
    import pandas as pd

    from pipeline.dataset import Dataset, TableParts
    from pipeline.metrics.tabular import PairSample

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
class Reference:
    """The real side of a run's evaluations, prepared once: all rows embedded, a fixed subset."""

    dataset: Dataset
    # Every real row in feature space: the training split, or for tables the held-out split
    # (a generator that copies its training rows must not score as perfect).
    feats: Tensor
    subset: Tensor  # n_samples of them, drawn once from the seed (size-dependent metrics)
    seed: int


@dataclass(frozen=True)
class Fakes:
    """Generated samples in feature space: all rows (FID, KID) and the first n_samples."""

    feats: Tensor
    head: Tensor
    logits: Tensor | None  # the feature classifier's logits of ``head`` (images)
    decode: Callable[[Tensor], pd.DataFrame] | None = None  # tables: encoded rows -> columns

    @cached_property
    def rows(self) -> pd.DataFrame:
        """``head`` decoded into the table's columns: once per evaluation, however many table
        families read it (a Fakes lives for one evaluation)."""
        if self.decode is None:
            raise ValueError("these samples are not rows of a table (no decoder)")
        return self.decode(self.head)


Scorer = Callable[[Fakes], dict[str, float]]


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


# --- how each family prepares and scores --------------------------------------------------------

KID_SUBSET_SIZE = 1000
# Half torchmetrics' default of 100: each subset costs three 1000 x 1000 kernel matrices (~12 ms
# on 2 idle cores, ~90 ms on busy ones), and an average of subsets that all come from the same
# 2,500 real rows gains little from more draws: the finite real sample bounds its variance.
KID_SUBSETS = 50
NDB_BINS = 100


def _fid(ref: Reference) -> Scorer:
    from torchmetrics.image.fid import FrechetInceptionDistance

    from pipeline.metrics.features import PrecomputedFeatures

    fid = FrechetInceptionDistance(feature=PrecomputedFeatures(ref.feats.shape[1]),
                                   reset_real_features=False).to(ref.feats.device)
    # float64: FID subtracts large second moments, and the real side is fed only once.
    fid.update(ref.feats.double(), real=True)

    def score(fakes: Fakes) -> dict[str, float]:
        fid.reset()  # drops the fake side only (reset_real_features=False)
        fid.update(fakes.feats.double(), real=False)
        return {"fid": float(fid.compute())}

    return score


def _kid(ref: Reference) -> Scorer:
    from torchmetrics.image.kid import KernelInceptionDistance

    from pipeline.metrics.features import PrecomputedFeatures

    with warnings.catch_warnings():
        # It warns that it buffers all features: it gets n_samples real rows, by design.
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(
            feature=PrecomputedFeatures(ref.feats.shape[1]), subsets=KID_SUBSETS,
            subset_size=min(KID_SUBSET_SIZE, len(ref.subset)), reset_real_features=False,
        ).to(ref.feats.device)
    kid.update(ref.subset, real=True)

    def score(fakes: Fakes) -> dict[str, float]:
        kid.reset()
        kid.update(fakes.feats, real=False)
        kid.subset_size = min(KID_SUBSET_SIZE, len(ref.subset), len(fakes.feats))
        # KID draws its subsets from the global RNG: seed it locally so that identical samples
        # score identically, without disturbing the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ref.seed)
            kid_mean, _ = kid.compute()
        return {"kid": float(kid_mean)}

    return score


def _prdc(ref: Reference) -> Scorer:
    from pipeline.metrics.prdc import PRDC

    prdc = PRDC(ref.subset)
    return lambda fakes: prdc.score(fakes.head)


def _modes(ref: Reference) -> Scorer:
    from pipeline.metrics.modes import mixture_mode_metrics

    centres, std = ref.dataset.centres, ref.dataset.std
    assert centres is not None and std is not None
    return lambda fakes: mixture_mode_metrics(fakes.head, centres, std)


def _classes(ref: Reference) -> Scorer:
    from pipeline.metrics.modes import class_metrics

    ds = ref.dataset
    if ds.kind == "table":
        return _table_classes(ref)
    assert ds.train_labels is not None and ds.num_classes is not None
    counts = torch.bincount(ds.train_labels, minlength=ds.num_classes)
    real_probs = counts.double() / counts.sum()
    num_classes = ds.num_classes

    def score(fakes: Fakes) -> dict[str, float]:
        assert fakes.logits is not None
        return class_metrics(fakes.logits.argmax(dim=1), real_probs, num_classes)

    return score


def _ndb(ref: Reference) -> Scorer:
    from pipeline.metrics.ndb import NDB

    ndb = NDB(ref.feats, NDB_BINS, seed=ref.seed)
    return lambda fakes: {"ndb_fraction": ndb.score(fakes.head)}


# Tables: decoded synthetic rows against the held-out split, in the original columns.


def table_parts(dataset: Dataset) -> TableParts:
    if dataset.table is None:
        raise ValueError(f"table dataset {dataset.name!r} has no table parts (dataset.table)")
    return dataset.table


def table_pairs(dataset: Dataset, seed: int) -> PairSample:
    """The column pairs pair_trends uses for this table (the run logs their rule)."""
    from pipeline.metrics.tabular import column_pairs

    return column_pairs(table_parts(dataset).transformer.columns, seed=seed)


def _table_classes(ref: Reference) -> Scorer:
    """The classes of synthetic rows are their decoded label column: no classifier needed."""
    import pandas as pd

    from pipeline.metrics.modes import class_metrics

    ds, parts = ref.dataset, table_parts(ref.dataset)
    label = parts.label
    if (label is None or ds.train_labels is None or ds.test_labels is None
            or ds.num_classes is None):
        raise ValueError(f"table dataset {ds.name!r}: class metrics need data.label and the "
                         "label codes (train_labels, test_labels, num_classes)")
    # Which code each category has, read off the splits and their codes: whatever order the
    # loader numbered the categories in.
    values = np.concatenate([parts.train_frame[label].to_numpy(dtype=object),
                             parts.test_frame[label].to_numpy(dtype=object)])
    codes = torch.cat([ds.train_labels, ds.test_labels]).cpu().numpy()
    if len(values) != len(codes):
        raise ValueError(f"table dataset {ds.name!r}: {len(codes)} label codes for "
                         f"{len(values)} rows of {label!r}")
    pairs = pd.DataFrame({"value": values, "code": codes}).drop_duplicates()
    if pairs["value"].duplicated().any():
        raise ValueError(f"label column {label!r}: a category has more than one class code")
    index = pd.Index(pairs["value"].to_numpy(), dtype=object)
    code_of = pairs["code"].to_numpy()
    counts = torch.bincount(ds.test_labels.cpu(), minlength=ds.num_classes)
    real_probs = counts.double() / counts.sum()
    num_classes = ds.num_classes

    def score(fakes: Fakes) -> dict[str, float]:
        where = index.get_indexer(fakes.rows[label].to_numpy(dtype=object))
        if (where < 0).any():
            raise ValueError(f"decoded label column {label!r} holds a category with no class code")
        return class_metrics(torch.from_numpy(code_of[where]), real_probs, num_classes)

    return score


def _quality(ref: Reference) -> Scorer:
    from pipeline.metrics.tabular import Quality

    parts = table_parts(ref.dataset)
    score = Quality(parts.test_frame, parts.transformer.sdv_metadata(),
                    pairs=table_pairs(ref.dataset, ref.seed), seed=ref.seed)
    return lambda fakes: score(fakes.rows)


def _categories(ref: Reference) -> Scorer:
    from pipeline.metrics.tabular import category_metrics

    parts = table_parts(ref.dataset)
    real, categorical = parts.test_frame, parts.transformer.categorical
    return lambda fakes: category_metrics(real, fakes.rows, categorical)


def _detection(ref: Reference) -> Scorer:
    from pipeline.metrics.tabular import detection

    parts = table_parts(ref.dataset)
    metadata, real = parts.transformer.sdv_metadata(), parts.test_frame
    return lambda fakes: detection(real, fakes.rows, metadata, seed=ref.seed)


def _dcr(ref: Reference) -> Scorer:
    from pipeline.metrics.tabular import dcr_share

    ds, transformer = ref.dataset, table_parts(ref.dataset).transformer
    if ds.test is None:
        raise ValueError(f"table dataset {ds.name!r} has no held-out split (dataset.test)")
    train, test = ds.train.cpu().numpy(), ds.test.cpu().numpy()

    def score(fakes: Fakes) -> dict[str, float]:
        # The decoded rows encoded again, as a training row would be: hard one-hots and values
        # inside the columns' ranges, so that a copied row lies at distance ~0 from its source.
        synth = transformer.transform(fakes.rows)
        return {"dcr_share": dcr_share(train, test, synth, seed=ref.seed)}

    return score


FAMILIES: tuple[Family, ...] = (
    Family((Metric("fid", "lower", main=True),), _any, _fid),
    # KID: torchmetrics' unbiased estimate of MMD^2 (cubic polynomial kernel), the mean over
    # KID_SUBSETS subsets, reported raw, not x1000 as papers often print it. Being unbiased it
    # can come out slightly below 0 when the two sets are alike: near 0 means indistinguishable.
    # Not on tables: a second kernel distance in the encoded space FID already measures, which
    # the table field does not use, and most of a full table evaluation (0.33 of 0.53 s at 20
    # columns, 1.1 of 1.9 s at 100).
    Family((Metric("kid", "lower"),), _not_tables, _kid, lacks="not on tables"),
    Family((Metric("precision", "higher"), Metric("recall", "higher"),
            Metric("density", "higher"), Metric("coverage", "higher")), _any, _prdc),
    # PacGAN / VEEGAN protocol: needs the known mixture centres.
    Family((Metric("modes_covered", "higher", main=True),
            Metric("high_quality", "higher", main=True),
            Metric("reverse_kl", "lower", main=True),
            Metric("pacgan_score", "higher")), _mixtures, _modes, lacks="no mixture centres"),
    # Need class labels: the feature classifier's predictions, or a table's decoded label.
    Family((Metric("classes_covered", "higher", main=True),
            Metric("class_kl", "lower", main=True)), _labelled, _classes,
           lacks="no class labels: images, or a table with data.label"),
    # NDB's k-means bins need many dimensions and twice as many samples as bins.
    Family((Metric("ndb_fraction", "lower"),), _images, _ndb, min_samples=2 * NDB_BINS,
           lacks="images only"),
    # Tables (tabular.py): SDMetrics' quality report on decoded rows against the held-out split.
    Family((Metric("column_shapes", "higher"), Metric("pair_trends", "higher"),
            Metric("quality", "higher", main=True)), _tables, _quality, lacks="tables only"),
    Family((Metric("category_coverage", "higher", main=True), Metric("category_kl", "lower")),
           _categorical_tables, _categories, lacks="no categorical columns"),
    Family((Metric("detection", "higher"), Metric("detection_auc", "lower")), _tables,
           _detection, lacks="tables only"),
    # Lower = fewer rows nearer the training split than the held-out one; 0.5 is the ideal, and
    # going under it only means worse samples: logged, never optimized (see dcr_share).
    Family((Metric("dcr_share", "lower", objective=False),), _tables, _dcr, lacks="tables only"),
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
