"""Full-size check on Fashion-MNIST: classifier accuracy and the cost of one evaluation.

Slow (trains the feature classifier, ~30 s on 2 cores): run with `pytest -m slow`.
"""

from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import Dataset
from pipeline.metrics import Evaluator

FOLDER = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes: zero, type, rank, the big-endian sizes, then the data."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    _, dtype, ndim = struct.unpack(">HBB", raw[:4])
    assert dtype == 0x08, f"{path}: not unsigned bytes"
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist() -> Dataset:
    def images(name: str) -> torch.Tensor:
        flat = read_idx(FOLDER / name).reshape(-1, 28 * 28).astype(np.float32)
        return torch.from_numpy(flat / 127.5 - 1.0)

    def labels(name: str) -> torch.Tensor:
        return torch.from_numpy(read_idx(FOLDER / name).astype(np.int64))

    return Dataset(
        name="fashion_mnist",
        kind="images",
        train=images("train-images-idx3-ubyte.gz"),
        train_labels=labels("train-labels-idx1-ubyte.gz"),
        test=images("t10k-images-idx3-ubyte.gz"),
        test_labels=labels("t10k-labels-idx1-ubyte.gz"),
        image_shape=(28, 28),
        num_classes=10,
    )


@pytest.mark.slow
@pytest.mark.skipif(
    not FOLDER.is_dir(),
    reason=f"{FOLDER} missing: apt-get install dataset-fashion-mnist",
)
def test_fashion_mnist_classifier_and_evaluation_time(tmp_path: Path) -> None:
    dataset = fashion_mnist()
    assert dataset.train.shape == (60_000, 784) and dataset.test is not None
    assert dataset.train.min() == -1.0 and dataset.train.max() == 1.0

    start = time.perf_counter()
    evaluator = Evaluator(dataset, cache_dir=tmp_path)
    setup_s = time.perf_counter() - start
    assert evaluator.classifier_accuracy is not None
    print(f"\nclassifier test accuracy {evaluator.classifier_accuracy:.4f}, setup {setup_s:.1f} s")
    assert evaluator.classifier_accuracy >= 0.88

    # Best of two, as timeit does: the budget is for the evaluation, not for whatever else the
    # machine's cores are doing. A run evaluates every epoch, so the second call is the usual one.
    times = []
    for _ in range(2):
        start = time.perf_counter()
        scores = evaluator.evaluate(dataset.test)  # 10,000 held-out images
        times.append(time.perf_counter() - start)
    print(f"evaluate(10,000 samples) {', '.join(f'{t:.2f}' for t in times)} s: {scores}")
    assert min(times) < 10
    assert scores["classes_covered"] == 10
    assert scores["class_kl"] < 0.02
    assert scores["ndb_fraction"] < 0.2
