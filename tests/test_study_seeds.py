"""Seed-robust objectives: a trial trains its configuration on several seeds, Optuna sees their
aggregate, each seed is its own MLflow run under the trial's run, and pruning reads the
aggregate of the seeds so far."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from pipeline.study.objective import aggregate
from pipeline.study.spec import parse_study
from pipeline.study.storage import open_storage
from pipeline.study.store import RUN_ATTR, TRIAL_RUN_ATTR
from pipeline.study.sweep import run_sweep


@pytest.mark.parametrize(("how", "direction", "expected"), [
    ("mean", "maximize", 2.0), ("min", "maximize", 1.0), ("min", "minimize", 3.0),
    ("mean_minus_std", "maximize", 1.0), ("mean_minus_std", "minimize", 3.0),
])
def test_aggregates_have_known_answers(how: str, direction: str, expected: float) -> None:
    assert aggregate([1.0, 2.0, 3.0], how, direction) == pytest.approx(expected)  # stdev 1


def test_a_bad_aggregate_or_seed_count_is_refused() -> None:
    from pipeline.config import ConfigError

    base = "search_space: {train.g_lr: {type: float, low: 1.0e-4, high: 1.0e-3}}\n"
    with pytest.raises(ConfigError, match=r"objective\.aggregate: got .median."):
        parse_study(base + "objective: {aggregate: median}", default_name="x")
    with pytest.raises(ConfigError, match=r"objective\.seeds: got 0"):
        parse_study(base + "objective: {seeds: 0}", default_name="x")


STUDY = """
base:
  data: {name: grid25, n_points: 2048}
  model: {g_hidden: [16], d_hidden: [16]}
  train: {batch_size: 128, steps_per_epoch: 5, log_every_n_steps: 5}
  eval: {n_samples: 300, metrics: [fid, modes_covered, high_quality, reverse_kl]}
  tracking: {tracking_uri: "URI", system_metrics: false}
budget: {n_trials: 3, epochs: 2}
objective: {metric: val/fid, direction: minimize, last_k: 1, seeds: 2, aggregate: min}
sampler: {name: random, seed: 0}
pruner: {name: median, n_startup_trials: 1, n_warmup_steps: 0}
search_space:
  train.g_lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
"""


def test_a_trial_is_the_aggregate_of_its_seeds(tmp_path: Path, store_uri: str) -> None:
    defn = parse_study(STUDY.replace("URI", store_uri), default_name="seeds")
    storage = str(tmp_path / "optuna.journal")
    run_sweep(defn, storage=storage, progress=False)
    study = optuna.load_study(study_name="seeds", storage=open_storage(storage))
    client = MlflowClient(tracking_uri=store_uri)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for trial in complete:
        trial_run = client.get_run(trial.user_attrs[TRIAL_RUN_ATTR])
        seeds = client.search_runs(
            [trial_run.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{trial_run.info.run_id}'")
        assert sorted(r.data.tags["objective_seed"] for r in seeds) == ["0", "1"]
        per_seed = [r.data.metrics["objective"] for r in seeds]
        # minimized FID: "min" is the worst seed, the highest FID
        assert trial.value == pytest.approx(max(per_seed))
        assert trial_run.data.metrics["objective"] == pytest.approx(trial.value)
        first = next(r for r in seeds if r.data.tags["objective_seed"] == "0")
        assert trial.user_attrs[RUN_ATTR] == first.info.run_id  # the model export reads
        # pruning saw every evaluation of both seeds: steps 1, 2 (seed 0) and 3, 4 (seed 1);
        # at seed 1 the value is the worse of the two seeds at that evaluation
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4]
        history = {r.data.tags["objective_seed"]: [m.value for m in sorted(
            client.get_metric_history(r.info.run_id, "val/fid"), key=lambda m: m.step)]
            for r in seeds}
        assert trial.intermediate_values[3] == pytest.approx(
            max(history["0"][0], history["1"][0]), rel=1e-6)
