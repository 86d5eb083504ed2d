"""Evaluator: everything about the real data prepared once per run, then cheap evaluations.

Feature space: the coordinates themselves for 2-D mixtures; for images, the penultimate layer of
an MLP classifier trained on the dataset's own labels (see classifier.py). FID and KID here are
therefore *not* Inception scores: ``feature_name`` says which space was used, for the run's tags.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from pipeline.metrics.classifier import CLASSIFIER_VERSION, load_or_train_classifier
from pipeline.metrics.features import ClassifierFeatures, PrecomputedFeatures
from pipeline.metrics.modes import class_metrics, mixture_mode_metrics
from pipeline.metrics.names import MODE_METRICS, resolve_metrics
from pipeline.metrics.ndb import NDB
from pipeline.metrics.prdc import PRDC

if TYPE_CHECKING:  # runtime import would tie pipeline.metrics to pipeline.config
    from pipeline.data import Dataset

PRDC_METRICS = ("precision", "recall", "density", "coverage")
KID_SUBSET_SIZE = 1000
# Half torchmetrics' default of 100: each subset costs three 1000 x 1000 kernel matrices (~12 ms
# on 2 idle cores, ~90 ms on busy ones), and an average of subsets that all come from the same
# 2,500 real rows gains little from more draws: the finite real sample bounds its variance.
KID_SUBSETS = 50
NDB_BINS = 100


def check_settings(
    dataset: Dataset, n_samples: int, metrics: Sequence[str] | None
) -> tuple[str, ...]:
    """The metrics to compute for this dataset; ValueError for settings that cannot work."""
    resolved = resolve_metrics(dataset.kind, metrics, has_centres=dataset.centres is not None)
    if n_samples < 10:
        raise ValueError(f"n_samples={n_samples}: need at least 10 samples for k-NN metrics")
    if n_samples < 2 * NDB_BINS and "ndb_fraction" in resolved:
        raise ValueError(
            f"n_samples={n_samples} is too few to fill {NDB_BINS} NDB bins: use at least "
            f"{2 * NDB_BINS} or leave ndb_fraction out of the metrics"
        )
    return resolved


class Evaluator:
    """Scores generated samples against one dataset.

    FID uses the whole training split on the real side and every fake row given. The metrics
    whose value depends on sample size (KID's real side, PRDC, NDB, mode and class coverage) use
    ``n_samples`` rows: a real subsample drawn once from ``seed``, and the first ``n_samples``
    fake rows (fewer if fewer are given), so that scores stay comparable between evaluations.

    Attributes: ``metrics``, the names ``evaluate`` returns, in order; ``feature_name``, the
    feature space (for the ``fid_features`` tag); ``classifier_accuracy``, the held-out accuracy
    of the image feature classifier (None for points).
    """

    def __init__(
        self,
        dataset: Dataset,
        n_samples: int = 2500,
        metrics: Sequence[str] | None = None,
        cache_dir: Path = Path("runs/cache"),
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.metrics = check_settings(dataset, n_samples, metrics)
        self.dataset = dataset
        self.dim = dataset.dim
        self.n_samples = min(n_samples, len(dataset.train))
        self.seed = seed
        self.device = torch.device(device)
        self.classifier_accuracy: float | None = None
        self._embedder: ClassifierFeatures | None = None
        if dataset.is_images:
            model, self.classifier_accuracy = load_or_train_classifier(
                dataset, Path(cache_dir), device=self.device
            )
            self._embedder = ClassifierFeatures(model).to(self.device)
            self.feature_name = f"fcgan-mlp-classifier-{dataset.name}-v{CLASSIFIER_VERSION}"
        else:
            self.feature_name = "coordinates"

        real_feats, _ = self._embed(dataset.train)
        num_features = real_feats.shape[1]
        pick = torch.randperm(len(real_feats), generator=torch.Generator().manual_seed(seed))
        self._real_subset = real_feats[pick[: self.n_samples].to(self.device)]

        self._fid: FrechetInceptionDistance | None = None
        if "fid" in self.metrics:
            self._fid = FrechetInceptionDistance(
                feature=PrecomputedFeatures(num_features), reset_real_features=False
            ).to(self.device)
            # float64: FID subtracts large second moments, and the real side is fed only once.
            self._fid.update(real_feats.double(), real=True)
        self._kid: KernelInceptionDistance | None = None
        if "kid" in self.metrics:
            with warnings.catch_warnings():
                # It warns that it buffers all features: it gets n_samples real rows, by design.
                warnings.simplefilter("ignore", UserWarning)
                self._kid = KernelInceptionDistance(
                    feature=PrecomputedFeatures(num_features),
                    subsets=KID_SUBSETS,
                    subset_size=min(KID_SUBSET_SIZE, self.n_samples),
                    reset_real_features=False,
                ).to(self.device)
            self._kid.update(self._real_subset, real=True)
        self._ndb = NDB(real_feats, NDB_BINS, seed=seed) if "ndb_fraction" in self.metrics else None
        self._prdc = PRDC(self._real_subset) if set(self.metrics) & set(PRDC_METRICS) else None
        self._real_class_probs: Tensor | None = None
        if dataset.is_images and set(self.metrics) & {"classes_covered", "class_kl"}:
            assert dataset.train_labels is not None and dataset.num_classes is not None
            counts = torch.bincount(dataset.train_labels, minlength=dataset.num_classes)
            self._real_class_probs = counts.double() / counts.sum()

    @torch.no_grad()
    def _embed(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        x = x.to(self.device, torch.float32)
        if self._embedder is None:
            return x, None
        feats, logits = self._embedder(x)
        return feats, logits

    @torch.no_grad()
    def evaluate(self, fake: Tensor) -> dict[str, float]:
        """Every requested metric for generated samples ``fake`` of shape (N, D), N >= 10."""
        if fake.ndim != 2 or fake.shape[1] != self.dim:
            raise ValueError(
                f"expected fake samples of shape (N, {self.dim}), got {tuple(fake.shape)}"
            )
        if len(fake) < 10:
            raise ValueError(f"need at least 10 fake samples, got {len(fake)}")
        if not torch.isfinite(fake).all():
            raise ValueError("fake samples contain NaN or infinite values")
        feats, logits = self._embed(fake)
        head = slice(0, self.n_samples)
        wanted = set(self.metrics)
        out: dict[str, float] = {}

        if self._fid is not None:
            self._fid.reset()  # drops the fake side only (reset_real_features=False)
            self._fid.update(feats.double(), real=False)
            out["fid"] = float(self._fid.compute())
        if self._kid is not None:
            self._kid.reset()
            self._kid.update(feats, real=False)
            self._kid.subset_size = min(KID_SUBSET_SIZE, len(self._real_subset), len(feats))
            # KID draws its subsets from the global RNG: seed it locally so that identical samples
            # score identically, without disturbing the caller's random stream.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                kid_mean, _ = self._kid.compute()
            out["kid"] = float(kid_mean)
        if self._prdc is not None:
            prdc = self._prdc.score(feats[head])
            out.update({k: v for k, v in prdc.items() if k in wanted})
        if wanted & set(MODE_METRICS):
            assert self.dataset.centres is not None and self.dataset.std is not None
            modes = mixture_mode_metrics(feats[head], self.dataset.centres, self.dataset.std)
            out.update({k: v for k, v in modes.items() if k in wanted})
        if self._real_class_probs is not None and logits is not None:
            assert self.dataset.num_classes is not None
            classes = class_metrics(
                logits[head].argmax(dim=1), self._real_class_probs, self.dataset.num_classes
            )
            out.update({k: v for k, v in classes.items() if k in wanted})
        if self._ndb is not None:
            out["ndb_fraction"] = self._ndb.score(feats[head])
        return {name: out[name] for name in self.metrics}
