"""One trial: the study's base config with sampled overrides, prepared, trained, one number out.

A trial is exactly a single run (the same ``prepare`` and ``train`` as ``python -m pipeline
train``) nested under the study's parent MLflow run, with Optuna's pruning callback watching its
evaluations. It reads like Optuna's recipe: suggest, build, fit, return the value.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as L
import optuna

from pipeline.config import Config
from pipeline.config_load import config_from_dict
from pipeline.metrics.registry import EVAL_SECONDS, VAL_PREFIX
from pipeline.study.space import sample
from pipeline.study.spec import StudyDefinition
from pipeline.study.store import ERROR_ATTR, OWNER_ATTR, RUN_ATTR, TRIAL_RUN_ATTR, this_worker
from pipeline.tracking import Ending, mlflow_run

if TYPE_CHECKING:
    import lightning.pytorch as L

# A pruned trial did what it was asked: stopped early on purpose. It ends FINISHED (not with
# the red cross of a crash) and its tag says why.
PRUNED = Ending("FINISHED", {"optuna_state": "PRUNED"})


class Objective:
    def __init__(self, defn: StudyDefinition, parent_run_id: str, uri: str, threads: int,
                 device: str, *, callbacks: Sequence[L.Callback] = ()) -> None:
        """``callbacks``: more Lightning callbacks for every trial's training, after the pruning
        one (the benchmark's stopwatch)."""
        self.defn = defn
        self.parent_run_id = parent_run_id
        self.uri = uri
        self.threads = threads
        self.device = device
        self.callbacks = tuple(callbacks)

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(OWNER_ATTR, this_worker())  # so a resume can tell it died
        try:
            return self._run(trial)
        except Exception as exc:
            if not isinstance(exc, optuna.TrialPruned):  # kept for the failure message
                trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:1000])
            raise

    def _run(self, trial: optuna.Trial) -> float:
        if self.defn.spec.objective.seeds > 1:
            return self._run_seeds(trial)
        from optuna_integration import PyTorchLightningPruningCallback

        from pipeline.prepare import prepare
        from pipeline.train import train

        cfg, sampled = self.trial_config(trial)
        prepared = prepare(cfg, device=self.device)
        metric = self.defn.spec.objective.metric
        with prepared.run(run_name=trial_run_name(trial.number, cfg),
                          parent_run_id=self.parent_run_id,
                          tags={"optuna_study": self.defn.name, "optuna_trial": trial.number},
                          ended_by={optuna.TrialPruned: PRUNED}) as run:
            trial.set_user_attr(RUN_ATTR, run.run_id)
            run.log_params({f"sampled.{k}": v for k, v in sampled.items()})
            # Reports every evaluation to Optuna (the dashboard's intermediate values) and asks
            # the pruner, which never prunes when it is "none".
            result = train(prepared, run, callbacks=[
                PyTorchLightningPruningCallback(trial, monitor=metric), *self.callbacks])
            value = objective_value(result.history.get(metric, []), metric,
                                    self.defn.spec.objective.last_k)
            run.log_metrics({"objective": value}, step=result.epochs_evaluated[-1])
            run.set_tags({"optuna_state": "COMPLETE"})
        return value

    def _run_seeds(self, trial: optuna.Trial) -> float:
        """The sampled configuration on ``objective.seeds`` seeds: the trial's run, one child
        run per seed (each a whole training, with its own model, pictures and metrics, which
        the UI compares side by side; one run holding every seed's curves would overlay them
        on the same steps). Optuna sees the seeds' aggregate; the first seed's run is the
        trial's ``mlflow_run_id``, the model that export and reeval read."""
        from pipeline.prepare import prepare
        from pipeline.train import train

        spec = self.defn.spec.objective
        cfg, sampled = self.trial_config(trial)
        tags = {"optuna_study": self.defn.name, "optuna_trial": trial.number}
        values: list[float] = []
        histories: list[list[float]] = []
        with mlflow_run(self.uri, cfg.tracking.experiment,
                        run_name=trial_run_name(trial.number, cfg),
                        parent_run_id=self.parent_run_id,
                        tags={**tags, "objective_seeds": spec.seeds},
                        ended_by={optuna.TrialPruned: PRUNED}) as trial_run:
            trial.set_user_attr(TRIAL_RUN_ATTR, trial_run.run_id)
            trial_run.log_params({f"sampled.{k}": v for k, v in sampled.items()})
            for i in range(spec.seeds):
                seed = cfg.train.seed + i
                prepared = prepare(with_seed(cfg, seed), device=self.device)
                pruning = SeedsPruning(trial, spec.metric, histories, spec.aggregate,
                                       spec.direction, step_offset=i * cfg.train.epochs)
                with prepared.run(run_name=f"trial-{trial.number:03d} seed {seed}",
                                  parent_run_id=trial_run.run_id,
                                  tags={**tags, "objective_seed": seed},
                                  ended_by={optuna.TrialPruned: PRUNED}) as run:
                    if i == 0:
                        trial.set_user_attr(RUN_ATTR, run.run_id)
                    result = train(prepared, run, callbacks=[pruning, *self.callbacks])
                    values.append(objective_value(result.history.get(spec.metric, []),
                                                  spec.metric, spec.last_k))
                    run.log_metrics({"objective": values[-1]}, step=result.epochs_evaluated[-1])
                    run.set_tags({"optuna_state": "COMPLETE"})
                histories.append(result.history.get(spec.metric, []))
            value = aggregate(values, spec.aggregate, spec.direction)
            trial_run.log_metrics({"objective": value, "objective_seed_spread":
                                   max(values) - min(values)}, step=cfg.train.epochs)
            trial_run.set_tags({"optuna_state": "COMPLETE",
                                "objective_per_seed": ", ".join(f"{v:.6g}" for v in values)})
        return value

    def trial_config(self, trial: optuna.Trial) -> tuple[Config, dict[str, Any]]:
        """The study's base config with the trial's sampled values, run as a worker runs it."""
        nested, sampled = sample(trial, self.defn.space, self.defn.base.to_dict())
        nested["train"].update(progress_bar=False, threads=self.threads)
        nested["tracking"]["tracking_uri"] = self.uri
        # The objective's metric at every evaluation, light ones too: the pruner reads it.
        objective_name = self.defn.spec.objective.metric.removeprefix(VAL_PREFIX)
        if objective_name != EVAL_SECONDS and objective_name not in nested["eval"]["always"]:
            nested["eval"]["always"] = [*nested["eval"]["always"], objective_name]
        return config_from_dict(nested), sampled


