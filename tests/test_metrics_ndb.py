"""NDB/K: k-means bins on real features, two-proportion z-tests per bin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.metrics import NDB


def blobs(n: int, seed: int, centres: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    which = torch.randint(len(centres), (n,), generator=gen)
    return centres[which] + 0.5 * torch.randn(n, centres.shape[1], generator=gen)


CENTRES = 3.0 * torch.randn(10, 16, generator=torch.Generator().manual_seed(99))


@pytest.fixture(scope="module")
def ndb() -> NDB:
    return NDB(blobs(10_000, seed=0, centres=CENTRES), num_bins=50, seed=0)


def test_same_distribution_few_different_bins(ndb: NDB) -> None:
    # At alpha = 0.05 about 5% of bins differ by chance alone.
    assert ndb.score(blobs(2500, seed=1, centres=CENTRES)) < 0.15


def test_collapsed_distribution_many_different_bins(ndb: NDB) -> None:
    collapsed = blobs(2500, seed=2, centres=CENTRES[:2])  # two of the ten modes
    assert ndb.score(collapsed) > 0.8


def test_shifted_distribution_many_different_bins(ndb: NDB) -> None:
    shifted = blobs(2500, seed=3, centres=CENTRES) + 0.75
    assert ndb.score(shifted) > 0.5


def test_z_test_matches_a_hand_computation(ndb: NDB) -> None:
    fake = blobs(2000, seed=4, centres=CENTRES)
    fake_counts = np.bincount(ndb.kmeans.predict(fake.numpy()), minlength=50)
    p1, p2 = ndb.real_counts[0] / 10_000, fake_counts[0] / 2000
    pooled = (ndb.real_counts[0] + fake_counts[0]) / 12_000
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / 10_000 + 1 / 2000))
    from scipy.stats import norm

    assert ndb.bin_p_values(fake)[0] == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9)


def test_seeded_fit_is_reproducible() -> None:
    real = blobs(3000, seed=5, centres=CENTRES)
    fake = blobs(1000, seed=6, centres=CENTRES[:5])
    a, b = NDB(real, num_bins=30, seed=7), NDB(real, num_bins=30, seed=7)
    assert np.array_equal(a.kmeans.cluster_centers_, b.kmeans.cluster_centers_)
    assert a.score(fake) == b.score(fake)
