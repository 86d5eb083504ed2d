"""NDB/K, the fraction of statistically different bins (Richardson & Weiss 2018)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm
from sklearn.cluster import KMeans
from torch import Tensor


class NDB:
    """k-means bins fitted once on real features; ``score`` compares a fake sample's bin shares.

    The real bin proportions are counted over all of ``real_feats`` (the fit only needs a
    subsample), and each bin is tested with a two-sided two-proportion z-test at level ``alpha``.
    """

    def __init__(
        self,
        real_feats: Tensor,
        num_bins: int = 100,
        *,
        max_fit_points: int = 10_000,
        alpha: float = 0.05,
        n_init: int = 3,
        seed: int = 0,
    ) -> None:
        if len(real_feats) < 2 * num_bins:
            raise ValueError(f"{len(real_feats)} real points are too few for {num_bins} NDB bins")
        self.num_bins = num_bins
        self.alpha = alpha
        real = _to_numpy(real_feats)
        gen = torch.Generator().manual_seed(seed)
        fit_rows = torch.randperm(len(real), generator=gen)[:max_fit_points].numpy()
        self.kmeans = KMeans(n_clusters=num_bins, n_init=n_init, random_state=seed)
        self.kmeans.fit(real[fit_rows])
        self.real_counts = self._counts(real)
        self.n_real = len(real)

    def _counts(self, feats: np.ndarray) -> np.ndarray:
        return np.bincount(self.kmeans.predict(feats), minlength=self.num_bins).astype(np.float64)

    def bin_p_values(self, fake_feats: Tensor) -> np.ndarray:
        """Two-sided p-value per bin for 'real and fake put the same share of mass here'."""
        fake_counts = self._counts(_to_numpy(fake_feats))
        n_fake = len(fake_feats)
        p_real, p_fake = self.real_counts / self.n_real, fake_counts / n_fake
        pooled = (self.real_counts + fake_counts) / (self.n_real + n_fake)
        se = np.sqrt(pooled * (1 - pooled) * (1 / self.n_real + 1 / n_fake))
        # A bin that neither sample touches has se = 0 and no evidence of a difference.
        z = np.divide(p_real - p_fake, se, out=np.zeros_like(se), where=se > 0)
        return 2 * norm.sf(np.abs(z))

    def score(self, fake_feats: Tensor) -> float:
        """NDB/K: the fraction of bins whose real and fake proportions differ significantly."""
        if len(fake_feats) == 0:
            raise ValueError("no fake samples")
        return float((self.bin_p_values(fake_feats) < self.alpha).mean())


def _to_numpy(feats: Tensor) -> np.ndarray:
    # One dtype for fit and predict; float32 halves the cost of the k-means fit.
    return feats.detach().cpu().float().numpy()
