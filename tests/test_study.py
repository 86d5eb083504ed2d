"""Study files, the search space, and the smoke study end to end in tmp_path."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from slow_helpers import SMOKE

from pipeline.config import PROJECT_ROOT, ConfigError
from pipeline.study import parent_run, store
from pipeline.study.space import sample
from pipeline.study.spec import load_study_file, parse_study
from pipeline.study.storage import open_storage
from pipeline.study.store import (
    OWNER_ATTR,
    PARENT_ATTR,
    RUN_ATTR,
    create_or_load,
    finished_trials,
    this_worker,
)
from pipeline.study.summary import summary_lines
from pipeline.study.sweep import run_sweep
from pipeline.study.worker import TrialBudget

SPACE = """
search_space:
  model.g_layers: {type: int, low: 1, high: 3}
  model.g_width: {type: int, low: 16, high: 64, log: true}
  model.activation: {type: categorical, choices: [relu, leaky_relu]}
  model.leaky_slope: {type: float, low: 0.1, high: 0.3}
  train.g_lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  train.beta1: {type: categorical, choices: [0.0, 0.5]}
  train.gp_weight: {type: float, low: 1, high: 10}
"""


def test_shipped_studies_load() -> None:
    for path in sorted((PROJECT_ROOT / "studies").glob("*.yaml")):
        defn = load_study_file(path)
        assert defn.name == path.stem
        assert defn.spec.objective.metric.startswith("val/")
    assert load_study_file(SMOKE).base.train.epochs == 3  # budget.epochs overrides the base


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("serch_space: {}", "unknown key 'serch_space'"),
        ("search_space: {train.g_lrr: {type: float, low: 1, high: 2}}",
         "search_space.train.g_lrr: unknown key"),
        ("search_space: {train.g_lr: {type: float, low: 1.0e-2, high: 1.0e-4}}",
         "low (0.01) is greater than high"),
        ("search_space: {train.g_lr: {type: float, low: 0.0, high: 1.0e-2}}",
         "search_space.train.g_lr: value 0.0 is invalid (train.g_lr: got 0.0"),
        ("search_space: {model.g_width: {type: int, low: 0, high: 8}}",
         "search_space.model.g_width: value 0 is invalid"),
        ("search_space: {model.activation: {type: categorical, choices: [relu, swish]}}",
         "value 'swish' is invalid"),
        ("search_space: {train.g_lr: {type: float, low: 1.0e-4, high: 1.0e-2, lg: true}}",
         "unknown key 'search_space.train.g_lr.lg'"),
        ("search_space: {model.g_layers: {type: int, low: 1, high: 3}}",
         "needs model.g_width"),
        ("search_space: {train.g_lr: {type: uniform, low: 1, high: 2}}", "type: got 'uniform'"),
        ("objective: {metric: val/accuracy}\n" + SPACE, "objective.metric: got 'val/accuracy'"),
        ("sampler: {name: grid}\n" + SPACE, "sampler.name: got 'grid'"),
        ("pruner: {name: asha}\n" + SPACE, "pruner.name: got 'asha'"),
        ("budget: {n_trials: 0}\n" + SPACE, "budget.n_trials"),
        ("base: {train: {epoch: 3}}\n" + SPACE, "unknown key 'train.epoch'"),
        ("enqueue: [{train.d_lr: 1.0e-3}]\n" + SPACE, "enqueue[0].train.d_lr: not in search_space"),
        ("enqueue: [{train.g_lr: 5.0e-2}]\n" + SPACE,
         "enqueue[0].train.g_lr: 0.05 is outside the search space (float in [0.0001, 0.01])"),
        ("enqueue: [{model.g_layers: 2.5}]\n" + SPACE, "enqueue[0].model.g_layers: 2.5 is outside"),
        ("enqueue: [{model.activation: swish}]\n" + SPACE, "choices ['relu', 'leaky_relu']"),
        ("enqueue: [{train.g_lr: fast}]\n" + SPACE, "enqueue[0].train.g_lr: got 'fast'"),
        ("enqueue: [{}]\n" + SPACE, "enqueue[0]: expected a mapping of search_space keys"),
        ("enqueue: {train.g_lr: 1.0e-3}\n" + SPACE, "enqueue: got {"),
    ],
)
def test_bad_study_files_are_rejected(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_study(text, default_name="t")
    assert fragment in str(info.value)


def test_enqueued_trials_run_first_and_only_once(tmp_path: Path) -> None:
    text = SPACE + "enqueue:\n  - {model.g_layers: 2, model.g_width: 48, train.g_lr: 5e-4}\n"
    defn = parse_study(text, default_name="enq")
    # The width pseudo key fixes every layer; 5e-4 (a string to YAML) is read as a number.
    assert defn.enqueue == [{"model.g_layers": 2, "model.g_width_0": 48, "model.g_width_1": 48,
                             "train.g_lr": 5e-4}]
    storage = str(tmp_path / "optuna.journal")
    study, created = create_or_load(defn, storage)
    trial = study.ask()
    nested, sampled = sample(trial, defn.space, defn.base.to_dict())
    assert nested["model"]["g_hidden"] == [48, 48]
    assert nested["train"]["g_lr"] == 5e-4
    assert "model.activation" in sampled  # left out of the enqueued trial: sampled
    study.tell(trial, 1.0)
    again, created_again = create_or_load(defn, storage)  # a resume enqueues nothing
    assert (created, created_again) == (True, False)
    assert [t.state for t in again.trials] == [optuna.trial.TrialState.COMPLETE]


def test_trial_budget_counts_trials_running_in_other_workers() -> None:
    """Target 3 with one trial running elsewhere: this worker runs 2, not 3 (Optuna's
    MaxTrialsCallback on finished trials only would start a third beside the running one)."""
    study = optuna.create_study()
    elsewhere = study.ask()  # another worker's trial, still running
    elsewhere.set_user_attr(OWNER_ATTR, {"host": "elsewhere", "pid": 1, "started": 1})
    study.optimize(lambda trial: 0.0, n_trials=10, callbacks=[TrialBudget(3)])
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 2
    # A failed trial frees its place: the worker goes on until the count is reached again.
    study.tell(elsewhere, state=optuna.trial.TrialState.FAIL)
    study.optimize(lambda trial: 0.0, n_trials=10, callbacks=[TrialBudget(3)])
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 3
    # A trial left RUNNING under this process's own name is a leftover: not counted.
    stale = study.ask()
    stale.set_user_attr(OWNER_ATTR, this_worker())
    study.optimize(lambda trial: 0.0, n_trials=10, callbacks=[TrialBudget(5)])
    assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 5


def test_conditional_parameters() -> None:
    defn = parse_study(SPACE, default_name="t")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_slopes = seen_relu = 0
    for _ in range(30):
        trial = study.ask()
        nested, sampled = sample(trial, defn.space, defn.base.to_dict())
        layers = sampled["model.g_layers"]
        assert len(nested["model"]["g_hidden"]) == layers
        assert nested["model"]["g_hidden"] == [sampled[f"model.g_width_{i}"] for i in range(layers)]
        assert not any(f"model.g_width_{i}" in trial.params for i in range(layers, 3))
        if sampled["model.activation"] == "leaky_relu":
            assert "model.leaky_slope" in trial.params
            seen_slopes += 1
        else:
            assert "model.leaky_slope" not in trial.params
            seen_relu += 1
        assert "train.gp_weight" not in trial.params  # the base loss is hinge, not wgan-gp
        assert nested["train"]["g_betas"][0] == nested["train"]["d_betas"][0] == sampled[
            "train.beta1"]
        study.tell(trial, 0.0)
    assert seen_slopes and seen_relu


def test_when_condition() -> None:
    defn = parse_study("""
