"""Improved precision/recall and density/coverage against the papers' definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from pipeline.metrics import prdc as prdc_module
from pipeline.metrics import precision_recall_density_coverage


def reference_prdc(real: np.ndarray, fake: np.ndarray, k_pr: int, k_dc: int) -> dict[str, float]:
    """Straight from the definitions, with full distance matrices and an explicit self-exclusion."""
    rr, ff, rf = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    np.fill_diagonal(rr, np.inf)
    np.fill_diagonal(ff, np.inf)
    real_r_pr = np.sort(rr, axis=1)[:, k_pr - 1]
    real_r_dc = np.sort(rr, axis=1)[:, k_dc - 1]
    fake_r_pr = np.sort(ff, axis=1)[:, k_pr - 1]
    precision = np.mean((rf <= real_r_pr[:, None]).any(axis=0))
    recall = np.mean((rf <= fake_r_pr[None, :]).any(axis=1))
    density = (rf <= real_r_dc[:, None]).sum(axis=0).mean() / k_dc
    coverage = np.mean(rf.min(axis=1) <= real_r_dc)
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def test_matches_the_definitions_on_a_small_sample() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(size=(150, 3))
    fake = rng.normal(loc=0.4, scale=0.8, size=(120, 3))
    ours = precision_recall_density_coverage(torch.from_numpy(real), torch.from_numpy(fake))
    expected = reference_prdc(real, fake, k_pr=3, k_dc=5)
    assert ours == pytest.approx(expected, abs=1e-12)
    # The shift and shrink must register: this is not a trivially perfect sample.
    assert ours["recall"] < 0.9


def test_results_do_not_depend_on_the_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.randn(700, 5, generator=gen), 1.2 * torch.randn(500, 5, generator=gen)
    whole = precision_recall_density_coverage(real, fake)
    monkeypatch.setattr(prdc_module, "BLOCK_BYTES", 8 * 700 * 7)  # 7 rows per block
    assert precision_recall_density_coverage(real, fake) == whole


def test_k_th_neighbour_radius_excludes_the_point_itself() -> None:
    points = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    radii = prdc_module.knn_radii(points, (1, 2))
    assert radii[1].tolist() == [1.0, 1.0, 2.0, 4.0]
    assert radii[2].tolist() == [3.0, 2.0, 3.0, 6.0]


def test_two_samples_of_one_distribution() -> None:
    gen = torch.Generator().manual_seed(2)
    real, fake = torch.randn(2500, 4, generator=gen), torch.randn(2500, 4, generator=gen)
    scores = precision_recall_density_coverage(real, fake)
    assert scores["precision"] > 0.8
    assert scores["recall"] > 0.8
    assert scores["density"] == pytest.approx(1.0, abs=0.1)
    assert scores["coverage"] > 0.9


def test_collapsed_sample_has_no_recall_or_coverage() -> None:
    gen = torch.Generator().manual_seed(3)
    real = torch.randn(2500, 4, generator=gen)
    fake = torch.tensor([0.3, -0.2, 0.1, 0.0]) + 1e-3 * torch.randn(2500, 4, generator=gen)
    scores = precision_recall_density_coverage(real, fake)
    assert scores["precision"] == 1.0  # every fake sample is realistic...
    assert scores["recall"] < 0.01  # ...but they span a speck of the real distribution
    assert scores["coverage"] < 0.01


def test_far_away_sample_has_no_precision_or_density() -> None:
    gen = torch.Generator().manual_seed(4)
    real = torch.randn(1000, 4, generator=gen)
    scores = precision_recall_density_coverage(real, real + 20.0)
    assert scores == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_rejects_mismatched_features() -> None:
    with pytest.raises(ValueError, match="do not match"):
        precision_recall_density_coverage(torch.zeros(10, 3), torch.zeros(10, 4))


@pytest.mark.parametrize("dim", [1, 2, 4])
def test_k_d_trees_match_the_definitions(dim: int) -> None:
    """Low dimensions take the k-d tree path; it must agree with the definitions exactly,
    including duplicated points (zero distances) and a far-away outlier (a huge fake ball)."""
    rng = np.random.default_rng(dim)
    real = rng.normal(size=(400, dim))
    fake = np.concatenate([rng.normal(loc=0.3, scale=0.7, size=(300, dim)), real[:20],
                           np.full((1, dim), 9.0)])
    prdc = prdc_module.PRDC(torch.from_numpy(real))
    assert prdc.tree is not None
    expected = reference_prdc(real, fake, k_pr=3, k_dc=5)
    assert prdc.score(torch.from_numpy(fake)) == pytest.approx(expected, abs=1e-12)


def test_both_paths_agree_on_a_mixture(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(5)
    centres = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    real = centres[torch.randint(3, (2500,), generator=gen)] + 0.05 * torch.randn(
        2500, 2, generator=gen)
    fake = centres[torch.randint(2, (2500,), generator=gen)] + 0.08 * torch.randn(
        2500, 2, generator=gen)
    with_trees = precision_recall_density_coverage(real, fake)
    monkeypatch.setattr(prdc_module, "KD_TREE_MAX_DIM", 0)
    assert precision_recall_density_coverage(real, fake) == pytest.approx(with_trees, abs=1e-12)
    assert with_trees["coverage"] < 0.7  # a third of the modes is missing
