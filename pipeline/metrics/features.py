"""Feature maps for the metrics: the MLP classifier's penultimate layer, and a pass-through
module that lets torchmetrics' FID/KID accept features computed beforehand."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.metrics.classifier import EMBED_BATCH, MLPClassifier


class ClassifierFeatures(nn.Module):
    """Flat images in [-1, 1] -> (penultimate features, logits) of a frozen classifier."""

    def __init__(self, classifier: MLPClassifier) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> ClassifierFeatures:
        # A parent module's .train() must never switch the frozen classifier's dropout back on.
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats, logits = [], []
        for start in range(0, len(x), EMBED_BATCH):
            f = self.classifier.features(x[start : start + EMBED_BATCH])
            feats.append(f)
            logits.append(self.classifier.head(f))
        return torch.cat(feats), torch.cat(logits)


class PrecomputedFeatures(nn.Module):
    """Identity with a ``num_features`` attribute, the feature 'extractor' given to torchmetrics.

    The Evaluator embeds each fake batch once and shares the features between FID, KID, PRDC,
    NDB and the class histogram; torchmetrics then only accumulates statistics. ``num_features``
    also stops torchmetrics from pushing a dummy 299x299 image through the module.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, feats: Tensor) -> Tensor:
        if feats.ndim != 2 or feats.shape[1] != self.num_features:
            raise ValueError(
                f"expected (N, {self.num_features}) features, got {tuple(feats.shape)}"
            )
        return feats
