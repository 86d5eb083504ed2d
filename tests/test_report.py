"""The README's results tables come from the results files: a block is rewritten from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.report import write_report


def results_file(path: Path, quality: list[float], seconds: float, floor: float) -> None:
    per_seed = [{"quality": q, "detection_auc": 0.6} for q in quality]
    mean = sum(quality) / len(quality)
    path.write_text(json.dumps({
        "seeds": list(range(len(quality))), "per_seed": per_seed,
        "mean": {"quality": mean, "detection_auc": 0.6},
        "stderr": {"quality": 0.01, "detection_auc": 0.0},
        "floor": {"quality": floor}, "seconds": seconds}))


def test_a_table_block_is_rewritten_from_its_files(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    results_file(results / "table-penguins.json", [0.80, 0.84], 40.0, 0.85)
    results_file(results / "ctgan-penguins.json", [0.70, 0.72], 100.0, 0.85)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- report:table-penguins -->\nold numbers\n"
                      "<!-- /report:table-penguins -->\nafter\n")
    assert write_report(readme, results) == ["table-penguins"]
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("intro\n") and text.endswith("after\n")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| this project's winner")
    assert "0.820 ± 0.010 (worst 0.800)" in rows[1] and "| 20 |" in rows[1]  # 40 s / 2 seeds
    assert rows[2].startswith("| CTGAN, defaults") and "0.710 ± 0.010 (worst 0.700)" in rows[2]
    assert rows[3].startswith("| real rows") and "0.850" in rows[3]
    assert "CTGAN, epochs sized" not in text  # no such file: no row


def test_a_missing_block_is_one_clear_error(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    results_file(results / "table-fair.json", [0.8], 10.0, 0.9)
    readme = tmp_path / "README.md"
    readme.write_text("no blocks\n")
    with pytest.raises(ConfigError, match="report:table-fair"):
        write_report(readme, results)
    assert readme.read_text() == "no blocks\n"


def front_file(path: Path, hidden: list[int], params: float, modes: list[float],
               hq: list[float]) -> None:
    per_seed = [{"modes_covered": m, "high_quality": q, "reverse_kl": 0.01,
                 "pacgan_score": q * m / 25, "cost/g_params": params, "cost/sample_ms": 0.5}
                for m, q in zip(modes, hq, strict=True)]
    keys = per_seed[0].keys()
    path.write_text(json.dumps({
        "config": {"model": {"g_hidden": hidden, "d_hidden": [128, 128, 128]},
                   "data": {"name": "grid25", "radius": 2.0}},
        "seeds": list(range(len(modes))), "per_seed": per_seed,
        "mean": {k: sum(p[k] for p in per_seed) / len(per_seed) for k in keys},
        "stderr": {k: 0.0 for k in keys}, "floor": {"high_quality": 0.989},
        "seconds": 10.0}))


def test_a_front_block_names_the_smallest_generator_that_covers_every_mode(
        tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    # the small G misses a mode on one seed; the middle one covers all with 96% HQ
    front_file(results / "size-trial7.json", [16], 82.0, [25, 24], [0.97, 0.97])
    front_file(results / "size-trial3.json", [64, 64], 4482.0, [25, 25], [0.96, 0.96])
    front_file(results / "size-trial0.json", [128, 128, 128], 33666.0, [25, 25], [0.95, 0.95])
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report:front-size -->\n<!-- /report:front-size -->\n")
    assert write_report(readme, results) == ["front-size"]
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| ")]
    # smallest G first
    assert [r.split(" | ")[1] for r in rows[1:4]] == ["16", "64x64", "128x128x128"]
    assert "4,482" in rows[2] and "| 2 |" in rows[2]
    assert rows[4].startswith("| real samples (the floor)") and "0.989" in rows[4]
    text = readme.read_text()
    assert "covers all modes on every fresh seed with mean high quality >= 95%: G 64x64, " \
           "4,482 parameters" in text
    assert (results / "size-front.png").read_bytes()[:4] == b"\x89PNG"


def mixture_file(path: Path, modes: list[float], hq: list[float], floor: bool) -> None:
    per_seed = [{"modes_covered": m, "high_quality": q, "reverse_kl": 0.01 * (i + 1)}
                for i, (m, q) in enumerate(zip(modes, hq, strict=True))]
    keys = per_seed[0].keys()
    path.write_text(json.dumps({
        "seeds": list(range(len(modes))), "per_seed": per_seed,
        "mean": {k: sum(p[k] for p in per_seed) / len(per_seed) for k in keys},
        "stderr": {k: 0.001 for k in keys},
        **({"floor": {"modes_covered": 25.0, "high_quality": 0.9891, "reverse_kl": 0.0048}}
           if floor else {}),
        "seconds": 10.0}))


def test_the_mixtures_block_puts_each_row_beside_the_published_ones_and_the_floor(
        tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    mixture_file(results / "ring8.json", [8, 8, 8], [0.97, 0.98, 0.96], floor=True)
    mixture_file(results / "grid25.json", [25, 25, 24], [0.96, 0.90, 0.95], floor=True)
    mixture_file(results / "seed_article_ring8.json", [8], [0.2], floor=False)  # no grid25 file
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report:mixtures -->\n<!-- /report:mixtures -->\n")
    assert write_report(readme, results) == ["mixtures"]
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| ")]
    assert rows[1] == "| GAN (PacGAN Table 1) | 6.3 | 98.2% | 0.45 | 17.3 | 94.8% | 0.70 |"
    assert not any("seed article" in r for r in rows)  # one of its two files is missing
    ours = rows[4]
    assert ours.startswith("| **this project**") and "3 fresh seeds" in ours
    assert "97.0 ± 0.1% (min 96.0%)" in ours and "24.67 ± 0.00 (min 24)" in ours
    assert "93.7 ± 0.1% (min 90.0%)" in ours and "(worst 0.0300)" in ours
    assert rows[5] == ("| real samples through the same metrics (the floor) | 25 | 98.9% | "
                       "0.0048 | 25 | 98.9% | 0.0048 |")


def test_the_drs_row_stands_apart_from_the_generators_row(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    mixture_file(results / "ring8.json", [8, 8], [0.96, 0.95], floor=True)
    mixture_file(results / "grid25.json", [25, 25], [0.94, 0.95], floor=True)
    report = json.loads((results / "ring8.json").read_text())
    drs = [{"modes_covered": 8.0, "high_quality": q, "reverse_kl": 0.002, "acceptance": 0.3}
           for q in (0.99, 0.98)]
    report["drs"] = {"per_seed": drs,
                     "mean": {"modes_covered": 8.0, "high_quality": 0.985, "reverse_kl": 0.002,
                              "acceptance": 0.3},
                     "stderr": {"modes_covered": 0.0, "high_quality": 0.005, "reverse_kl": 0.0,
                                "acceptance": 0.0}}
    (results / "ring8.json").write_text(json.dumps(report))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report:mixtures -->\n<!-- /report:mixtures -->\n")
    write_report(readme, results)
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| ")]
    assert "95.5 ± 0.1% (min 95.0%)" in rows[4]  # the raw generator's row is unchanged
    assert "Rejection Sampling" in rows[5] and "acceptance ring8 30%" in rows[5]
    assert rows[5].endswith("| 98.5 ± 0.5% (min 98.0%) | 0.0020 ± 0.0000 (worst 0.0020) "
                            "| - | - | - |")
    assert rows[6].startswith("| real samples")


def image_file(path: Path, fid: list[float], recall: float, floor: bool,
               fid_floor: float = 1.25, features: list[str] | None = None) -> None:
    per_seed = [{"fid": f, "recall": recall, "classes_covered": 10.0} for f in fid]
    keys = per_seed[0].keys()
    path.write_text(json.dumps({
        "seeds": list(range(len(fid))), "per_seed": per_seed,
        "mean": {k: sum(p[k] for p in per_seed) / len(per_seed) for k in keys},
        "stderr": {k: 0.5 for k in keys}, "seconds": 100.0 * len(fid),
        **({"floor": {"fid": fid_floor, "recall": 0.97, "classes_covered": 10.0}} if floor
           else {}), **({"features": features} if features else {})}))


def test_the_fashion_block_has_every_row_that_has_a_file_and_the_floor(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    image_file(results / "seed_article.json", [260.0, 270.0], 0.44, floor=True)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report:fashion_mnist -->\n<!-- /report:fashion_mnist -->\n")
    assert write_report(readme, results) == []  # no project row: no block
    image_file(results / "fashion_mnist.json", [18.0, 20.0, 22.0], 0.25, floor=True)
    assert write_report(readme, results) == ["fashion_mnist"]
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 4  # head, seed article, this project (no Lightning file), the floor
    assert rows[1].startswith("| seed article's GAN") and "265.0 ± 0.5 (worst 270.0)" in rows[1]
    assert "20.0 ± 0.5 (worst 22.0)" in rows[2] and "| 3 | 100 |" in rows[2]
    assert rows[3].startswith("| real test images") and "| 1.2 | 10.0 | - | - | 0.97 | - |" \
        in rows[3]
    image_file(results / "fashion_mnist_20.json", [12.0, 14.0], 0.45, floor=True)
    image_file(results / "lightning_gan_20.json", [30.0, 40.0], 0.2, floor=True)
    write_report(readme, results)
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[2:5]] == [
        "| **this project**: best of the fashion_mnist study (10 epochs)",
        "| PyTorch Lightning's GAN example (`conf/lightning_gan.yaml`, 20 epochs)",
        "| **this project**: best of the fashion_mnist study, 20 epochs at constant "
        "rates (`studies/best/fashion_mnist_20.yaml`)"]
    assert "35.0 ± 0.5 (worst 40.0)" in rows[3] and "13.0 ± 0.5 (worst 14.0)" in rows[4]
    assert rows[5].startswith("| real test images")
    image_file(results / "fashion_mnist_30.json", [8.0, 9.0], 0.46, floor=True)
    write_report(readme, results)  # a project row without its peer's file stays last but one
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| ")]
    assert rows[5].startswith("| **this project**: best of the fashion_mnist study, 30 epochs")
    assert "8.5 ± 0.5 (worst 9.0)" in rows[5] and rows[6].startswith("| real test images")
    assert len(rows) == 7  # one floor for every row

    for name, fid in (("lightning_gan_20", [30.0, 40.0]), ("fashion_mnist_20", [12.0, 14.0]),
                      ("fashion_mnist_30", [8.0, 9.0])):  # evaluated with another classifier
        image_file(results / f"{name}.json", fid, 0.45, floor=True, fid_floor=2.5)
    write_report(readme, results)
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| ")]
    floors = [(i, row) for i, row in enumerate(rows) if row.startswith("| real test images")]
    assert [i for i, _ in floors] == [3, 7]  # after the 10-epoch rows, and after the others
    assert all("(the floor of the rows above it) | " in row for _, row in floors)
    assert "| 1.2 | 10.0 |" in floors[0][1] and "| 2.5 | 10.0 |" in floors[1][1]

    # the same floor in another feature space (another classifier digest) is its own group
    image_file(results / "fashion_mnist_30.json", [8.0, 9.0], 0.45, floor=True, fid_floor=2.5,
               features=["fcgan-mlp-classifier-fashion_mnist-v1 weights 0123456789ab"])
    write_report(readme, results)
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| ")]
    assert [i for i, row in enumerate(rows) if row.startswith("| real test images")] == [3, 6, 8]


def test_a_one_mixture_row_shows_dashes_for_the_other(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    mixture_file(results / "ring8.json", [8, 8], [0.96, 0.95], floor=True)
    mixture_file(results / "grid25.json", [25, 25], [0.94, 0.95], floor=True)
    mixture_file(results / "ring8_tuned.json", [8, 8, 8], [0.99, 0.98, 0.97], floor=True)
    readme = tmp_path / "README.md"
    readme.write_text("<!-- report:mixtures -->\n<!-- /report:mixtures -->\n")
    write_report(readme, results)
    rows = [line for line in readme.read_text().splitlines() if line.startswith("| ")]
    tuned = rows[5]
    assert "`studies/best/ring8_tuned.yaml`), 3 fresh seeds" in tuned
    assert "98.0 ± 0.1% (min 97.0%)" in tuned and tuned.endswith("| - | - | - |")
    # with both mixtures' files the row names both configs, and gives each mixture its seeds
    mixture_file(results / "grid25_tuned.json", [25, 25], [0.97, 0.96], floor=True)
    write_report(readme, results)
    both = [line for line in readme.read_text().splitlines() if line.startswith("| ")][5]
    assert ("(`studies/best/ring8_tuned.yaml`, `studies/best/grid25_tuned.yaml`), ring8 3, "
            "grid25 2 fresh seeds") in both
    assert both.endswith("| 25.00 ± 0.00 (min 25) | 96.5 ± 0.1% (min 96.0%) | 0.0150 ± 0.0010 "
                         "(worst 0.0200) |")
