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
