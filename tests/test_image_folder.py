from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import DataError
from pipeline.readers.image_folder import image_folder

H, W = 3, 4  # unequal, so a transposed read changes the shape


def save(path: Path, pixels: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(pixels.astype(np.uint8))
    (im.convert(mode) if mode else im).save(path)


def grey(level: int, h: int = H, w: int = W) -> np.ndarray:
    return np.full((h, w), level, dtype=np.uint8)


def rows_with_labels(x: torch.Tensor, y: torch.Tensor | None) -> set[tuple[float, ...]]:
    labels = y.tolist() if y is not None else [-1] * len(x)
    return {(*row, lab) for row, lab in zip(x.tolist(), labels, strict=True)}


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    """dog: 10, cat: 5, bird: 3 images, each a solid grey level unique in the set, plus one
    cat image that is white at its first pixel and black elsewhere."""
    level = 10
    for cls, count in (("dog", 10), ("cat", 5), ("bird", 3)):
        for i in range(count):
            save(tmp_path / cls / f"{i}.png", grey(level))
            level += 10
    marker = grey(0)
    marker[0, 0] = 255
    save(tmp_path / "cat" / "marker.png", marker)
    return tmp_path


def test_labelled_folder_classes_split_and_scale(labelled: Path) -> None:
    ds = image_folder("pets", labelled, test_fraction=0.2, seed=0)
    assert ds.kind == "images" and ds.image_shape == (H, W) and ds.num_classes == 3
    assert ds.train.dtype == torch.float32 and ds.train.shape[1] == H * W
    assert ds.train_labels is not None and ds.test is not None and ds.test_labels is not None
    assert ds.train_labels.dtype == torch.int64
    # Classes in sorted order: bird 0, cat 1, dog 2; per class round(0.2 * n), at least 1.
    assert torch.bincount(ds.train_labels, minlength=3).tolist() == [2, 5, 8]
    assert torch.bincount(ds.test_labels, minlength=3).tolist() == [1, 1, 2]
    assert ds.train_labels.tolist() != sorted(ds.train_labels.tolist())  # shuffled, not by class
    # Every image lands in exactly one split, with its own class: solid level v -> v/127.5 - 1.
    solid = [(c, v) for c, start, n in ((2, 10, 10), (1, 110, 5), (0, 160, 3))
             for v in range(start, start + 10 * n, 10)]
    expected = {(*[float(np.float32(v) / np.float32(127.5) - 1)] * (H * W), c) for c, v in solid}
    marker = (1.0, *([-1.0] * (H * W - 1)), 1)
    got = rows_with_labels(ds.train, ds.train_labels) | rows_with_labels(ds.test, ds.test_labels)
    assert len(ds.train) + len(ds.test) == 19
    assert got == expected | {marker}
    assert marker in got  # exact: white is 1.0 and black -1.0, not merely close


def test_split_follows_the_seed_and_digest_the_content(labelled: Path) -> None:
    a, b, c = (image_folder("pets", labelled, seed=s) for s in (0, 0, 1))
    assert a.test_labels is not None and b.test_labels is not None
    assert torch.equal(a.train, b.train) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train, c.train)
    assert isinstance(a.source, dict) and isinstance(c.source, dict)
    assert a.source["folder"] == str(labelled.resolve()) and a.source["images"] == "19"
    assert a.source["digest"] == c.source["digest"]  # content, not split
    (labelled / "dog" / "0.png").rename(labelled / "dog" / "00.png")  # same bytes, new name
    renamed = image_folder("pets", labelled).source
    save(labelled / "dog" / "00.png", grey(11))  # same name, new bytes
    edited = image_folder("pets", labelled).source
    assert isinstance(renamed, dict) and isinstance(edited, dict)
    assert len({a.source["digest"], renamed["digest"], edited["digest"]}) == 3


