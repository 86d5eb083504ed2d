"""Evaluator: everything about the real data prepared once per run, then cheap evaluations.

Feature space: the coordinates themselves for 2-D mixtures; for images, the penultimate layer of
an MLP classifier trained on the dataset's own labels (see classifier.py); for tables, the
transformer's encoding. FID and KID here are therefore *not* Inception scores: ``feature_name``
says which space was used, for the run's tags. Which metrics exist, and how each is computed, is
the registry's business (registry.py, its scorers in scorers.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from pipeline.dataset import Dataset
from pipeline.metrics import registry
from pipeline.metrics.classifier import (
    CLASSIFIER_VERSION,
    load_or_train_classifier,
    weights_digest,
)
from pipeline.metrics.features import ClassifierFeatures
from pipeline.metrics.registry import MIN_SAMPLES, check_settings
from pipeline.metrics.scorers import Fakes, Reference, Scorer, table_pairs, table_parts

if TYPE_CHECKING:  # pandas costs ~0.5 s to import, and points and images never need it
    import pandas as pd

# The floor's fresh mixture points: a seed far from the small ones runs use (a run's points come
# from its own seed, 0 by default), so that the floor shares no draws with a training set.
FLOOR_SEED = 2_147_483_647
FLOOR_DRAWS = 10  # mixtures: fresh draws averaged into the floor (milliseconds each in 2-D)


class Evaluator:
    """Scores generated samples against one dataset.

    FID uses the whole training split on the real side and every fake row given. The metrics
    whose value depends on sample size (KID's real side, PRDC, NDB, mode and class coverage) use
    ``n_samples`` rows: a real subsample drawn once from ``seed``, and the first ``n_samples``
    fake rows (fewer if fewer are given), so that scores stay comparable between evaluations.

    Tables: the real side of every metric is the held-out split (``dataset.test``), so that a
    generator that copies its training rows does not score as perfect; the fake head is capped
    at the training split's size (``n_samples`` is), the size ``floor`` compares at. The table
    families read the head decoded into the original columns, decoded once per evaluation.

    Attributes: ``metrics``, the names ``evaluate`` returns, in order; ``feature_name``, the
    feature space (for the ``fid_features`` tag); ``classifier_accuracy``, the held-out accuracy
    of the image feature classifier (None otherwise); ``pair_rule``, which column pairs
    pair_trends uses (tables; None otherwise), for the run's tags.
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
        self.pair_rule: str | None = None
        self._embedder: ClassifierFeatures | None = None
        self._decode: Callable[[Tensor], pd.DataFrame] | None = None
        self._floor: dict[str, float] | None = None
        real = dataset.train
        if dataset.is_images and dataset.num_classes is None:
            # An unlabelled image folder: no classes to train a feature classifier on, so FID
            # and the others compare raw pixels, and the tag says so.
            self.feature_name = "pixels (no labels: no feature classifier)"
        elif dataset.is_images:
            model, self.classifier_accuracy = load_or_train_classifier(
                dataset, Path(cache_dir), device=self.device
            )
            self._embedder = ClassifierFeatures(model).to(self.device)
            self.feature_name = (f"fcgan-mlp-classifier-{dataset.name}-v{CLASSIFIER_VERSION} "
                                 f"weights {weights_digest(model)}")
        elif dataset.kind == "table":
            if dataset.test is None:
                raise ValueError(f"table dataset {dataset.name!r} has no held-out split "
                                 "(dataset.test): the table metrics compare against it")
            real = dataset.test
            transformer = table_parts(dataset).transformer
            self._decode = lambda head: transformer.inverse_transform(head.cpu().numpy())
            self.pair_rule = table_pairs(dataset, seed).rule
            self.feature_name = "table-encoding"
        else:
            self.feature_name = "coordinates"

        real_feats, _ = self._embed(real)
        pick = torch.randperm(len(real_feats), generator=torch.Generator().manual_seed(seed))
        subset = real_feats[pick[: self.n_samples].to(self.device)]
        reference = Reference(dataset, real_feats, subset, seed)
        wanted = set(self.metrics)
        self._scorers: list[tuple[set[str], Scorer]] = [
            (set(family.names), family.prepare(reference))
            for family in registry.FAMILIES if wanted & set(family.names)]

    @torch.no_grad()
    def _embed(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        x = x.to(self.device, torch.float32)
        if self._embedder is None:
            return x, None
        feats, logits = self._embedder(x)
        return feats, logits

    @torch.no_grad()
    def evaluate(self, fake: Tensor, only: set[str] | None = None) -> dict[str, float]:
        """Every requested metric for generated samples ``fake`` of shape (N, D), N >= 10; with
        ``only``, just the families that compute one of those (a light evaluation)."""
        if fake.ndim != 2 or fake.shape[1] != self.dim:
            raise ValueError(
                f"expected fake samples of shape (N, {self.dim}), got {tuple(fake.shape)}"
            )
        if len(fake) < MIN_SAMPLES:
            raise ValueError(f"need at least {MIN_SAMPLES} fake samples, got {len(fake)}")
        if not torch.isfinite(fake).all():
            raise ValueError("fake samples contain NaN or infinite values")
        feats, logits = self._embed(fake)
        first = slice(0, self.n_samples)
        fakes = Fakes(feats, feats[first], None if logits is None else logits[first],
                      self._decode)
        out: dict[str, float] = {}
        for names, score in self._scorers:
            if only is None or names & only:
                out.update(score(fakes))
        return {name: out[name] for name in self.metrics if name in out}

    def floor(self) -> dict[str, float]:
        """The same metrics for real rows of the reference distribution in place of generated
        ones: what a perfect generator scores at this sample size, computed once per Evaluator.

        Tables: the training split against the held-out one (dcr_share is high there: these
        rows are the training rows); mixtures: ``n_samples`` fresh points of the mixture drawn
        from ``FLOOR_SEED``; images: the test split against the training rows.
        """
        if self._floor is None:
            ds = self.dataset
            if ds.centres is not None and ds.std is not None:
                # One draw of 2,500 points is noisy at this scale (grid25's reverse KL: 0.0046
                # +- 0.0015 over draws); the mean of several is the floor a row is read against.
                draws = [self.evaluate(self._mixture_rows(FLOOR_SEED + i))
                         for i in range(FLOOR_DRAWS)]
                self._floor = {k: sum(d[k] for d in draws) / len(draws) for k in draws[0]}
            else:
                self._floor = self.evaluate(self._floor_rows())
        return dict(self._floor)

    def _mixture_rows(self, seed: int) -> Tensor:
        from pipeline.readers.mixtures import mixture  # the mixture's own formula, not a copy

        ds = self.dataset
        assert ds.centres is not None and ds.std is not None
        return mixture(ds.name, ds.centres, self.n_samples, ds.std, seed).train

    def _floor_rows(self) -> Tensor:
        ds = self.dataset
        if ds.kind == "table":
            # Shuffled, so that the head is a random subset whatever order the split came in.
            gen = torch.Generator().manual_seed(self.seed)
            return ds.train[torch.randperm(len(ds.train), generator=gen).to(ds.train.device)]
        if ds.is_images:
            if ds.test is None:
                raise ValueError(f"floor: images {ds.name!r} have no test split")
            return ds.test
        if ds.centres is not None and ds.std is not None:
            return self._mixture_rows(FLOOR_SEED)
        raise ValueError(f"floor: the {ds.kind} dataset {ds.name!r} has no distribution to draw "
                         "fresh rows from (no mixture centres)")
