"""Two worker processes on one Optuna journal file: no trial lost or duplicated, one MLflow child
run per trial under the study's parent run."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from slow_helpers import SMOKE, no_telemetry, ran_concurrently

from pipeline.study.spec import load_study_file
from pipeline.study.storage import open_storage
from pipeline.study.store import PARENT_ATTR, RUN_ATTR, finished_trials
from pipeline.study.sweep import run_sweep

TRIALS = 6
WORKERS = 2


@pytest.fixture
def no_stray_workers() -> Iterator[None]:
    """run_sweep's worker processes are children of this process: none may outlive the test
    (they would if it failed or timed out while they ran)."""
    yield
    leftover = multiprocessing.active_children()
    for proc in leftover:
        proc.kill()
    for proc in leftover:
        proc.join(timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_workers_share_one_journal(tmp_path: Path, store_uri: str,
                                       monkeypatch: pytest.MonkeyPatch,
                                       no_stray_workers: None) -> None:
    journal = str(tmp_path / "optuna.journal")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    no_telemetry(monkeypatch)

    summary = run_sweep(load_study_file(SMOKE), n_trials=TRIALS, workers=WORKERS, storage=journal,
                        progress=False)

    study = optuna.load_study(study_name="smoke", storage=open_storage(journal))
    trials = study.trials
    done = finished_trials(study)
    # Each worker stops once the study's finished and running trials reach TRIALS, counted after
    # each of its own trials (sweep.trial_budget). Two workers checking at the same instant can
    # both start one more, so the study may end with up to WORKERS-1 extra trials; never fewer.
    assert TRIALS <= len(done) <= TRIALS + WORKERS - 1, [t.state for t in trials]
    # Nothing lost: every trial that was started has finished (none RUNNING, FAIL or WAITING).
    assert len(done) == len(trials), {t.number: t.state.name for t in trials}
    assert summary.n_finished == len(done)
    # Nothing duplicated: distinct, gapless trial numbers.
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    # Both workers took part: at least two trials were running at the same time.
    assert ran_concurrently(trials), [(t.number, t.datetime_start, t.datetime_complete)
                                      for t in trials]

    client = MlflowClient(tracking_uri=store_uri)
    parent_id = study.user_attrs[PARENT_ATTR]
    assert parent_id == summary.parent_run_id
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    best = study.best_trial
    assert parent.info.run_name == f"best fid {best.value:.4g} · trial {best.number} · study smoke"
    counts = {k: int(v) for k, v in parent.data.tags.items() if k.startswith("n_")}
    assert counts["n_complete"] + counts["n_pruned"] == len(done)
    assert counts["n_running"] == counts["n_fail"] == 0

    runs = client.search_runs([parent.info.experiment_id], max_results=1000)
    children = [r for r in runs if r.info.run_id != parent_id]
    # Exactly one child run per trial, each linked to the parent, none elsewhere.
    assert len(children) == len(trials)
    assert all(r.data.tags.get("mlflow.parentRunId") == parent_id for r in children)
    run_ids = [t.user_attrs.get(RUN_ATTR) for t in trials]
    assert None not in run_ids
    assert len(set(run_ids)) == len(trials)
    by_id = {r.info.run_id: r for r in children}
    assert set(by_id) == set(run_ids)
    for trial in trials:
        run = by_id[trial.user_attrs[RUN_ATTR]]
        assert run.data.tags["optuna_trial"] == str(trial.number)
        assert run.info.run_name.startswith(f"trial-{trial.number:03d} ")
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert (run.info.status, run.data.tags.get("optuna_state")) == ("FINISHED", "PRUNED")
        else:
            assert (run.info.status, run.data.tags.get("optuna_state")) == ("FINISHED",
                                                                             "COMPLETE")
            assert run.data.metrics["objective"] == pytest.approx(trial.value)
