"""Image sets on disk or in packages: IDX files (Fashion-MNIST, MNIST) and scikit-learn's digits."""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pipeline.dataset import Dataset
from pipeline.errors import DataError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")



def digits(name: str = "digits", root: str | None = None) -> Dataset:
    """scikit-learn's bundled 8x8 digits (offline), with a fixed 80/20 split for the classifier."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.data.astype(np.float32) / 16.0 * 2.0 - 1.0)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    # A split fixed independently of the GAN seed, so the cached classifier is valid for all runs.
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(images))
    tr, te = order[:cut], order[cut:]
    return Dataset(
        name=name, kind="images", train=images[tr], train_labels=labels[tr],
        test=images[te], test_labels=labels[te], image_shape=(8, 8), num_classes=10,
        source={"drawn_by": "sklearn.datasets.load_digits", "split": "first 80% of a seed-0 "
                "permutation"},
    )


IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


@dataclass(frozen=True)
class IdxFolder:
    """Where a dataset's four IDX files are: data.root, else ``env_var``, else ``default``."""

    env_var: str
    how_to_get: str
    default: Path | None = None

    def __call__(self, name: str, root: str | None) -> Dataset:
        return idx_dataset(name, self.folder(name, root), self.how_to_get)

    def folder(self, name: str, root: str | None) -> Path:
        given = root or os.environ.get(self.env_var)
        if given:
            return Path(given).expanduser()
        if self.default is not None:
            return self.default
        raise DataError(f"{name}: no folder given; {self.how_to_get}")


def idx_dataset(name: str, folder: Path, how_to_get: str = "") -> Dataset:
    arrays = {key: read_idx(name, folder / file, how_to_get) for key, file in IDX_FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise DataError(f"{name}: {split} images and labels differ in count in {folder}")
    height, width = arrays["train_images"].shape[1:]

    def scale(images: np.ndarray) -> Tensor:
        flat = images.reshape(len(images), -1).astype(np.float32)
        return torch.from_numpy(flat / 127.5 - 1.0)

    return Dataset(
        name=name, kind="images",
        train=scale(arrays["train_images"]),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test=scale(arrays["test_images"]),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        image_shape=(int(height), int(width)), num_classes=10,
        source=str((folder / IDX_FILES["train_images"]).resolve()),
    )


def read_idx(name: str, path: Path, how_to_get: str = "") -> np.ndarray:
    """Read one (optionally gzipped) IDX file of unsigned bytes: magic, dims, then the data."""
    if not path.exists() and path.suffix == ".gz" and path.with_suffix("").exists():
        path = path.with_suffix("")  # an already unpacked copy
    if not path.exists():
        raise DataError(f"{name}: missing {path}; {how_to_get}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
            raise ValueError(f"bad IDX magic number {raw[:4].hex()}")
        dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        if data.size != int(np.prod(dims)):
            raise ValueError(f"expected {int(np.prod(dims))} values, found {data.size}")
    except (OSError, EOFError, ValueError, struct.error) as exc:
        raise DataError(f"{name}: corrupt file {path} ({exc}); {how_to_get}") from None
    return data.reshape(dims)