search_space:
  train.loss: {type: categorical, choices: [hinge, wgan-gp]}
  train.gp_weight: {type: float, low: 1, high: 10}
  train.n_critic: {type: int, low: 1, high: 5, when: {train.loss: wgan-gp}}
""", default_name="t")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        _, sampled = sample(trial, defn.space, defn.base.to_dict())
        wgan = sampled["train.loss"] == "wgan-gp"
        assert ("train.n_critic" in sampled) == wgan
        assert ("train.gp_weight" in sampled) == wgan
        study.tell(trial, 0.0)


@pytest.fixture
def study_env(tmp_path: Path, store_uri: str,
              monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    return store_uri, str(tmp_path / "optuna.journal")


# A setting that learns within smoke's first epoch (FID 11.4 there) and one that cannot (lr 1e-5,
# FID 15.4): the median pruner, never pruning the first trial, must prune the second.
GOOD_THEN_BAD = """
enqueue:
  - {model.g_layers: 2, model.g_width: 32, model.activation: leaky_relu, model.leaky_slope: 0.2,
     train.g_lr: 1.0e-2, train.d_lr: 1.0e-2}
  - {model.g_layers: 2, model.g_width: 32, model.activation: relu, train.g_lr: 1.0e-5,
     train.d_lr: 1.0e-5}
