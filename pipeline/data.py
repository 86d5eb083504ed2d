"""Datasets as in-memory tensors, and the batch iterator that feeds the Trainer.

Every dataset is small enough to live in memory (Fashion-MNIST is 60,000 x 784 float32 = 188 MB),
so batches are slices of a shuffled index rather than per-sample DataLoader collation.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from pipeline.errors import DataError

if TYPE_CHECKING:  # config sits above data: it reads DATASETS to validate data.name
    import pandas as pd

    from pipeline.config import DataConfig
    from pipeline.tables.transform import TableTransformer

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class TableParts:
    """What a table dataset has beyond its encoded tensors: the fitted encoding and both splits
    in their original columns and dtypes (the table metrics compare decoded rows)."""

    transformer: TableTransformer
    train_frame: pd.DataFrame  # the training split, as read (original columns and dtypes)
    test_frame: pd.DataFrame  # the held-out split the metrics compare against
    label: str | None = None  # data.label: its categories are the classes (class metrics)


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: Literal["points", "images", "table"]
    train: Tensor  # (N, D) float32 in the model's scale: [-1, 1] images, raw 2-D coordinates
    train_labels: Tensor | None = None  # (N,) int64 class labels (images only)
    test: Tensor | None = None  # held-out split (images): tests the FID feature classifier
    test_labels: Tensor | None = None
    image_shape: tuple[int, ...] | None = None  # (H, W) for images, (H, W, 3) for RGB
    num_classes: int | None = None
    centres: Tensor | None = None  # (K, 2) mode centres (mixtures only)
    std: float | None = None  # per-coordinate std of each mixture component
    # Where the training data came from, for MLflow's dataset inputs: the training-images file
    # for files, else a description of the code that drew it (keys and values as strings).
    source: str | dict[str, str] | None = None
    table: TableParts | None = None  # tables only; train/test hold the encoded splits

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    @property
    def is_images(self) -> bool:
        return self.kind == "images"

    @property
    def has_centres(self) -> bool:
        return self.centres is not None


# --- the registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mixture:
    """A 2-D Gaussian mixture with known mode centres, drawn from the run's seed."""

    centres: Callable[[float], Tensor]  # data.radius -> (K, 2) centres
    std: float  # per-coordinate std of a component when data.std is null (PacGAN's values)
    kind: Literal["points"] = "points"
    seeded: bool = True  # the training points depend on the seed (so do caches of them)
    has_centres: bool = True
    reads_path: bool = False  # data.path names its file or folder

    def load(self, name: str, cfg: DataConfig, seed: int) -> Dataset:
        return mixture(name, self.centres(cfg.radius), cfg.n_points, cfg.std or self.std, seed)


@dataclass(frozen=True)
class Images:
    """Labelled images in [-1, 1] with a held-out split (for the FID feature classifier)."""

    read: Callable[[str, str | None], Dataset]  # (name, data.root) -> dataset
    kind: Literal["images"] = "images"
    seeded: bool = False  # fixed files: one cache entry serves every seed
    has_centres: bool = False
    reads_path: bool = False

    def load(self, name: str, cfg: DataConfig, seed: int) -> Dataset:
        return self.read(name, cfg.root)


@dataclass(frozen=True)
class TableFile:
    """A user's table (data.path: .csv, .tsv, .parquet, .npy), encoded for the networks by a
    TableTransformer and split into training and held-out rows from the seed."""

    kind: Literal["table"] = "table"
    seeded: bool = True  # the held-out split is drawn from the seed
    has_centres: bool = False
    reads_path: bool = True

    def load(self, name: str, cfg: DataConfig, seed: int) -> Dataset:
        from pipeline.tables.read import read_table, split_rows
        from pipeline.tables.transform import TableTransformer

        if not cfg.path:
            raise DataError("data.name=table needs data.path=FILE (.csv, .tsv, .parquet or "
                            ".npy); `python -m pipeline tables --write NAME` writes a shipped one")
        table = read_table(cfg.path, columns=cfg.columns, label=cfg.label,
                           categorical=cfg.categorical, dropna=cfg.dropna)
        train_frame, test_frame = split_rows(table.frame, cfg.test_fraction, seed)
        # Fitted on every row, as CTGAN does: a category seen only in the held-out rows must
        # still have a place in the encoding; the networks only ever train on the train split.
        transformer = TableTransformer.fit(table.frame, table.categorical, cfg.numeric_encoding,
                                           seed=seed)
        labels: dict[str, Any] = {}
        if table.label is not None:
            categories = sorted(map(str, table.frame[table.label].unique()))
            code = {c: i for i, c in enumerate(categories)}
            labels = {
                "train_labels": torch.tensor([code[str(v)] for v in train_frame[table.label]]),
                "test_labels": torch.tensor([code[str(v)] for v in test_frame[table.label]]),
                "num_classes": len(categories),
            }
        stem = Path(table.source).stem
        return Dataset(
            name=stem, kind="table",
            train=torch.from_numpy(transformer.transform(train_frame)),
            test=torch.from_numpy(transformer.transform(test_frame)),
            source={"file": table.source, "sha256": table.digest, "rows": str(len(table.frame)),
                    "columns": ",".join(table.frame.columns)[:500],
                    "split": f"test_fraction={cfg.test_fraction}, seed={seed}"},
            table=TableParts(transformer, train_frame, test_frame, table.label),
            **labels,
        )


