"""How each metric family prepares its real side once per run and scores generated samples.

The registry (registry.py) names these scorers in its families.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from pipeline.dataset import Dataset, TableParts

# pandas, and tabular.py which imports it, cost ~0.5 s to import; points and images never need them
if TYPE_CHECKING:
    import pandas as pd

    from pipeline.metrics.tabular import PairSample


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

KID_SUBSET_SIZE = 1000
# Half torchmetrics' default of 100: each subset costs three 1000 x 1000 kernel matrices (~12 ms
# on 2 idle cores, ~90 ms on busy ones), and an average of subsets that all come from the same
# 2,500 real rows gains little from more draws: the finite real sample bounds its variance.
KID_SUBSETS = 50
NDB_BINS = 100


def fid(ref: Reference) -> Scorer:
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


def kid(ref: Reference) -> Scorer:
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


def prdc(ref: Reference) -> Scorer:
    from pipeline.metrics.prdc import PRDC

    prdc = PRDC(ref.subset)
    return lambda fakes: prdc.score(fakes.head)


def modes(ref: Reference) -> Scorer:
    from pipeline.metrics.modes import mixture_mode_metrics

    centres, std = ref.dataset.centres, ref.dataset.std
    assert centres is not None and std is not None
    return lambda fakes: mixture_mode_metrics(fakes.head, centres, std)


def classes(ref: Reference) -> Scorer:
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


def ndb(ref: Reference) -> Scorer:
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


def quality(ref: Reference) -> Scorer:
    from pipeline.metrics.tabular import Quality

    parts = table_parts(ref.dataset)
    score = Quality(parts.test_frame, parts.transformer.sdv_metadata(),
                    pairs=table_pairs(ref.dataset, ref.seed), seed=ref.seed)
    return lambda fakes: score(fakes.rows)


def categories(ref: Reference) -> Scorer:
    from pipeline.metrics.tabular import category_metrics

    parts = table_parts(ref.dataset)
    real, categorical = parts.test_frame, parts.transformer.categorical
    return lambda fakes: category_metrics(real, fakes.rows, categorical)


def detection(ref: Reference) -> Scorer:
    from pipeline.metrics import privacy

    parts = table_parts(ref.dataset)
    metadata, real = parts.transformer.sdv_metadata(), parts.test_frame
    return lambda fakes: privacy.detection(real, fakes.rows, metadata, seed=ref.seed)


def dcr(ref: Reference) -> Scorer:
    from pipeline.metrics.privacy import dcr_share

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
