"""One trial: the study's base config with sampled overrides, trained by ``fit``, one number out.

A trial is exactly a single run (the same ``fit`` as ``python -m pipeline train``) nested under
the study's parent MLflow run, with Optuna's pruning callback watching its evaluations.
"""

from __future__ import annotations

import math

import optuna

from pipeline.config import Config, config_from_dict
from pipeline.study.space import sample
from pipeline.study.spec import StudyDefinition
from pipeline.study.store import RUN_ATTR
from pipeline.tracking import get_client


class Objective:
    def __init__(self, defn: StudyDefinition, parent_run_id: str, uri: str, threads: int,
                 device: str) -> None:
        self.defn = defn
        self.parent_run_id = parent_run_id
        self.uri = uri
        self.threads = threads
        self.device = device

    def __call__(self, trial: optuna.Trial) -> float:
        from optuna_integration import PyTorchLightningPruningCallback

        from pipeline.train import fit

        nested, sampled = sample(trial, self.defn.space, self.defn.base.to_dict())
        nested["train"].update(progress_bar=False, threads=self.threads)
        nested["tracking"]["tracking_uri"] = self.uri
        cfg = config_from_dict(nested)
        metric = self.defn.spec.objective.metric
        callbacks = []
        if self.defn.spec.pruner.name != "none":
            callbacks.append(PyTorchLightningPruningCallback(trial, monitor=metric))
        result = fit(
            cfg,
            run_name=trial_run_name(trial.number, cfg),
            parent_run_id=self.parent_run_id,
            tags={"optuna_study": self.defn.name, "optuna_trial": trial.number},
            extra_params={f"sampled.{k}": v for k, v in sampled.items()},
            callbacks=callbacks,
            killed_by={optuna.TrialPruned: {"optuna_state": "PRUNED"}},
            device=self.device,
            on_run_start=lambda run_id: trial.set_user_attr(RUN_ATTR, run_id),
        )
        values = result.history.get(metric, [])
        client = get_client(self.uri)
        if not values:
            client.set_tag(result.run_id, "optuna_state", "FAIL")
            raise RuntimeError(f"objective {metric} was never logged (eval.every_n_epochs > "
                               f"train.epochs?)")
        last = values[-self.defn.spec.objective.last_k:]
        objective = sum(last) / len(last)
        client.set_tag(result.run_id, "optuna_state", "FAIL" if math.isnan(objective)
                       else "COMPLETE")
        client.log_metric(result.run_id, "objective", objective, step=result.epochs_evaluated[-1])
        return objective


def trial_run_name(number: int, cfg: Config) -> str:
    m, t = cfg.model, cfg.train

    def arch(widths: list[int]) -> str:
        return "x".join(map(str, widths))

    return (f"trial-{number:03d} G{arch(m.g_hidden)} D{arch(m.d_hidden)} {m.activation} "
            f"{t.loss} lr{t.g_lr:.0e}/{t.d_lr:.0e}")
