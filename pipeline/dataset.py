"""The Dataset record every reader returns: in-memory tensors in the model's scale, plus what
the metrics and pictures need to know about them (labels, mode centres, a table's encoding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.tables.transform import TableTransformer


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