"""


def test_smoke_study_end_to_end_and_resume(study_env: tuple[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    uri, storage = study_env
    defn = parse_study(SMOKE.read_text() + GOOD_THEN_BAD, default_name="smoke")
    summary = run_sweep(defn, storage=storage, progress=False)
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage))
    assert len(finished_trials(study)) == 4
    assert summary.n_finished == 4 and summary.n_running == 0
    counts = summary.counts
    assert counts["complete"] + counts["pruned"] == 4 and counts["fail"] == 0
    lines = summary_lines(summary)
    assert lines[0].startswith(f"study smoke: 4 finished trials ({counts['complete']} complete, "
                               f"{counts['pruned']} pruned, 0 failed) in ")
    assert lines[1] == "objective: minimize val/fid"
    assert any(line.startswith("  runs: http://127.0.0.1:5000/#/experiments/") for line in lines)
    # another machine's last trial, still running when this one stops, is named as such
    assert summary_lines(dataclasses.replace(summary, n_running=1))[0].startswith(
        f"study smoke: 4 finished trials ({counts['complete']} complete, {counts['pruned']} "
        f"pruned, 0 failed) (1 still running in other processes) in ")
    # run again: nothing to do, said at once, without starting a worker
    again = run_sweep(defn, storage=storage, progress=False)
    assert again.already_complete and again.seconds < 10
    assert summary_lines(again)[0].startswith("study smoke already complete (4 trials: ")
    assert "use TRIALS=N (--trials N) to add more" in summary_lines(again)[0]
    states = [t.state for t in study.trials]
    assert states[:2] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]

    client = MlflowClient(tracking_uri=uri)
    parent_id = study.user_attrs[PARENT_ATTR]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna_study"] == "smoke"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == len(study.trials)
    by_id = {r.info.run_id: r for r in children}
    for trial in study.trials:
        run = by_id[trial.user_attrs[RUN_ATTR]]
        assert run.data.tags["optuna_trial"] == str(trial.number)
        assert run.info.run_name.startswith(f"trial-{trial.number:03d} ")
        for key, value in trial.params.items():
            assert run.data.params[f"sampled.{key}"] == str(value)
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert run.info.status == "FINISHED"  # stopped on purpose: no crash's red cross
            assert run.data.tags["optuna_state"] == "PRUNED"
            # told apart by name in the table, where the name column shows ~20 characters
            assert run.info.run_name.startswith(f"trial-{trial.number:03d} [pruned] ")
            # metrics kept (the pruner saw them as float32)
            assert run.data.metrics["val/fid"] == pytest.approx(trial.intermediate_values[0])
        else:
            assert trial.state == optuna.trial.TrialState.COMPLETE
            assert run.info.status == "FINISHED"
            assert run.data.metrics["objective"] == pytest.approx(trial.value)
            assert run.info.run_name.endswith(f" = {trial.value:.4g}")
        # what differs between trials: the sampled values, e.g. g_lr=0.00032
        assert f"g_lr={trial.params['train.g_lr']:.2g}" in run.info.run_name

    best = study.best_trial
    assert parent.info.run_name == f"best fid {best.value:.4g} · trial {best.number} · study smoke"
    assert parent.data.tags["study_state"] == "finished"
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert set(parent.data.metrics) == {"best_value"}  # counts are tags, not metric charts
    assert parent.data.tags["best_trial"] == str(best.number)
    # One experiment per study; the best trial's run (and no other) is tagged best=true;
    # the parent's description summarises the study.
    assert client.get_experiment(parent.info.experiment_id).name == "smoke"
    tagged = [r.info.run_id for r in children if r.data.tags.get("best") == "true"]
    assert tagged == [best.user_attrs[RUN_ATTR]]
    note = parent.data.tags["mlflow.note.content"]
    assert "minimize `val/fid`" in note and f"| 1 | {best.number} |" in note
    complete = states.count(optuna.trial.TrialState.COMPLETE)
    assert f"Trials: {complete} complete, {4 - complete} pruned, 0 failed" in note
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"trials.csv", "study.yaml", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent_id, "plots")}
    assert "plots/optimization_history.png" in plots

    # Resume: the same study, only the missing trials added, the same parent run.
    run_sweep(defn, n_trials=6, storage=storage, progress=False)
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage))
    assert len(finished_trials(study)) == 6
    assert study.user_attrs[PARENT_ATTR] == parent_id
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == len(study.trials)
    assert len({c.info.run_id for c in children}) == len(children)
    assert client.get_run(parent_id).data.tags["n_finished"] == "6"  # a tag: bookkeeping

    # A worker's report older than the parent's newest (it stopped first, drew its plots
    # slowly) is skipped: it must not overwrite the final state.
    history = len(client.get_metric_history(parent_id, "best_value"))
    client.set_tag(parent_id, "n_finished", "7")
    parent_run.report(study, parent_id, uri, defn)
    assert len(client.get_metric_history(parent_id, "best_value")) == history

    # Two workers that stop together both pass that check; the one that counted before the
    # other's last trial ended but wrote after it sees so once written, and reports again.
    client.set_tag(parent_id, "n_finished", "0")
    counted = [parent_run.trial_counts(study)]
    counted[0]["complete" if counted[0]["complete"] else "pruned"] -= 1
    monkeypatch.setattr(parent_run, "trial_counts",
                        lambda s: counted.pop() if counted else store.trial_counts(s))
    parent_run.report(study, parent_id, uri, defn)
    assert client.get_run(parent_id).data.tags["n_finished"] == "6"
    assert len(client.get_metric_history(parent_id, "best_value")) == history + 2


def test_one_parent_run_when_machines_start_a_study_together(study_env: tuple[str, str]) -> None:
    """Only the process that created the study makes its MLflow run; another that started at
    the same moment waits for the run's id instead of making a second parent."""
    uri, storage = study_env
    defn = load_study_file(SMOKE)
    first, first_created = create_or_load(defn, storage)
    second, second_created = create_or_load(defn, storage)
    assert (first_created, second_created) == (True, False)

    found: list[str] = []
    waiter = threading.Thread(target=lambda: found.append(
        parent_run.ensure(second, defn, uri, storage, created=False, wait=60)))
    waiter.start()
    time.sleep(1.0)  # the creator is slow to make the run: the other must not make its own
    assert waiter.is_alive()
    parent_id = parent_run.ensure(first, defn, uri, storage, created=True)
    waiter.join(timeout=30)
    assert found == [parent_id]
    parents = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_run(parent_id).info.experiment_id])
    assert [r.info.run_id for r in parents] == [parent_id]

    # A creator that died before making the run: the others make it after waiting.
    defn.name = "orphan"
    create_or_load(defn, storage)
    orphan, created = create_or_load(defn, storage)
    assert not created
    made = parent_run.ensure(orphan, defn, uri, storage, created=False, wait=0.5)
    assert made != parent_id and orphan.user_attrs[PARENT_ATTR] == made