def objective_value(history: list[float], metric: str, last_k: int) -> float:
    """The mean of the metric's last ``last_k`` evaluations; raised inside the trial's run, so
    that a missing or non-finite objective ends it FAILED."""
    last = history[-last_k:]
    if not last:
        raise ObjectiveError(f"objective {metric} was never logged")
    value = sum(last) / len(last)
    if not math.isfinite(value):
        raise ObjectiveError(f"objective {metric} is {value} (training diverged?)")
    return value


def aggregate(values: list[float], how: str, direction: str) -> float:
    """A trial's value from its seeds' values. ``min``: the worst seed (the lowest when
    maximizing, the highest when minimizing); ``mean_minus_std``: the mean moved one sample
    standard deviation towards worse."""
    mean = sum(values) / len(values)
    if how == "mean":
        return mean
    maximize = direction == "maximize"
    if how == "min":
        return min(values) if maximize else max(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean - std if maximize else mean + std


def with_seed(cfg: Config, seed: int) -> Config:
    data = cfg.to_dict()
    data["train"]["seed"] = seed
    return config_from_dict(data)


class SeedsPruning(L.Callback):
    """Optuna's pruning over a trial's seeds, trained one after another: after each evaluation of
    seed i, the aggregate of that evaluation over seeds 0..i is reported at step
    ``i * epochs + epoch`` (the epochs trained so far), and the pruner asked."""

    def __init__(self, trial: optuna.Trial, metric: str, earlier: list[list[float]], how: str,
                 direction: str, *, step_offset: int) -> None:
        self.trial, self.metric, self.earlier = trial, metric, earlier
        self.how, self.direction, self.step_offset = how, direction, step_offset
        self.evaluations = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        current = getattr(pl_module, "last_eval", {}).get(self.metric)
        if trainer.sanity_checking or current is None:
            return
        k = self.evaluations
        self.evaluations += 1
        values = [h[k] for h in self.earlier if len(h) > k] + [float(current)]
        epoch = trainer.current_epoch + 1
        self.trial.report(aggregate(values, self.how, self.direction),
                          step=self.step_offset + epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} of seed {len(self.earlier)}")


class ObjectiveError(RuntimeError):
    """A trial whose objective is missing or not a finite number: it fails."""


def trial_run_name(number: int, cfg: Config) -> str:
    m, t = cfg.model, cfg.train

    def arch(widths: list[int]) -> str:
        return "x".join(map(str, widths))

    return (f"trial-{number:03d} G{arch(m.g_hidden)} D{arch(m.d_hidden)} {m.activation} "
            f"{t.loss} lr{t.g_lr:.0e}/{t.d_lr:.0e}")
