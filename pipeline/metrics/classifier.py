"""The MLP classifier whose penultimate activations are the image feature space for FID & co.

Inception weights cannot be downloaded here, and Inception features of 28x28 greyscale images are
questionable anyway, so each image dataset gets a small classifier trained on its own labels.
It is cached on disk, keyed by dataset name and CLASSIFIER_VERSION: bump the version whenever
the architecture or training changes, so that scores from different feature spaces never mix.
Its training is seeded, yet another machine's CPU kernels round differently and train a slightly
different classifier (two caches' Fashion-MNIST floors: FID 0.31 and 0.30), so the weights'
digest names the feature space exactly (``weights_digest``, in the ``fid_features`` tag).
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from pipeline.dataset import Dataset

CLASSIFIER_VERSION = 1
HIDDEN = (256, 128)
DROPOUT = 0.2
# Fixed, and independent of the GAN seed: every run on a dataset must share one feature space.
TRAIN_SEED = 20240501
BATCH_SIZE = 256
LEARNING_RATE = 2e-3
EPOCHS = 20
MIN_STEPS = 500  # small datasets (8x8 digits: 1,437 images) need many epochs to converge
EMBED_BATCH = 8192  # rows per forward pass: bounds memory when embedding a 60,000-image split
# What torch.load raises for a truncated, foreign or corrupt file.
UNREADABLE = (OSError, EOFError, RuntimeError, KeyError, TypeError, ValueError, UnpicklingError)


class MLPClassifier(nn.Module):
    """in -> 256 -> 128 -> classes, ReLU, dropout; ``features`` is the 128-d layer."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: tuple[int, ...] = HIDDEN,
        dropout: float = DROPOUT,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for i, size in enumerate(hidden):
            if i > 0:
                layers.append(nn.Dropout(dropout))
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))
        self.num_features = width
        self.architecture = architecture(in_features, num_classes, hidden, dropout)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def architecture(
    in_features: int,
    num_classes: int,
    hidden: tuple[int, ...] = HIDDEN,
    dropout: float = DROPOUT,
) -> dict[str, Any]:
    """What the cache records, and what a cached model must match to be reused."""
    return {
        "in_features": in_features,
        "num_classes": num_classes,
        "hidden": list(hidden),
        "dropout": dropout,
    }


def weights_digest(model: nn.Module) -> str:
    """12 hex digits of a SHA-256 over the weights: equal for one feature space, different for a
    classifier trained again elsewhere (copy runs/cache to share one)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def cache_path(cache_dir: Path, name: str, version: int = CLASSIFIER_VERSION) -> Path:
    return Path(cache_dir) / f"classifier-{name}-v{version}.pt"


def load_or_train_classifier(
    dataset: Dataset,
    cache_dir: Path,
    version: int = CLASSIFIER_VERSION,
    device: str | torch.device = "cpu",
) -> tuple[MLPClassifier, float]:
    """The cached classifier for this dataset, trained (and cached) first if there is none.

    Returns the model in eval mode and its accuracy on the dataset's held-out split.
    """
    _check_labelled(dataset)
    path = cache_path(cache_dir, dataset.name, version)
    expected = architecture(dataset.dim, int(dataset.num_classes or 0))
    cached = _load(path, expected)
    if cached is not None:
        model, accuracy = cached
    else:
        model = train_classifier(dataset, device=device)
        accuracy = test_accuracy(model, dataset, device=device)
        _save_atomically(path, model, accuracy, version)
    return model.to(device).eval(), accuracy


def train_classifier(dataset: Dataset, device: str | torch.device = "cpu") -> MLPClassifier:
    """Adam on full-batch tensors, sliced by a seeded permutation, with a cosine learning rate."""
    _check_labelled(dataset)
    assert dataset.train_labels is not None and dataset.num_classes is not None
    x = dataset.train.to(device)
    y = dataset.train_labels.to(device)
    n = len(x)
    batch = min(BATCH_SIZE, n)
    per_epoch = n // batch
    epochs = max(EPOCHS, math.ceil(MIN_STEPS / per_epoch))
    # fork_rng: seeding must not disturb the caller's (the GAN's) random stream.
    with torch.random.fork_rng(devices=[]), _one_cpu_thread():
        torch.manual_seed(TRAIN_SEED)
        gen = torch.Generator().manual_seed(TRAIN_SEED)
        model = MLPClassifier(dataset.dim, dataset.num_classes).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * per_epoch)
        loss_fn = nn.CrossEntropyLoss()
        bar = tqdm(
            total=epochs * per_epoch,
            desc=f"FID classifier ({dataset.name})",
            unit="step",
            file=sys.stderr,
            leave=False,
            disable=None,  # only on a terminal: no progress lines in a sweep's log file
        )
        with bar:
            for _ in range(epochs):
                order = torch.randperm(n, generator=gen).to(device)
                for step in range(per_epoch):
                    idx = order[step * batch : (step + 1) * batch]
                    loss = loss_fn(model(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@contextmanager
def _one_cpu_thread() -> Iterator[None]:
    """Train on one CPU thread, whatever the process uses.

    The result then does not depend on the thread count (which changes the order of float
    reductions), and a second busy process cannot stall every step: with two threads on two busy
    cores, OpenMP's barriers made training up to 10x slower, on one thread it is ~1.3x slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def test_accuracy(
    model: MLPClassifier, dataset: Dataset, device: str | torch.device = "cpu"
) -> float:
    assert dataset.test is not None and dataset.test_labels is not None
    model.eval()
    correct = 0
    for start in range(0, len(dataset.test), EMBED_BATCH):
        logits = model(dataset.test[start : start + EMBED_BATCH].to(device))
        labels = dataset.test_labels[start : start + EMBED_BATCH].to(device)
        correct += int((logits.argmax(dim=1) == labels).sum())
    return correct / len(dataset.test)


def _check_labelled(dataset: Dataset) -> None:
    missing = [
        field
        for field in ("train_labels", "test", "test_labels", "num_classes")
        if getattr(dataset, field) is None
    ]
    if missing:
        raise ValueError(
            f"dataset {dataset.name!r} lacks {', '.join(missing)}: the FID feature classifier "
            "needs labelled train and held-out test splits"
        )


def _load(path: Path, expected: dict[str, Any]) -> tuple[MLPClassifier, float] | None:
    """The cached model, or None when absent, unreadable or of another architecture."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["architecture"] != expected:
            return None
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten anyway
            model = MLPClassifier(
                expected["in_features"],
                expected["num_classes"],
                tuple(expected["hidden"]),
                expected["dropout"],
            )
        model.load_state_dict(payload["state_dict"])
        return model.eval(), float(payload["accuracy"])
    except UNREADABLE as exc:
        warnings.warn(f"unreadable classifier cache {path} ({exc}): retraining", stacklevel=3)
        return None


def _save_atomically(path: Path, model: MLPClassifier, accuracy: float, version: int) -> None:
    # Write a sibling temp file and rename: a concurrent reader sees the old file or the new one,
    # never a half-written one (os.replace is atomic within a file system).
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "accuracy": accuracy,
        "architecture": model.architecture,
        "version": version,
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
