"""FID through the Evaluator (torchmetrics' statistics on our features) against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm

from pipeline.dataset import Dataset
from pipeline.metrics import Evaluator


def gaussian(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.multivariate_normal(mean, cov, size=n).astype(np.float32))


def closed_form_fid(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray) -> float:
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real))


def test_fid_of_a_sample_against_itself_is_zero() -> None:
    sample = gaussian(np.zeros(4), np.diag([1.0, 2.0, 3.0, 4.0]), 5000, seed=0)
    evaluator = Evaluator(Dataset(name="gauss", kind="points", train=sample), metrics=["fid"])
    assert evaluator.evaluate(sample)["fid"] == pytest.approx(0.0, abs=1e-6)


def test_fid_matches_the_closed_form_for_gaussians() -> None:
    m1, m2 = np.zeros(4), np.array([1.0, 0.0, -0.5, 0.25])
    s1 = np.diag([1.0, 2.0, 0.5, 1.5])
    a = np.random.default_rng(7).normal(size=(4, 4))
    s2 = a @ a.T / 4 + 0.5 * np.eye(4)
    expected = closed_form_fid(m1, s1, m2, s2)
    real, fake = gaussian(m1, s1, 50_000, seed=1), gaussian(m2, s2, 50_000, seed=2)

    evaluator = Evaluator(Dataset(name="gauss", kind="points", train=real), metrics=["fid"])
    fid = evaluator.evaluate(fake)["fid"]
    assert fid == pytest.approx(expected, rel=0.02)
    assert expected > 1.5  # not a degenerate comparison
    # The real statistics survive evaluate(): the same fake scores the same the second time.
    assert evaluator.evaluate(fake)["fid"] == fid