IMAGE_FOLDER_SPLIT_SEED = 0


@dataclass(frozen=True)
class ImageFolder:
    """A user's folder of same-sized PNG/JPEG images (data.path), labelled by sub-folder if its
    images are sorted into them. The held-out split is fixed (seed 0, as for digits): the cached
    feature classifier is trained on the training split, so every run must share it."""

    kind: Literal["images"] = "images"
    seeded: bool = False
    has_centres: bool = False
    reads_path: bool = True

    def load(self, name: str, cfg: DataConfig, seed: int) -> Dataset:
        from pipeline.readers.image_folder import image_folder

        if not cfg.path:
            raise DataError("data.name=images needs data.path=FOLDER (PNG/JPEG files of one "
                            "size, optionally in one sub-folder per class)")
        folder = Path(cfg.path).expanduser()
        dataset = image_folder(folder.name or "images", folder, test_fraction=cfg.test_fraction,
                               seed=IMAGE_FOLDER_SPLIT_SEED)
        # The feature classifier is cached by dataset name: name it by content, so that two
        # folders (or an edited one) never share a classifier.
        digest = dataset.source["digest"][:12] if isinstance(dataset.source, dict) else ""
        return dataclasses.replace(dataset, name=f"{dataset.name}-{digest}")


DatasetInfo = Mixture | Images | TableFile | ImageFolder


def load_dataset(cfg: DataConfig, seed: int = 0) -> Dataset:
    """Build the dataset named by ``cfg.name``; mixtures are drawn from ``seed``."""
    info = DATASETS.get(cfg.name)
    if info is None:
        raise DataError(f"unknown dataset {cfg.name!r} (expected one of {', '.join(DATASETS)})")
    return info.load(cfg.name, cfg, seed)


# --- 2-D Gaussian mixtures (PacGAN's definitions) ----------------------------------------------


def ring_centres(k: int, radius: float = 1.0) -> Tensor:
    # 2*pi*i/k for i < k: linspace(0, 2*pi, k) would repeat angle 0 as 2*pi and lose a mode.
    angles = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def grid_centres(side: int, spacing: float = 2.0) -> Tensor:
    """side x side centres, ``spacing`` apart, centred on the origin."""
    axis = spacing * (torch.arange(side, dtype=torch.float32) - (side - 1) / 2)
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def ring8_centres(radius: float = 1.0) -> Tensor:
    return ring_centres(8, radius)


def grid25_centres() -> Tensor:
    return grid_centres(5)


def mixture(name: str, centres: Tensor, n: int, std: float, seed: int) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    which = torch.randint(len(centres), (n,), generator=gen)
    points = centres[which] + std * torch.randn(n, 2, generator=gen)
    return Dataset(name=name, kind="points", train=points, centres=centres, std=std,
                   source={"drawn_by": "pipeline.data.mixture", "modes": str(len(centres)),
                           "n": str(n), "std": str(std), "seed": str(seed)})


def ring8(n: int = 100_000, radius: float = 1.0, std: float = 0.01, seed: int = 0) -> Dataset:
    return mixture("ring8", ring8_centres(radius), n, std, seed)


def grid25(n: int = 100_000, std: float = 0.05, seed: int = 0) -> Dataset:
    return mixture("grid25", grid25_centres(), n, std, seed)


# --- images ------------------------------------------------------------------------------------


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


# The registry: config validation, cache keys and the metrics' applicability read it.
DATASETS: dict[str, DatasetInfo] = {
    "ring8": Mixture(ring8_centres, std=0.01),
    "grid25": Mixture(lambda radius: grid25_centres(), std=0.05),
    "digits": Images(digits),
    "fashion_mnist": Images(IdxFolder(
        "FASHION_MNIST_DIR",
        "install Debian's package (apt-get install dataset-fashion-mnist, files in "
        f"{DEBIAN_FASHION_MNIST}) or download the four *-ubyte.gz files from "
        "github.com/zalandoresearch/fashion-mnist into a folder and pass data.root=FOLDER "
        "or set FASHION_MNIST_DIR",
        default=DEBIAN_FASHION_MNIST,
    )),
    "table": TableFile(),
    "images": ImageFolder(),
    "mnist": Images(IdxFolder(
        "MNIST_DIR",
        "download the four MNIST *-ubyte.gz files into a folder and pass data.root=FOLDER "
        "or set MNIST_DIR",
    )),
}