def test_workers_marking_the_best_run_at_once(tmp_path: Path) -> None:
    """Workers that stop together tag the same best run at the same moment (MLflow's set_tag
    raced there: a unique-key violation on a PostgreSQL server); the tag ends on that run only,
    also when a racing report had tagged another run."""
    from pipeline.run_log import start_run
    from pipeline.tracking import get_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = get_client(uri)
    parent = start_run(client, "race")
    experiment = client.get_run(parent).info.experiment_id
    runs = [start_run(client, "race", parent_run_id=parent) for _ in range(5)]
    outsider = start_run(client, "race")  # another study's best run keeps its tag
    for run in (runs[0], outsider):
        client.set_tag(run, "best", "true")

    errors: list[BaseException] = []

    def report(best: str) -> None:
        try:
            parent_run.mark_runs(MlflowClient(tracking_uri=uri), experiment, parent, "best", [best])
        except BaseException as exc:
            errors.append(exc)

    for best in runs[1:]:  # the study's best moves on; each time, 4 workers report it at once
        threads = [threading.Thread(target=report, args=(best,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    tagged = {r.info.run_id for r in client.search_runs([experiment], "tags.best = 'true'")}
    assert tagged == {runs[-1], outsider}


def test_rdb_storage_retries_when_another_machine_creates_its_tables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first machine on an empty database makes Optuna's tables; one that raced it and
    lost (duplicate key on alembic_version) opens the storage on its next try."""
    import sqlalchemy.exc

    real = optuna.storages.RDBStorage
    tries: list[str] = []

    def racing(url: str) -> optuna.storages.RDBStorage:
        tries.append(url)
        if len(tries) == 1:
            real(url)  # the other machine wins ...
            raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, Exception())
        return real(url)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url, create=True)
    monkeypatch.undo()  # create_study checks isinstance(storage, RDBStorage)
    assert len(tries) == 2
    assert optuna.create_study(storage=storage, study_name="s").study_name == "s"
