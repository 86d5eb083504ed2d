"""`python -m pipeline evaluate`: one JSON line for an (N, D) .npy of samples."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.__main__ import main
from pipeline.config import PROJECT_ROOT
from pipeline.readers.mixtures import ring8


def test_evaluate_true_mixture_samples(tmp_path: Path, capsys) -> None:
    samples = ring8(n=2500, seed=5).train.numpy()
    np.save(tmp_path / "s.npy", samples)
    assert main(["evaluate", "--data", "ring8", "--samples", str(tmp_path / "s.npy")]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    metrics = json.loads(out)
    assert set(metrics) == {"fid", "kid", "precision", "recall", "density", "coverage",
                            "modes_covered", "high_quality", "reverse_kl", "pacgan_score"}
    assert metrics["modes_covered"] == 8
    assert abs(metrics["high_quality"] - (1 - math.exp(-4.5))) < 0.01
    assert metrics["reverse_kl"] < 0.01
    assert metrics["fid"] < 0.01


def test_evaluate_collapsed_samples(tmp_path: Path, capsys) -> None:
    samples = np.tile([[1.0, 0.0]], (1000, 1)).astype(np.float32)
    samples += np.random.default_rng(0).normal(0, 0.01, samples.shape).astype(np.float32)
    np.save(tmp_path / "s.npy", samples)
    main(["evaluate", "--data", "ring8", "--samples", str(tmp_path / "s.npy"),
          "--metrics", "modes_covered,reverse_kl"])
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["modes_covered"] == 1
    assert abs(metrics["reverse_kl"] - math.log(8)) < 1e-6


def test_evaluate_rejects_bad_input(tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "s.npy", np.zeros((100, 3), dtype=np.float32))
    assert main(["evaluate", "--data", "grid25", "--samples", str(tmp_path / "s.npy")]) == 2
    assert "expected (N, 2)" in capsys.readouterr().err
    assert main(["evaluate", "--data", "cifar", "--samples", str(tmp_path / "s.npy")]) == 2
    np.save(tmp_path / "p.npy", np.zeros((100, 2), dtype=np.float32))
    assert main(["evaluate", "--data", "grid25", "--samples", str(tmp_path / "p.npy"),
                 "--metrics", "accuracy"]) == 2
    assert "unknown metric" in capsys.readouterr().err


def test_evaluate_as_a_process(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", ring8(n=500, seed=1).train.numpy())
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "evaluate", "--data", "ring8", "--samples",
         str(tmp_path / "s.npy"), "--metrics", "modes_covered"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(out.stdout) == {"modes_covered": 8.0}
