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
from typing import TYPE_CHECKING, Literal, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:  # runtime import would tie pipeline.metrics to pipeline.data
    from pipeline.data import Dataset

VAL_PREFIX = "val/"  # metrics of an evaluation are logged as val/<name>, step = epoch
EVAL_SECONDS = "eval_seconds"  # logged beside the metrics: what an evaluation cost
MIN_SAMPLES = 10  # the k-NN metrics need more points than their k (5)


def val_key(name: str) -> str:
    return f"{VAL_PREFIX}{name}"


class DatasetTraits(Protocol):
    """What applicability depends on: a loaded Dataset or a registry entry both have these."""

    @property
    def kind(self) -> str: ...

    @property
    def has_centres(self) -> bool: ...


@dataclass(frozen=True)
class Reference:
    """The real side of a run's evaluations, prepared once: all rows embedded, a fixed subset."""

    dataset: Dataset
    feats: Tensor  # every training row in feature space
    subset: Tensor  # n_samples of them, drawn once from the seed (size-dependent metrics)
    seed: int


@dataclass(frozen=True)
class Fakes:
    """Generated samples in feature space: all rows (FID, KID) and the first n_samples."""

    feats: Tensor
    head: Tensor
    logits: Tensor | None  # the feature classifier's logits of ``head`` (images)


Scorer = Callable[[Fakes], dict[str, float]]


@dataclass(frozen=True)
class Metric:
    name: str
    better: Literal["higher", "lower"]
    main: bool = False  # a column of compare's table and a line of the comparison figure


@dataclass(frozen=True)
class Family:
    metrics: tuple[Metric, ...]
    applies: Callable[[DatasetTraits], bool]
    prepare: Callable[[Reference], Scorer]
    min_samples: int = MIN_SAMPLES

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.metrics)


def _any(traits: DatasetTraits) -> bool:
    return True


def _images(traits: DatasetTraits) -> bool:
    return traits.kind == "images"


def _mixtures(traits: DatasetTraits) -> bool:
    return traits.has_centres


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


FAMILIES: tuple[Family, ...] = (
    Family((Metric("fid", "lower", main=True),), _any, _fid),
    Family((Metric("kid", "lower"),), _any, _kid),
    Family((Metric("precision", "higher"), Metric("recall", "higher"),
            Metric("density", "higher"), Metric("coverage", "higher")), _any, _prdc),
    # PacGAN / VEEGAN protocol: needs the known mixture centres.
    Family((Metric("modes_covered", "higher", main=True),
            Metric("high_quality", "higher", main=True),
            Metric("reverse_kl", "lower", main=True),
            Metric("pacgan_score", "higher")), _mixtures, _modes),
    # Need class labels (the feature classifier's predictions).
    Family((Metric("classes_covered", "higher", main=True),
            Metric("class_kl", "lower", main=True)), _images, _classes),
    # NDB's k-means bins need many dimensions and twice as many samples as bins.
    Family((Metric("ndb_fraction", "lower"),), _images, _ndb, min_samples=2 * NDB_BINS),
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
        raise ValueError(
            f"metric(s) {inapplicable} do not apply to this {traits.kind} dataset"
            f"{'' if traits.has_centres or traits.kind != 'points' else ' (no mixture centres)'}"
            f"; allowed names here are {list(allowed)}"
        )
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
    """The val/ keys an evaluation logs: what a study may optimize."""
    return [val_key(n) for n in (*resolve_metrics(traits, requested), EVAL_SECONDS)]
