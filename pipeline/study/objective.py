"""One trial: the study's base config with sampled overrides, prepared, trained, one number out.

A trial is exactly a single run (the same ``prepare`` and ``train`` as ``python -m pipeline
train``) nested under the study's parent MLflow run, with Optuna's pruning callback watching its
evaluations. It reads like Optuna's recipe: suggest, build, fit, return the value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import optuna

from pipeline.config import Config, config_from_dict
from pipeline.metrics.registry import EVAL_SECONDS, VAL_PREFIX
from pipeline.study.space import sample
from pipeline.study.spec import StudyDefinition
from pipeline.study.store import ERROR_ATTR, OWNER_ATTR, RUN_ATTR, this_worker
from pipeline.tracking import Ending

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


class ObjectiveError(RuntimeError):
    """A trial whose objective is missing or not a finite number: it fails."""


def trial_run_name(number: int, cfg: Config) -> str:
    m, t = cfg.model, cfg.train

    def arch(widths: list[int]) -> str:
        return "x".join(map(str, widths))

    return (f"trial-{number:03d} G{arch(m.g_hidden)} D{arch(m.d_hidden)} {m.activation} "
            f"{t.loss} lr{t.g_lr:.0e}/{t.d_lr:.0e}")