def test_unlabelled_folder(tmp_path: Path) -> None:
    for i in range(10):
        save(tmp_path / f"{i:02d}.png", grey(20 * i))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "._00.png").write_bytes(b"macOS AppleDouble, not a PNG")
    (tmp_path / "empty_subfolder").mkdir()
    ds = image_folder("plain", tmp_path, test_fraction=0.25)
    assert ds.num_classes is None and ds.train_labels is None and ds.test_labels is None
    assert ds.test is not None and (len(ds.train), len(ds.test)) == (7, 3)  # round(2.5) -> 3
    levels = sorted(round((v + 1) * 127.5) for v in torch.cat([ds.train, ds.test])[:, 0].tolist())
    assert levels == [20 * i for i in range(10)]


def test_rgb_folder_channels_last_and_modes(tmp_path: Path) -> None:
    colour = np.zeros((H, W, 3), dtype=np.uint8)
    colour[0, 0] = (255, 0, 0)  # red at row 0, column 0
    colour[0, 1] = (0, 255, 0)  # green at row 0, column 1
    colour[1, 0] = (0, 0, 255)  # blue at row 1, column 0
    save(tmp_path / "a_rgb.png", colour)
    rgba = np.dstack([colour, np.full((H, W), 128, dtype=np.uint8)])
    save(tmp_path / "b_rgba.png", rgba)  # alpha dropped
    save(tmp_path / "c_palette.png", colour, mode="P")
    save(tmp_path / "d_grey.png", grey(255))  # a grey image in a colour set: read as RGB
    save(tmp_path / "e_photo.jpg", np.full((H, W, 3), (200, 100, 50), dtype=np.uint8))
    ds = image_folder("colour", tmp_path, test_fraction=0.2)
    assert ds.image_shape == (H, W, 3) and ds.train.shape[1] == H * W * 3
    assert ds.test is not None and ds.image_shape is not None
    rows = torch.cat([ds.train, ds.test])
    pictures = rows.reshape(-1, *ds.image_shape)
    exact = (colour.astype(np.float32) / 127.5 - 1.0)
    matches = [p for p in pictures if torch.equal(p, torch.from_numpy(exact))]
    assert len(matches) == 3  # RGB, RGBA and palette all read as the same picture
    assert matches[0][0, 1].tolist() == [-1.0, 1.0, -1.0]  # channels last, row-major
    assert any(torch.equal(p, torch.ones(H, W, 3)) for p in pictures)  # grey replicated
    photo = [p for p in pictures if abs(float(p[..., 0].mean()) - (200 / 127.5 - 1)) < 0.05]
    assert len(photo) == 1  # JPEG is lossy: close, not exact
    assert torch.allclose(photo[0].mean(dim=(0, 1)),
                          torch.tensor([200, 100, 50]) / 127.5 - 1, atol=0.05)


# --- bad input: one-line DataErrors that name the folder or file ------------------------------


def error(path: Path, **kwargs: Any) -> str:
    with pytest.raises(DataError) as info:
        image_folder("set", path, **kwargs)
    message = str(info.value)
    assert message.startswith("set: ") and "\n" not in message
    return message


def test_missing_folder_and_not_a_folder(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    assert f"image folder {root / 'nowhere'} does not exist" in error(tmp_path / "nowhere")
    save(tmp_path / "one.png", grey(0))
    assert f"{root / 'one.png'} is not a folder" in error(tmp_path / "one.png")


def test_no_images(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".hidden.png").write_bytes(b"skipped: a dot-file")
    assert f"no images (.png, .jpg, .jpeg) in {tmp_path.resolve()}" in error(tmp_path)


def test_unreadable_and_truncated_files_are_named(tmp_path: Path) -> None:
    save(tmp_path / "good.png", grey(0))
    (tmp_path / "bad.png").write_bytes(b"this is not a PNG")
    assert f"Pillow cannot read {tmp_path.resolve() / 'bad.png'} (" in error(tmp_path)
    (tmp_path / "bad.png").unlink()
    # A noisy picture, so that the compressed stream is long enough to cut in the middle.
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    save(tmp_path / "cut.png", noise)
    save(tmp_path / "good.png", grey(0, 64, 64))
    whole = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])  # the header survives
    assert f"Pillow cannot decode {tmp_path.resolve() / 'cut.png'} (" in error(tmp_path)


