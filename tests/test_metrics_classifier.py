"""The FID feature classifier: accuracy, on-disk cache, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.dataset import Dataset
from pipeline.metrics import classifier as clf
from pipeline.metrics import load_or_train_classifier
from pipeline.readers.idx import digits as digits_dataset  # the 80/20 split the pipeline uses


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return digits_dataset()


def test_digits_classifier_is_accurate_and_cached(
    digits: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert digits.test is not None
    rng_before = torch.get_rng_state()
    model, accuracy = load_or_train_classifier(digits, tmp_path)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the GAN's random stream is untouched
    assert accuracy >= 0.95
    assert accuracy == clf.test_accuracy(model, digits)
    assert not model.training
    assert model.features(digits.test[:4]).shape == (4, model.num_features)

    path = tmp_path / f"classifier-digits-v{clf.CLASSIFIER_VERSION}.pt"
    assert path.exists() and list(tmp_path.iterdir()) == [path]  # no temp file left behind
    mtime = path.stat().st_mtime_ns

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached classifier should have been reused")

    monkeypatch.setattr(clf, "train_classifier", no_training)
    again, cached_accuracy = load_or_train_classifier(digits, tmp_path)
    assert cached_accuracy == accuracy
    assert path.stat().st_mtime_ns == mtime
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)


def test_training_is_deterministic(digits: Dataset) -> None:
    torch.manual_seed(1)  # a different GAN seed must not change the feature space
    first = clf.train_classifier(digits)
    torch.manual_seed(2)
    second = clf.train_classifier(digits)
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value)
    assert clf.weights_digest(first) == clf.weights_digest(second)


def test_the_digest_names_the_weights_exactly(digits: Dataset) -> None:
    model = clf.MLPClassifier(digits.dim, 10)
    digest = clf.weights_digest(model)
    assert len(digest) == 12 and int(digest, 16) >= 0
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6  # one weight, one rounding step apart
    assert clf.weights_digest(model) != digest


def test_unreadable_or_foreign_cache_is_retrained(digits: Dataset, tmp_path: Path) -> None:
    path = clf.cache_path(tmp_path, "digits")
    path.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="unreadable classifier cache"):
        _, accuracy = load_or_train_classifier(digits, tmp_path)
    assert accuracy >= 0.95
    assert torch.load(path, weights_only=True)["architecture"]["in_features"] == 64

    # A file for the same name but another architecture (say 28x28 images) is not loaded.
    other = clf.MLPClassifier(784, 10)
    payload = {"state_dict": other.state_dict(), "accuracy": 0.5}
    payload["architecture"] = other.architecture
    torch.save(payload, path)
    _, accuracy = load_or_train_classifier(digits, tmp_path)
    assert accuracy >= 0.95


def test_version_is_part_of_the_cache_key(tmp_path: Path) -> None:
    assert clf.cache_path(tmp_path, "fashion_mnist", 3).name == "classifier-fashion_mnist-v3.pt"


def test_unlabelled_dataset_is_rejected(tmp_path: Path) -> None:
    unlabelled = Dataset(name="blobs", kind="images", train=torch.zeros(10, 4))
    with pytest.raises(ValueError, match="train_labels, test, test_labels, num_classes"):
        load_or_train_classifier(unlabelled, tmp_path)
