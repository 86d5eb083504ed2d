"""A folder of same-sized PNG/JPEG files -> an image Dataset, labelled by sub-folder if sorted so.

Layout: either every image sits directly in the folder (no labels), or every image sits one level
down in a sub-folder whose name is its class (``DIR/cat/1.png``, ``DIR/dog/7.jpg``). Sub-folders
that hold no images are ignored, as are names starting with "." (macOS writes ``._x.png``
AppleDouble files beside the real ones, and Pillow cannot read them).

Modes: 1/L/LA are read as grayscale, P/PA/RGB/RGBA/CMYK/YCbCr as RGB (alpha is dropped). A folder
that mixes grayscale and colour is read entirely as RGB: copying the grey level into three
channels loses nothing, and a photo set with a few grey pictures in it (common in scraped sets)
then loads as it would in torchvision's ImageFolder. 16-bit and float images are refused: Pillow's
conversion to 8 bits clips them (1000 -> 255) rather than rescaling.

Rows are flat channels-last vectors, (N, H*W) or (N, H*W*3), in [-1, 1]; ``image_shape`` is numpy's
shape of one picture, (H, W) or (H, W, 3), so ``row.reshape(image_shape)`` is the picture.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.dataset import Dataset
from pipeline.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# The decoded float32 tensor lives in host memory and again on the training device (TensorBatches
# slices it there) while the evaluator embeds it: 2 GiB is ~11x Fashion-MNIST's 188 MB and still
# leaves room for the models on an 8 GB GPU. 64x64 RGB images: ~43,000 of them.
MAX_IMAGES_BYTES = 2 * 1024**3

GREY_MODES = frozenset({"1", "L", "LA"})
COLOUR_MODES = frozenset({"P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})


@dataclass(frozen=True)
class _Header:
    path: Path
    rel: str  # the path relative to the folder, with "/" (messages, digest, sort order)
    size: tuple[int, int]  # (width, height), as Pillow reports it
    grey: bool


def image_folder(
    name: str,
    path: str | Path,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    max_bytes: int = MAX_IMAGES_BYTES,
) -> Dataset:
    """Read every image under ``path`` into a train/test split drawn from ``seed``.

    The split is stratified when the images are labelled: each class keeps ``test_fraction`` of
    its images (rounded, at least 1 and at most all but 1) for the test split. ``source`` holds
    the resolved folder, a sha256 over the sorted relative paths and file bytes (it changes when
    any file is added, removed, renamed or edited), the image count and the split.
    """
    if not 0 < test_fraction < 1:
        raise DataError(f"{name}: test_fraction must lie strictly between 0 and 1, "
                        f"got {test_fraction}")
    folder = Path(path).expanduser().resolve()
    if not folder.exists():
        raise DataError(f"{name}: image folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{name}: {folder} is not a folder (data.path names a folder of images)")
    files = _image_files(name, folder)
    classes = sorted({rel.split("/")[0] for rel in files if "/" in rel})
    labelled = bool(classes)
    if labelled and any("/" not in rel for rel in files):
        loose = next(rel for rel in files if "/" not in rel)
        raise DataError(f"{name}: {folder} mixes images in class sub-folders with images in the "
                        f"folder itself ({loose}); put every image in a class sub-folder, or none")

    first = _header(name, folder, files[0])
    _check_bound(name, folder, len(files), first.size, 1 if first.grey else 3, max_bytes)
    headers = [first] + [_header(name, folder, rel) for rel in files[1:]]
    for h in headers:
        if h.size != first.size:
            raise DataError(f"{name}: images in {folder} differ in size: {first.rel} is "
                            f"{_wxh(first.size)}, {h.rel} is {_wxh(h.size)} (width x height); "
                            "resize them to one size")
    grey = all(h.grey for h in headers)
    channels = 1 if grey else 3
    _check_bound(name, folder, len(files), first.size, channels, max_bytes)

    class_of = {c: i for i, c in enumerate(classes)}
    labels = (np.array([class_of[rel.split("/")[0]] for rel in files], dtype=np.int64)
              if labelled else None)
    train_idx, test_idx = split_indices(name, folder, labels, classes, len(files), test_fraction,
                                        seed)
    # Decode straight into split order (train rows, then test rows) so that the only full-size
    # copies are the uint8 array and the float32 result.
    order = np.concatenate([train_idx, test_idx])
    row_of = np.empty(len(files), dtype=np.int64)
    row_of[order] = np.arange(len(files))
    width, height = first.size
    pixels = np.empty((len(files), height, width, channels), dtype=np.uint8)
    digest = hashlib.sha256()
    for i, h in enumerate(headers):  # sorted order, so that the digest ignores the split
        raw = _read(name, h.path)
        digest.update(h.rel.encode() + b"\0" + len(raw).to_bytes(8, "little") + raw)
        pixels[row_of[i]] = _decode(name, h.path, raw, grey).reshape(height, width, channels)

    def scale(rows: np.ndarray) -> torch.Tensor:
        # 255 / 127.5 - 1 is exactly 1.0 and 0 -> -1.0, as for the IDX and digits sets.
        return torch.from_numpy(rows.reshape(len(rows), -1).astype(np.float32) / 127.5 - 1.0)

    n_train = len(train_idx)
    return Dataset(
        name=name, kind="images",
        train=scale(pixels[:n_train]), test=scale(pixels[n_train:]),
        train_labels=None if labels is None else torch.from_numpy(labels[train_idx]),
        test_labels=None if labels is None else torch.from_numpy(labels[test_idx]),
        image_shape=(height, width) if grey else (height, width, 3),
        num_classes=len(classes) if labelled else None,
        source={"folder": str(folder), "digest": digest.hexdigest(), "images": str(len(files)),
                "split": f"{'stratified ' if labelled else ''}test_fraction={test_fraction}, "
                         f"seed={seed}"},
    )


def split_indices(
    name: str,
    folder: Path,
    labels: np.ndarray | None,
    classes: list[str],
    n: int,
    test_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices into ``n`` items: one seeded permutation, of which each class (or the
    whole set, unlabelled) gives its first round(test_fraction * count) items to the test split.
    Both come out in permutation order, so neither is grouped by class."""
    perm = np.random.default_rng(seed).permutation(n)
    groups = [perm] if labels is None else [perm[labels[perm] == c] for c in range(len(classes))]
    is_test = np.zeros(n, dtype=bool)
    for c, members in enumerate(groups):
        if len(members) < 2:
            where = f"class folder {folder / classes[c]}" if labels is not None else str(folder)
            raise DataError(f"{name}: {where} has {len(members)} image(s); a train/test split "
                            "needs at least 2")
        k = min(len(members) - 1, max(1, math.floor(test_fraction * len(members) + 0.5)))
        is_test[members[:k]] = True
    return perm[~is_test[perm]], perm[is_test[perm]]