def test_mixed_sizes_name_both_files(tmp_path: Path) -> None:
    save(tmp_path / "a.png", grey(0))
    save(tmp_path / "b.png", grey(0, h=5, w=6))
    message = error(tmp_path)
    assert f"images in {tmp_path.resolve()} differ in size" in message
    assert "a.png is 4x3, b.png is 6x5 (width x height)" in message


def test_images_both_loose_and_in_class_folders(tmp_path: Path) -> None:
    save(tmp_path / "cat" / "1.png", grey(0))
    save(tmp_path / "cat" / "2.png", grey(0))
    save(tmp_path / "loose.png", grey(0))
    message = error(tmp_path)
    assert f"{tmp_path.resolve()} mixes images in class sub-folders" in message
    assert "(loose.png)" in message


def test_too_deep(tmp_path: Path) -> None:
    save(tmp_path / "cat" / "kitten" / "1.png", grey(0))
    assert (f"{tmp_path.resolve() / 'cat' / 'kitten' / '1.png'} is more than one sub-folder "
            "deep") in error(tmp_path)


def test_sixteen_bit_images_are_refused(tmp_path: Path) -> None:
    save(tmp_path / "a.png", grey(0))
    Image.fromarray(np.full((H, W), 1000, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert f"{tmp_path.resolve() / 'deep.png'} has mode I;16" in error(tmp_path)


def test_memory_bound_before_decoding(tmp_path: Path) -> None:
    save(tmp_path / "a.png", grey(0))
    for i in range(3):
        (tmp_path / f"z{i}.png").write_bytes(b"junk")  # never opened: the bound comes first
    need = 4 * H * W * 4  # 4 images x 12 pixels x 4 bytes = 192
    assert (f"4 images of 4x3 x 1 channel(s) in {tmp_path.resolve()} need 192 bytes as float32, "
            "over the bound of 191 bytes") in error(tmp_path, max_bytes=need - 1)
    assert "Pillow cannot read" in error(tmp_path, max_bytes=need)  # within it: on to reading
    # A grey first image with colour ones later: checked again once the mode is known (RGB).
    for i in range(3):
        save(tmp_path / f"z{i}.png", np.zeros((H, W, 3), dtype=np.uint8))
    assert image_folder("set", tmp_path, max_bytes=3 * need).image_shape == (H, W, 3)
    assert "4 images of 4x3 x 3 channel(s)" in error(tmp_path, max_bytes=3 * need - 1)


def test_memory_bound_in_mebibytes(tmp_path: Path) -> None:
    save(tmp_path / "big.png", np.zeros((1024, 1024, 3), dtype=np.uint8))
    assert "need 12 MiB as float32, over the bound of 1 MiB" in error(tmp_path, max_bytes=2**20)


def test_class_folder_too_small_to_split(tmp_path: Path) -> None:
    for i in range(4):
        save(tmp_path / "many" / f"{i}.png", grey(i))
    save(tmp_path / "lonely" / "0.png", grey(9))
    assert (f"class folder {tmp_path.resolve() / 'lonely'} has 1 image(s); a train/test split "
            "needs at least 2") in error(tmp_path)
    save(tmp_path / "lonely" / "1.png", grey(8))
    ds = image_folder("set", tmp_path)
    assert ds.test_labels is not None and ds.test_labels.tolist().count(0) == 1


def test_unlabelled_folder_of_one_image(tmp_path: Path) -> None:
    save(tmp_path / "only.png", grey(0))
    assert f"{tmp_path.resolve()} has 1 image(s)" in error(tmp_path)


def test_test_fraction_out_of_range(tmp_path: Path) -> None:
    assert "test_fraction must lie strictly between 0 and 1, got 1.0" in error(
        tmp_path, test_fraction=1.0)
