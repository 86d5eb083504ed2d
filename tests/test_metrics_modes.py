"""Mixture mode metrics (PacGAN / VEEGAN protocol) and class-histogram metrics."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.metrics import class_metrics, kl_divergence, mixture_mode_metrics
from pipeline.readers.mixtures import grid25_centres, mixture, ring8_centres

P_WITHIN_3_STD = 1 - math.exp(-4.5)  # P(chi2 with 2 dof <= 9) = 0.98889


@pytest.mark.parametrize(
    ("centres", "std"), [(ring8_centres(), 0.01), (grid25_centres(), 0.05)], ids=["ring8", "grid25"]
)
def test_true_mixture_samples_score_perfectly(centres: torch.Tensor, std: float) -> None:
    samples = mixture("true", centres, 2500, std=std, seed=0).train
    scores = mixture_mode_metrics(samples, centres, std)
    assert scores["modes_covered"] == len(centres)
    assert scores["high_quality"] == pytest.approx(P_WITHIN_3_STD, abs=0.01)
    assert 0 <= scores["reverse_kl"] < 0.01


@pytest.mark.parametrize("centres", [ring8_centres(), grid25_centres()], ids=["ring8", "grid25"])
def test_all_samples_in_one_mode(centres: torch.Tensor) -> None:
    collapsed = mixture("collapsed", centres[3:4], 2500, std=0.01, seed=1).train
    scores = mixture_mode_metrics(collapsed, centres, 0.01)
    assert scores["modes_covered"] == 1
    assert scores["reverse_kl"] == pytest.approx(math.log(len(centres)), rel=1e-12)


def test_half_the_modes_gives_log_two() -> None:
    centres = ring8_centres()
    # Exactly on four of the eight centres, equally often: KL(uniform on 4 || uniform on 8).
    samples = centres[torch.arange(400) % 4]
    scores = mixture_mode_metrics(samples, centres, 0.01)
    expected = {"modes_covered": 4.0, "high_quality": 1.0, "reverse_kl": pytest.approx(math.log(2)),
                "pacgan_score": pytest.approx(1.0 * 4 / 8 * 0.5)}  # exp(-log 2) = 1/2
    assert scores == expected


def test_far_samples_are_low_quality_and_cover_nothing() -> None:
    centres = ring8_centres()
    samples = torch.zeros(100, 2)  # the ring's centre, 1.0 from every mode: 100 std away
    scores = mixture_mode_metrics(samples, centres, 0.01)
    assert scores["modes_covered"] == 0
    assert scores["high_quality"] == 0
    assert scores["reverse_kl"] == pytest.approx(math.log(8))


def test_high_quality_threshold_is_three_std() -> None:
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    samples = torch.tensor([[0.029, 0.0], [0.031, 0.0], [10.0, 0.0299], [10.0, -0.0301]])
    scores = mixture_mode_metrics(samples, centres, std=0.01)
    assert scores["high_quality"] == 0.5
    assert scores["modes_covered"] == 2


def test_kl_divergence_known_values() -> None:
    p = torch.tensor([0.5, 0.5, 0.0])
    q = torch.tensor([0.25, 0.25, 0.5])
    assert kl_divergence(p, q) == pytest.approx(math.log(2))
    assert kl_divergence(q, q) == 0


def test_real_like_class_histogram() -> None:
    real = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    preds = torch.repeat_interleave(torch.arange(4), torch.tensor([100, 200, 300, 400]))
    scores = class_metrics(preds, real, num_classes=4)
    assert scores["classes_covered"] == 4
    assert scores["class_kl"] == pytest.approx(0.0, abs=1e-12)


def test_one_class_predictions() -> None:
    real = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    scores = class_metrics(torch.full((500,), 1), real, num_classes=4)
    assert scores["classes_covered"] == 1
    assert scores["class_kl"] == pytest.approx(math.log(1 / 0.2))


def test_class_coverage_threshold_is_a_tenth_of_the_uniform_share() -> None:
    # 10 classes: a class needs >= 1% of predictions. 10/1000 counts, 9/1000 does not.
    counts = torch.tensor([10, 9, 0, 0, 0, 0, 0, 0, 0, 981])
    preds = torch.repeat_interleave(torch.arange(10), counts)
    scores = class_metrics(preds, torch.full((10,), 0.1), num_classes=10)
    assert scores["classes_covered"] == 2


def test_pacgan_score_prefers_every_mode_to_sharper_samples_in_fewer() -> None:
    """The study objective: sharp samples in 24 of 25 modes score below slightly blurrier ones in
    all 25; samples in every mode and in the gaps between them score below both."""
    centres = grid25_centres()
    std = 0.05
    sharp_in_24 = centres[torch.arange(2400) % 24]
    every_mode = centres[torch.arange(2500) % 25]
    blurry_in_25 = torch.cat([every_mode[:2325], every_mode[:175] + 1.0])  # 7% in the gaps
    gaps = torch.cat([every_mode[:1500], every_mode[:1000] + 1.0])  # 40% in the gaps
    score = {name: mixture_mode_metrics(s, centres, std)["pacgan_score"]
             for name, s in [("sharp_in_24", sharp_in_24), ("blurry_in_25", blurry_in_25),
                             ("gaps", gaps), ("perfect", every_mode)]}
    assert score["perfect"] == pytest.approx(1.0)
    assert score["blurry_in_25"] == pytest.approx(0.93, abs=0.01)
    assert score["sharp_in_24"] == pytest.approx(24 / 25 * 24 / 25, abs=1e-9)  # exp(-log 25/24)
    assert score["gaps"] < score["sharp_in_24"] < score["blurry_in_25"] < score["perfect"]
