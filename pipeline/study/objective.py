"""One trial: the study's base config with sampled overrides, trained by ``fit``, one number out.

A trial is exactly a single run (the same ``fit`` as ``python -m pipeline train``) nested under
the study's parent MLflow run, with Optuna's pruning callback watching its evaluations.
"""

from __future__ import annotations

import math

import optuna

from pipeline.config import Config, config_from_dict
from pipeline.metrics.registry import EVAL_SECONDS, VAL_PREFIX
from pipeline.study.space import sample
from pipeline.study.spec import StudyDefinition
from pipeline.study.store import ERROR_ATTR, OWNER_ATTR, RUN_ATTR, this_worker
from pipeline.tracking import Ending, RunLogger

# A pruned trial did what it was asked: stopped early on purpose. It ends FINISHED (not with
# the red cross of a crash) and its tag says why.
PRUNED = Ending("FINISHED", {"optuna_state": "PRUNED"})


class Objective:
    def __init__(self, defn: StudyDefinition, parent_run_id: str, uri: str, threads: int,
                 device: str) -> None:
        self.defn = defn
        self.parent_run_id = parent_run_id
        self.uri = uri
        self.threads = threads
        self.device = device

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

        from pipeline.train import fit

        nested, sampled = sample(trial, self.defn.space, self.defn.base.to_dict())
        nested["train"].update(progress_bar=False, threads=self.threads)
        nested["tracking"]["tracking_uri"] = self.uri
        # The objective's metric at every evaluation, light ones too: the pruner reads it.
        objective_name = self.defn.spec.objective.metric.removeprefix(VAL_PREFIX)
        if objective_name != EVAL_SECONDS and objective_name not in nested["eval"]["always"]:
            nested["eval"]["always"] = [*nested["eval"]["always"], objective_name]
        cfg = config_from_dict(nested)
        metric = self.defn.spec.objective.metric
        # Reports every evaluation to Optuna (the dashboard's intermediate values) and asks the
        # pruner, which never prunes when it is "none".
        callbacks = [PyTorchLightningPruningCallback(trial, monitor=metric)]
        spec = self.defn.spec.objective
        value: list[float] = []

        def score(run: RunLogger, history: dict[str, list[float]], epochs: list[int]) -> None:
            """Inside the trial's run, so that a bad objective ends it FAILED."""
            last = history.get(metric, [])[-spec.last_k:]
            if not last:
                raise ObjectiveError(f"objective {metric} was never logged")
            objective = sum(last) / len(last)
            if not math.isfinite(objective):
                raise ObjectiveError(f"objective {metric} is {objective} (training diverged?)")
            run.log_metrics({"objective": objective}, step=epochs[-1])
            run.set_tags({"optuna_state": "COMPLETE"})
            value.append(objective)

        fit(
            cfg,
            run_name=trial_run_name(trial.number, cfg),
            parent_run_id=self.parent_run_id,
            tags={"optuna_study": self.defn.name, "optuna_trial": trial.number},
            extra_params={f"sampled.{k}": v for k, v in sampled.items()},
            callbacks=callbacks,
            ended_by={optuna.TrialPruned: PRUNED},
            device=self.device,
            on_run_start=lambda run_id: trial.set_user_attr(RUN_ATTR, run_id),
            finish=score,
        )
        return value[0]


class ObjectiveError(RuntimeError):
    """A trial whose objective is missing or not a finite number: it fails."""


def trial_run_name(number: int, cfg: Config) -> str:
    m, t = cfg.model, cfg.train

    def arch(widths: list[int]) -> str:
        return "x".join(map(str, widths))

    return (f"trial-{number:03d} G{arch(m.g_hidden)} D{arch(m.d_hidden)} {m.activation} "
            f"{t.loss} lr{t.g_lr:.0e}/{t.d_lr:.0e}")
