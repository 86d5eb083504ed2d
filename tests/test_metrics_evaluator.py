"""The Evaluator end to end: real data scores well, a collapsed sample badly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pipeline.dataset import Dataset
from pipeline.metrics import Evaluator
from pipeline.readers.idx import digits as digits_dataset  # the 80/20 split the pipeline uses
from pipeline.readers.mixtures import mixture, ring8_centres
from pipeline.readers.mixtures import ring8 as ring8_dataset  # the name ring8 is the fixture's

POINT_METRICS = ["fid", "kid", "precision", "recall", "density", "coverage", "modes_covered",
                 "high_quality", "reverse_kl", "pacgan_score"]
IMAGE_METRICS = ["fid", "kid", "precision", "recall", "density", "coverage", "classes_covered",
                 "class_kl", "ndb_fraction"]

CENTRES = ring8_centres()


def ring8_samples(centres: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    return mixture("ring8", centres, n, std=0.01, seed=seed).train


@pytest.fixture(scope="module")
def ring8() -> Dataset:
    return ring8_dataset(20_000, std=0.01, seed=0)


@pytest.fixture(scope="module")
def ring8_evaluator(ring8: Dataset) -> Evaluator:
    return Evaluator(ring8, n_samples=2500)


def test_points_real_samples_score_well(ring8_evaluator: Evaluator) -> None:
    assert ring8_evaluator.feature_name == "coordinates"
    assert ring8_evaluator.classifier_accuracy is None
    scores = ring8_evaluator.evaluate(ring8_samples(CENTRES, 5000, seed=1))
    assert list(scores) == POINT_METRICS
    assert scores["modes_covered"] == 8
    assert scores["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)
    assert scores["reverse_kl"] < 0.01
    assert abs(scores["fid"]) < 1e-3
    assert abs(scores["kid"]) < 1e-3
    assert scores["precision"] > 0.9 and scores["recall"] > 0.9
    assert scores["density"] == pytest.approx(1.0, abs=0.1)
    assert scores["coverage"] > 0.9


def test_points_collapsed_sample_scores_badly(ring8_evaluator: Evaluator) -> None:
    one_mode = ring8_samples(CENTRES[:1], 5000, seed=2)
    scores = ring8_evaluator.evaluate(one_mode)
    assert scores["modes_covered"] == 1
    assert scores["reverse_kl"] == pytest.approx(math.log(8))
    assert scores["fid"] > 0.5  # the ring's variance, 0.5 per axis, is all missing
    assert scores["kid"] > 0.05
    assert scores["precision"] > 0.9  # realistic...
    assert scores["recall"] < 0.2 and scores["coverage"] < 0.2  # ...but one eighth of the modes


def test_evaluation_is_reproducible_and_leaves_the_rng_alone(ring8_evaluator: Evaluator) -> None:
    fake = ring8_samples(CENTRES, 3000, seed=3) * 1.05
    state = torch.get_rng_state()
    first = ring8_evaluator.evaluate(fake)
    assert ring8_evaluator.evaluate(fake) == first  # KID's random subsets are seeded
    assert torch.equal(torch.get_rng_state(), state)


def test_points_floor_is_fresh_mixture_samples(ring8_evaluator: Evaluator) -> None:
    floor = ring8_evaluator.floor()
    assert list(floor) == POINT_METRICS
    assert all(math.isfinite(v) for v in floor.values())
    assert floor["modes_covered"] == 8 and floor["reverse_kl"] < 0.01
    assert abs(floor["fid"]) < 1e-3 and floor["precision"] > 0.9
    assert ring8_evaluator.floor() == floor  # computed once, from a fixed seed


def test_only_the_requested_metrics(ring8: Dataset) -> None:
    evaluator = Evaluator(ring8, n_samples=500, metrics=["reverse_kl", "fid"])
    scores = evaluator.evaluate(ring8_samples(CENTRES, 500, seed=4))
    assert list(scores) == ["fid", "reverse_kl"]


def test_invalid_metric_names_are_listed(ring8: Dataset) -> None:
    with pytest.raises(ValueError, match=r"unknown metric name\(s\) \['fidd'\].*'precision'"):
        Evaluator(ring8, metrics=["fidd"])
    with pytest.raises(ValueError, match=r"\['ndb_fraction'\] do not apply.*'modes_covered'"):
        Evaluator(ring8, metrics=["fid", "ndb_fraction"])


def test_mixture_metrics_need_centres() -> None:
    blob = Dataset(name="blob", kind="points", train=torch.randn(1000, 2))
    assert "modes_covered" not in Evaluator(blob, n_samples=200).metrics
    with pytest.raises(ValueError, match="no mixture centres"):
        Evaluator(blob, metrics=["modes_covered"])
    with pytest.raises(ValueError, match="no distribution to draw fresh rows from"):
        Evaluator(blob, n_samples=200, metrics=["fid"]).floor()


def test_rejects_malformed_samples(ring8_evaluator: Evaluator) -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        ring8_evaluator.evaluate(torch.zeros(100, 3))
    with pytest.raises(ValueError, match="NaN"):
        ring8_evaluator.evaluate(torch.full((100, 2), float("nan")))


def test_digits_end_to_end(tmp_path: Path) -> None:
    digits = digits_dataset()
    evaluator = Evaluator(digits, n_samples=1000, cache_dir=tmp_path, seed=0)
    name, digest = evaluator.feature_name.split(" weights ")
    assert name == "fcgan-mlp-classifier-digits-v1" and len(digest) == 12
    assert evaluator.classifier_accuracy is not None and evaluator.classifier_accuracy >= 0.95
    assert (tmp_path / "classifier-digits-v1.pt").exists()

    assert digits.test is not None
    real = evaluator.evaluate(digits.test)  # 360 held-out images
    assert list(real) == IMAGE_METRICS
    assert real["classes_covered"] == 10
    assert real["class_kl"] < 0.03
    assert real["ndb_fraction"] < 0.1
    assert real["precision"] > 0.7 and real["recall"] > 0.7 and real["coverage"] > 0.7
    assert evaluator.floor() == real  # the test split against the training rows

    # A collapsed generator: one training image of a "3", repeated with a little pixel noise.
    gen = torch.Generator().manual_seed(5)
    three = digits.train[digits.train_labels == 3][0]
    collapsed = (three + 0.05 * torch.randn(2500, 64, generator=gen)).clamp(-1, 1)
    bad = evaluator.evaluate(collapsed)
    assert bad["classes_covered"] == 1
    assert bad["class_kl"] > 2.0  # log(1 / p(3)) = log 10 for balanced classes
    assert bad["ndb_fraction"] > 0.5
    assert bad["recall"] < 0.05 and bad["coverage"] < 0.1
    assert bad["fid"] > 10 * max(real["fid"], 1e-3)
    assert bad["kid"] > 10 * max(real["kid"], 1e-3)
