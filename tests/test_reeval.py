"""reeval: a study's best configuration retrained on fresh seeds, mean and standard error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from slow_helpers import SMOKE

from pipeline.__main__ import main
from pipeline.config_load import load_config
from pipeline.reeval import FIRST_SEED, portable, stderr, write_best_config
from pipeline.study.spec import load_study_file
from pipeline.study.storage import open_storage
from pipeline.study.store import PARENT_ATTR, RUN_ATTR
from pipeline.study.sweep import run_sweep


def test_stderr_is_the_standard_error_of_the_mean() -> None:
    assert stderr([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3) / 2)
    assert stderr([7.0]) == 0.0


def test_reeval_study(tmp_path: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    journal = str(tmp_path / "optuna.journal")
    run_sweep(load_study_file(SMOKE), n_trials=2, storage=journal, progress=False)
    study = optuna.load_study(study_name="smoke", storage=open_storage(journal))

    assert main(["reeval", "--study", "smoke", "--seeds", "2", "--storage", journal]) == 0
    report = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert report["seeds"] == [FIRST_SEED, FIRST_SEED + 1]  # the search used seed 0 only
    assert len(report["per_seed"]) == 2
    assert report["features"] == ["coordinates"]  # the one feature space of both seeds
    for key in ("fid", "modes_covered", "high_quality", "reverse_kl"):
        values = [p[key] for p in report["per_seed"]]
        assert report["mean"][key] == pytest.approx(sum(values) / 2)
        assert report["stderr"][key] == pytest.approx(abs(values[0] - values[1]) / 2)
    printed = capsys.readouterr()
    assert "modes_covered" in printed.out
    # progress, and the value the search saw beside the fresh seeds' mean
    assert f"seed {FIRST_SEED + 1} done (2/2, " in printed.err
    assert report["search"]["fid"] == pytest.approx(study.best_value)
    header = next(line for line in printed.out.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "mean", "stderr", "min", "real", "rows", "search"]
    fid_line = next(line for line in printed.out.splitlines() if line.startswith("fid "))
    assert fid_line.split()[-1] == f"{study.best_value:.4g}"

    # Each seed is a run tagged reeval under the study's parent run, with the winner's config.
    client = MlflowClient(tracking_uri=store_uri)
    best_run = client.get_run(study.best_trial.user_attrs[RUN_ATTR])
    for run_id, seed, scores in zip(report["runs"], report["seeds"], report["per_seed"],
                                    strict=True):
        run = client.get_run(run_id)
        assert run.data.tags["reeval"] == "true"
        assert run.data.tags["mlflow.parentRunId"] == study.user_attrs[PARENT_ATTR]
        assert run.data.params["train.seed"] == str(seed)
        assert run.data.params["model.g_hidden"] == best_run.data.params["model.g_hidden"]
        assert run.data.metrics["val/fid"] == scores["fid"]  # the final evaluation
        assert run.data.tags["fid_features"] == "coordinates"
    assert (tmp_path / "results" / "smoke.png").read_bytes()[:4] == b"\x89PNG"

    # studies/best/smoke.yaml trains the same configuration
    best = load_config(tmp_path / "studies" / "best" / "smoke.yaml")
    assert str(best.model.g_hidden) == best_run.data.params["model.g_hidden"]
    assert best.train.g_lr == float(best_run.data.params["train.g_lr"])
    assert "tracking" not in yaml.safe_load((tmp_path / "studies" / "best" / "smoke.yaml")
                                            .read_text())


def test_the_best_config_names_a_data_file_below_the_project_relatively(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert portable(str(tmp_path / "runs" / "data" / "penguins.csv")) == "runs/data/penguins.csv"
    assert portable("/elsewhere/mine.csv") == "/elsewhere/mine.csv"
    cfg = load_config(None, ["data.name=table",
                             f"data.path={tmp_path / 'runs' / 'data' / 'penguins.csv'}"])
    written = yaml.safe_load(write_best_config(cfg, "t").read_text())
    assert written["data"]["path"] == "runs/data/penguins.csv"


def test_reeval_config_file(tiny_config, tmp_path: Path, store_uri: str) -> None:
    cfg = tiny_config("train.epochs=1")
    path = tmp_path / "baseline.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert main(["reeval", "--config", str(path), "--seeds", "2", "--out",
                 str(tmp_path / "b.json"), "train.steps_per_epoch=3"]) == 0
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["study"] == "baseline" and report["config"]["train"]["steps_per_epoch"] == 3
    parent = MlflowClient(tracking_uri=store_uri).get_run(report["parent_run_id"])
    assert parent.info.run_name == "reeval baseline" and parent.info.status == "FINISHED"


def test_reeval_needs_a_study_or_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["reeval", "--seeds", "2"])
    assert info.value.code == 2
    assert "one of the arguments --study --config is required" in capsys.readouterr().err


def test_reeval_trains_ten_seeds_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """One default for the seed count (the command's, which make reeval leaves alone)."""
    import pipeline.reeval

    asked: list[int] = []

    def record(**kwargs: object) -> tuple[dict, Path]:
        asked.append(kwargs["seeds"])  # type: ignore[arg-type]
        raise SystemExit(0)

    monkeypatch.setattr(pipeline.reeval, "reevaluate", record)
    for argv in (["reeval", "--study", "s"], ["reeval", "--study", "s", "--seeds", "3"]):
        with pytest.raises(SystemExit):
            main(argv)
    assert asked == [10, 3]
