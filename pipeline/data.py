"""The dataset registry: ``data.name`` -> how to build that dataset as in-memory tensors.

Config validation, cache keys and the metrics' applicability read ``DATASETS``; the readers
(pipeline/readers, pipeline/tables) take plain arguments and return a ``Dataset``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from pipeline.dataset import Dataset, TableParts
from pipeline.errors import DataError
from pipeline.readers.idx import DEBIAN_FASHION_MNIST, IdxFolder, digits
from pipeline.readers.mixtures import grid25_centres, mixture, ring8_centres


class DataSettings(Protocol):
    """What the entries read of ``data.*`` (config.DataConfig has these): plain values, so that
    this floor imports nothing from the config above it."""

    name: str
    root: str | None
    n_points: int
    radius: float
    std: float | None
    path: str | None
    columns: list[str] | None
    label: str | None
    categorical: list[str]
    dropna: bool
    test_fraction: float
    numeric_encoding: str



@dataclass(frozen=True)
class Mixture:
    """A 2-D Gaussian mixture with known mode centres, drawn from the run's seed."""

    centres: Callable[[float], Tensor]  # data.radius -> (K, 2) centres
    std: float  # per-coordinate std of a component when data.std is null (PacGAN's values)
    kind: Literal["points"] = "points"
    seeded: bool = True  # the training points depend on the seed (so do caches of them)
    has_centres: bool = True
    reads_path: bool = False  # data.path names its file or folder

    def load(self, name: str, cfg: DataSettings, seed: int) -> Dataset:
        return mixture(name, self.centres(cfg.radius), cfg.n_points, cfg.std or self.std, seed)


@dataclass(frozen=True)
class Images:
    """Labelled images in [-1, 1] with a held-out split (for the FID feature classifier)."""

    read: Callable[[str, str | None], Dataset]  # (name, data.root) -> dataset
    kind: Literal["images"] = "images"
    seeded: bool = False  # fixed files: one cache entry serves every seed
    has_centres: bool = False
    reads_path: bool = False

    def load(self, name: str, cfg: DataSettings, seed: int) -> Dataset:
        return self.read(name, cfg.root)


@dataclass(frozen=True)
class TableFile:
    """A user's table (data.path: .csv, .tsv, .parquet, .npy), encoded for the networks by a
    TableTransformer and split into training and held-out rows from the seed."""

    kind: Literal["table"] = "table"
    seeded: bool = True  # the held-out split is drawn from the seed
    has_centres: bool = False
    reads_path: bool = True

    def load(self, name: str, cfg: DataSettings, seed: int) -> Dataset:
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

    def load(self, name: str, cfg: DataSettings, seed: int) -> Dataset:
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


def load_dataset(cfg: DataSettings, seed: int = 0) -> Dataset:
    """Build the dataset named by ``cfg.name``; mixtures are drawn from ``seed``."""
    info = DATASETS.get(cfg.name)
    if info is None:
        raise DataError(f"unknown dataset {cfg.name!r} (expected one of {', '.join(DATASETS)})")
    return info.load(cfg.name, cfg, seed)


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
