"""make bench in its quick mode: every measurement runs and lands in bench/results.json with the
documented keys. No timing is checked: the machines are too noisy for that."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import bench


@pytest.mark.timeout(600)
def test_quick_benchmark_writes_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    assert bench.main(["--quick", "--out", str(tmp_path / "bench")]) == 0
    captured = capfd.readouterr()  # fd level: the workers' output too
    # the benchmark turns Optuna's per-trial lines off, in its spawned sweep workers as well
    assert "finished with value" not in captured.err
    printed = captured.out.split()
    assert printed == [str(tmp_path / "bench" / "results.json"),
                       str(tmp_path / "bench" / "results.md")]
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    for key in ("train_ratio", "trial_ratio", "eval_fraction"):
        assert set(results[key]) == {"grid25", "images"}, key
        assert all(value > 0 for value in results[key].values()), key
    assert results["startup_seconds"] > 0 and results["workers_speedup"] > 0
    assert set(results["pruning"]) >= {"epoch_fraction", "best_ratio"}
    assert set(results["gflops"]) == {"images_b64", "images_b256", "peak", "images_b64_matmuls",
                                      "images_b256_matmuls"}
    assert set(results["targets"]) == set(bench.TARGETS)
    assert results["quick"] is True
    summary = (tmp_path / "bench" / "results.md").read_text()
    assert "quick mode" in summary and "`train_ratio`" in summary


@pytest.mark.parametrize("pack", [1, 2])
def test_step_flops_match_torch_s_own_count(pack: int) -> None:
    """The FLOPs the benchmark credits a step with, from the layer sizes, are what torch counts
    in one step of the plain loop (FlopCounterMode: every matmul of forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.config import load_config
    from pipeline.data import grid25

    cfg = load_config(None, ["model.latent_dim=3", "model.g_hidden=[16, 8]",
                             "model.d_hidden=[12]", "train.batch_size=10", f"model.pack={pack}"])
    dataset = grid25(n=100)
    gan = bench.PlainGAN(cfg, dataset)
    real = dataset.train[:10]
    with FlopCounterMode(display=False) as counter:
        gan.step(real)
    assert bench.step_flops(cfg, dataset) == counter.get_total_flops()