def _image_files(name: str, folder: Path) -> list[str]:
    """The images' paths relative to ``folder``, sorted (so the split ignores the filesystem's
    listing order), at most one sub-folder deep."""
    found: list[str] = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        if len(rel.parts) > 2:
            raise DataError(f"{name}: {folder / rel} is more than one sub-folder deep; put each "
                            f"class's images directly in {folder}/CLASS")
        found.append(rel.as_posix())
    if not found:
        raise DataError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder} or its "
                        "sub-folders")
    return sorted(found)


def _header(name: str, folder: Path, rel: str) -> _Header:
    """Size and mode from the file's header; Pillow decodes no pixels until they are asked for."""
    path = folder / rel
    try:
        with Image.open(path) as im:
            size, mode = im.size, im.mode
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{name}: Pillow cannot read {path} ({exc})") from None
    if mode not in GREY_MODES | COLOUR_MODES:
        raise DataError(f"{name}: {path} has mode {mode}; only 8-bit grayscale or colour images "
                        "are read (save it with 8 bits per channel)")
    return _Header(path, rel, size, mode in GREY_MODES)


def _check_bound(name: str, folder: Path, count: int, size: tuple[int, int], channels: int,
                 max_bytes: int) -> None:
    need = count * size[0] * size[1] * channels * 4  # float32
    if need > max_bytes:
        raise DataError(f"{name}: {count} images of {_wxh(size)} x {channels} channel(s) in "
                        f"{folder} need {_amount(need)} as float32, over the bound of "
                        f"{_amount(max_bytes)} (max_bytes); use fewer or smaller images")


def _amount(n: int) -> str:
    return f"{n:,} bytes" if n < 2**20 else f"{n / 2**20:,.0f} MiB"


def _read(name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{name}: cannot read {path} ({exc.strerror})") from None


def _decode(name: str, path: Path, raw: bytes, grey: bool) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(raw)) as im:
            return np.asarray(im.convert("L" if grey else "RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        # A truncated or corrupt body passes the header check and fails here.
        raise DataError(f"{name}: Pillow cannot decode {path} ({exc})") from None


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
