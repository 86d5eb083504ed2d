"""recover: a study whose journal was damaged, rebuilt from its MLflow runs, trial for trial."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from slow_helpers import TINY_STUDY

from pipeline.__main__ import main
from pipeline.config import ConfigError
from pipeline.study.recover import recover
from pipeline.study.spec import parse_study
from pipeline.study.storage import open_storage
from pipeline.study.store import PARENT_ATTR, RUN_ATTR, SPEC_ATTR
from pipeline.study.sweep import run_sweep

# the search space goes on with a learning rate, so the median pruner has trials to tell apart
BASE = TINY_STUDY + "  train.g_lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
ONE = """
objective: {metric: val/high_quality, direction: maximize, last_k: 1}
budget: {n_trials: 4, epochs: 3}
pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}
"""
TWO = """
objectives:
  - {metric: val/pacgan_score, direction: maximize, last_k: 1}
  - {metric: cost/g_params, direction: minimize}
budget: {n_trials: 3, epochs: 2}
"""
JOURNAL = "runs/optuna.journal"


def snapshot(name: str) -> list[dict[str, Any]]:
    study = optuna.load_study(study_name=name, storage=open_storage(JOURNAL))
    return [{"number": t.number, "state": t.state.name, "params": t.params,
             "distributions": t.distributions, "values": t.values,
             "intermediate": t.intermediate_values, "run": t.user_attrs.get(RUN_ATTR)}
            for t in study.trials]


def damage(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    return bytes(data)


def test_a_damaged_journal_is_rebuilt_from_mlflow(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    defn = parse_study(ONE + BASE, default_name="rec")
    run_sweep(defn, progress=False)
    before = snapshot("rec")
    study = optuna.load_study(study_name="rec", storage=open_storage(JOURNAL))
    attrs = dict(study.user_attrs)
    assert len(before) >= 4 and any(t["intermediate"] for t in before)
    damaged = damage(Path(JOURNAL))
    capsys.readouterr()

    Path("rec.yaml").write_text(ONE + BASE)  # sweep names the study after the file
    for argv in (["compare", "--study", "rec"], ["sweep", "rec.yaml", "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "damaged journal" in err and "python -m pipeline recover --study NAME" in err
        assert Path(JOURNAL).read_bytes() == damaged

    assert main(["recover", "--study", "rec"]) == 0
    out = capsys.readouterr().out.strip()
    kept = sorted(Path("runs").glob("optuna.journal.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged  # byte for byte
    states = [t["state"] for t in before]
    assert out == (f"study rec recovered from MLflow: {len(before)} trials "
                   f"({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
                   f"{states.count('FAIL')} failed); the damaged journal is kept at {kept[0]}")
    after = snapshot("rec")
    for a, b in zip(after, before, strict=True):
        assert a == b
    rebuilt = optuna.load_study(study_name="rec", storage=open_storage(JOURNAL))
    assert rebuilt.user_attrs[SPEC_ATTR] == attrs[SPEC_ATTR]
    assert rebuilt.user_attrs[PARENT_ATTR] == attrs[PARENT_ATTR]
    assert rebuilt.metric_names == ["val/high_quality"]

    assert main(["compare", "--study", "rec", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and rows[0]["trial"] == rebuilt.best_trial.number

    # the journal is readable now and holds the study: nothing to recover
    with pytest.raises(ConfigError, match="nothing to recover"):
        recover("rec")
    run_sweep(defn, n_trials=len(before) + 1, progress=False)  # the rebuilt study resumes
    assert len(snapshot("rec")) == len(before) + 1


def test_two_objectives_round_trip_and_refusals(tmp_path: Path) -> None:
    defn = parse_study(TWO + BASE, default_name="mo")
    run_sweep(defn, progress=False)
    before = snapshot("mo")
    Path(JOURNAL).unlink()  # lost, not damaged: nothing to keep
    result = recover("mo")
    assert result.kept is None and result.counts["complete"] == 3
    assert snapshot("mo") == before
    assert optuna.load_study(study_name="mo", storage=open_storage(JOURNAL)).metric_names == [
        "val/pacgan_score", "cost/g_params"]
    forced = recover("mo", force=True)
    assert forced.kept is not None and snapshot("mo") == before
    with pytest.raises(ConfigError, match="no parent run of the study"):
        recover("other")
    with pytest.raises(ConfigError, match="journal files only"):
        recover("mo", "sqlite:///x.db")
