from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.batches import TensorBatches
from pipeline.config import DataConfig
from pipeline.data import load_dataset
from pipeline.errors import DataError
from pipeline.readers.idx import digits
from pipeline.readers.mixtures import grid25, ring8


def test_ring8_has_eight_distinct_angles() -> None:
    ds = ring8(n=8000, seed=0)
    angles = torch.tensor([2 * math.pi * k / 8 for k in range(8)])
    expected = torch.stack([angles.cos(), angles.sin()], dim=1)
    assert torch.allclose(ds.centres, expected, atol=1e-6)
    assert len({(round(x, 4), round(y, 4)) for x, y in ds.centres.tolist()}) == 8
    assert torch.allclose(ds.centres.norm(dim=1), torch.ones(8))
    assert ds.train.shape == (8000, 2)
    assert ds.std == 0.01


def test_grid25_modes_and_spread() -> None:
    ds = grid25(n=100_000, seed=1)
    assert ds.train.shape == (100_000, 2)
    assert sorted({x for x, _ in ds.centres.tolist()}) == [-4, -2, 0, 2, 4]
    nearest = torch.cdist(ds.train, ds.centres).argmin(dim=1)
    offsets = ds.train - ds.centres[nearest]
    assert offsets.std().item() == pytest.approx(0.05, rel=0.03)
    counts = torch.bincount(nearest, minlength=25).float()
    assert counts.min() > 0.8 * 4000 and counts.max() < 1.2 * 4000


def test_mixtures_follow_the_seed() -> None:
    assert torch.equal(grid25(n=100, seed=3).train, grid25(n=100, seed=3).train)
    assert not torch.equal(grid25(n=100, seed=3).train, grid25(n=100, seed=4).train)


def test_configurable_radius_std_count() -> None:
    ds = load_dataset(DataConfig(name="ring8", n_points=500, radius=2.0, std=0.1))
    assert ds.train.shape == (500, 2)
    assert ds.std == 0.1
    assert torch.allclose(ds.centres.norm(dim=1), torch.full((8,), 2.0))


def test_digits_scaled_and_split() -> None:
    ds = digits()
    assert ds.train.shape[1] == 64 and ds.image_shape == (8, 8)
    assert len(ds.train) + len(ds.test) == 1797
    assert ds.train.min() == -1.0 and ds.train.max() == 1.0
    assert set(ds.train_labels.tolist()) == set(range(10))


def write_idx(folder: Path, n: int = 20, corrupt: str | None = None) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", n), ("t10k", n // 2)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        header = struct.pack(">HBB3I", 0, 8, 3, count, 28, 28)
        raw_images = header + images.tobytes()
        if corrupt == prefix:
            raw_images = raw_images[:-100]
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw_images))
        lab = struct.pack(">HBBI", 0, 8, 1, count) + labels.tobytes()
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(lab))


def test_idx_reader(tmp_path: Path) -> None:
    write_idx(tmp_path / "fm")
    ds = load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path / "fm")))
    assert ds.train.shape == (20, 784) and ds.test.shape == (10, 784)
    assert ds.image_shape == (28, 28)
    assert ds.train.min() >= -1.0 and ds.train.max() <= 1.0
    assert ds.train_labels.dtype == torch.int64
    # MLflow's dataset input names the file the training images came from
    assert ds.source == str((tmp_path / "fm" / "train-images-idx3-ubyte.gz").resolve())


def test_idx_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_idx(tmp_path / "m")
    monkeypatch.setenv("MNIST_DIR", str(tmp_path / "m"))
    assert load_dataset(DataConfig(name="mnist")).train.shape == (20, 784)


def test_missing_idx_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing .*apt-get install dataset-fashion-mnist"):
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))


def test_corrupt_idx(tmp_path: Path) -> None:
    write_idx(tmp_path / "bad", corrupt="train")
    with pytest.raises(DataError, match="corrupt file"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path / "bad")))


def test_batches_cover_each_epoch_once_and_reshuffle() -> None:
    data = torch.arange(10).float().unsqueeze(1)
    batches = TensorBatches(data, 3, seed=0)
    assert len(batches) == 3
    first = torch.cat(list(batches)).flatten().tolist()
    second = torch.cat(list(batches)).flatten().tolist()
    assert len(set(first)) == 9 and len(set(second)) == 9
    assert first != second
    again = TensorBatches(data, 3, seed=0)
    assert torch.cat(list(again)).flatten().tolist() == first


def test_batches_fixed_steps_wrap_around() -> None:
    batches = TensorBatches(torch.zeros(10, 2), 4, steps=5)
    shapes = [b.shape for b in batches]
    assert shapes == [(4, 2)] * 5
