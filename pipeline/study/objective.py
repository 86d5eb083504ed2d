"""One trial: the study's base config with sampled overrides, prepared, trained, one number out.

A trial is exactly a single run (the same ``prepare`` and ``train`` as ``python -m pipeline
train``) nested under the study's parent MLflow run, with Optuna's pruning callback watching its
evaluations. It reads like Optuna's recipe: suggest, build, fit, return the value.

One job past 300 lines: the trial, its seeds (``objective.seeds``) and their aggregate are one
number out for Optuna.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as L
import optuna

from pipeline.config import Config
from pipeline.config_load import config_from_dict
from pipeline.faults import storage_fault
from pipeline.metrics.registry import EVAL_SECONDS, MAIN_METRICS, VAL_PREFIX, val_key
from pipeline.run_log import Ending, mlflow_run
from pipeline.study.space import sample
from pipeline.study.spec import StudyDefinition
from pipeline.study.store import (
    ERROR_ATTR,
    OWNER_ATTR,
    RUN_ATTR,
    SCORES_ATTR,
    TRIAL_RUN_ATTR,
    this_worker,
)
from pipeline.tracking import get_client

if TYPE_CHECKING:
    import lightning.pytorch as L

# A pruned trial did what it was asked: stopped early on purpose. It ends FINISHED (not with
# the red cross of a crash) and its tag says why.
PRUNED = Ending("FINISHED", {"optuna_state": "PRUNED"})
Value = float | list[float]  # one objective's value, or several objectives' values in order


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
        # (trial number, what was refused) after a full disk or a read-only store: the study
        # stops, since every next trial would hit it too
        self.fault: tuple[int, str] | None = None

    def __call__(self, trial: optuna.Trial) -> Value:
        trial.set_user_attr(OWNER_ATTR, this_worker())  # so a resume can tell it died
        try:
            values = self._run(trial)
        except Exception as exc:
            pruned = isinstance(exc, optuna.TrialPruned)
            fault = None if pruned else storage_fault(exc)
            if fault is not None:
                self.fault = (trial.number, fault)
                trial.study.stop()
            with contextlib.suppress(Exception):  # a full disk may refuse these too
                if not pruned:  # kept for the failure message
                    trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:1000])
                self.rename(trial, lambda name: mark(name, "[pruned]" if pruned else "[failed]"))
            raise
        shown = values if isinstance(values, list) else [values]
        self.rename(trial, lambda name: f"{name} = " + " / ".join(f"{v:.4g}" for v in shown))
        return values

    def rename(self, trial: optuna.Trial, how: Callable[[str], str]) -> None:
        """The trial's run name says how it ended: [pruned] or [failed] after the trial number
        (the runs table's name column shows about 20 characters), or the objective's value at
        the end, so the table tells them apart without a column (a pruned run ends FINISHED,
        with the same green check as a complete one)."""
        run_id = trial.user_attrs.get(TRIAL_RUN_ATTR) or trial.user_attrs.get(RUN_ATTR)
        if not run_id:
            return
        try:
            client = get_client(self.uri)
            client.update_run(run_id, name=how(client.get_run(run_id).info.run_name))
        except Exception:  # a name is a courtesy: never fail a trial over it
            return

    def _run(self, trial: optuna.Trial) -> Value:
        if self.defn.spec.objective.seeds > 1:
            return self._run_seeds(trial)
        from optuna_integration import PyTorchLightningPruningCallback

        from pipeline.prepare import prepare
        from pipeline.train import train

        cfg, sampled = self.trial_config(trial)
        prepared = prepare(cfg, device=self.device)
        # Reports every evaluation to Optuna (the dashboard's intermediate values) and asks the
        # pruner, which never prunes when it is "none"; Optuna cannot prune several objectives.
        pruning = [] if self.defn.multi_objective else [
            PyTorchLightningPruningCallback(trial, monitor=self.defn.spec.objective.metric)]
        with prepared.run(run_name=trial_run_name(trial.number, sampled),
                          parent_run_id=self.parent_run_id,
                          tags={"optuna_study": self.defn.name, "optuna_trial": trial.number},
                          ended_by={optuna.TrialPruned: PRUNED}) as run:
            trial.set_user_attr(RUN_ATTR, run.run_id)
            run.log_params({f"sampled.{k}": v for k, v in sampled.items()})
            result = train(prepared, run, callbacks=[*pruning, *self.callbacks])
            scores = trial_scores(self.defn, result.history, result.costs)
            values = self.finish(trial, scores)
            run.log_metrics(self.defn.objective_metrics(values), step=result.epochs_evaluated[-1])
            run.set_tags({"optuna_state": "COMPLETE"})
        return values[0] if len(values) == 1 else values

    def _run_seeds(self, trial: optuna.Trial) -> Value:
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
        per_seed: list[dict[str, float]] = []
        histories: list[list[float]] = []
        with mlflow_run(self.uri, cfg.tracking.experiment,
                        run_name=trial_run_name(trial.number, sampled),
                        parent_run_id=self.parent_run_id,
                        tags={**tags, "objective_seeds": spec.seeds},
                        ended_by={optuna.TrialPruned: PRUNED}) as trial_run:
            trial.set_user_attr(TRIAL_RUN_ATTR, trial_run.run_id)
            trial_run.log_params({f"sampled.{k}": v for k, v in sampled.items()})
            for i in range(spec.seeds):
                seed = cfg.train.seed + i
                prepared = prepare(with_seed(cfg, seed), device=self.device)
                pruning = [] if self.defn.multi_objective else [
                    SeedsPruning(trial, spec.metric, histories, spec.aggregate, spec.direction,
                                 step_offset=i * cfg.train.epochs)]
                with prepared.run(run_name=f"trial-{trial.number:03d} seed {seed}",
                                  parent_run_id=trial_run.run_id,
                                  tags={**tags, "objective_seed": seed},
                                  ended_by={optuna.TrialPruned: PRUNED}) as run:
                    if i == 0:
                        trial.set_user_attr(RUN_ATTR, run.run_id)
                    result = train(prepared, run, callbacks=[*pruning, *self.callbacks])
                    per_seed.append(trial_scores(self.defn, result.history, result.costs))
                    run.log_metrics(self.defn.objective_metrics([
                        per_seed[-1][m] for m in self.defn.metrics]),
                        step=result.epochs_evaluated[-1])
                    run.set_tags({"optuna_state": "COMPLETE"})
                histories.append(result.history.get(spec.metric, []))
            scores = {key: self.over_seeds(key, [s[key] for s in per_seed])
                      for key in per_seed[0] if all(key in s for s in per_seed)}
            values = self.finish(trial, scores)
            first = [s[spec.metric] for s in per_seed]
            trial_run.log_metrics({**self.defn.objective_metrics(values),
                                   "objective_seed_spread": max(first) - min(first)},
                                  step=cfg.train.epochs)
            trial_run.set_tags({"optuna_state": "COMPLETE",
                                "objective_per_seed": ", ".join(f"{v:.6g}" for v in first)})
        return values[0] if len(values) == 1 else values

    def finish(self, trial: optuna.Trial, scores: dict[str, float]) -> list[float]:
        """The values Optuna gets, in the objectives' order; the scores kept with the trial
        (for ``--pick`` and compare) and the constraints' violations set on it."""
        trial.set_user_attr(SCORES_ATTR, scores)
        for condition in self.defn.constraints:
            trial.set_constraint(str(condition), condition.violation(scores[condition.metric]))
        return [scores[metric] for metric in self.defn.metrics]

    def over_seeds(self, key: str, values: list[float]) -> float:
        """A score over the trial's seeds: an objective's by ``objective.aggregate`` in its own
        direction; any other score (a constraint's metric, a cost) by the plain mean."""
        how = self.defn.spec.objective.aggregate
        for objective in self.defn.objectives:
            if objective.metric == key:
                return aggregate(values, how, objective.direction)
        return aggregate(values, "mean", "maximize")

    def trial_config(self, trial: optuna.Trial) -> tuple[Config, dict[str, Any]]:
        """The study's base config with the trial's sampled values, run as a worker runs it."""
        nested, sampled = sample(trial, self.defn.space, self.defn.base.to_dict())
        nested["train"].update(progress_bar=False, threads=self.threads)
        nested["tracking"]["tracking_uri"] = self.uri
        # The objective's metric at every evaluation, light ones too: the pruner reads it.
        metric = self.defn.spec.objective.metric
        name = metric.removeprefix(VAL_PREFIX)
        if (metric.startswith(VAL_PREFIX) and name != EVAL_SECONDS
                and name not in nested["eval"]["always"]):
            nested["eval"]["always"] = [*nested["eval"]["always"], name]
        return config_from_dict(nested), sampled


def trial_scores(defn: StudyDefinition, history: dict[str, list[float]],
                 costs: dict[str, float]) -> dict[str, float]:
    """What a trial is judged by: every objective (its ``last_k`` mean, or a cost), every
    constraint's metric and the main metrics (the first objective's ``last_k`` mean), and the
    costs. A missing or non-finite objective or constraint raises ObjectiveError."""
    last_k = defn.spec.objective.last_k
    wanted = {o.metric: o.last_k for o in defn.objectives}
    for c in defn.constraints:
        wanted.setdefault(c.metric, last_k)
    scores = {k: v for k, v in costs.items() if math.isfinite(v)}
    for name in MAIN_METRICS:
        key = val_key(name)
        if history.get(key) and key not in wanted:
            last = history[key][-last_k:]
            if all(math.isfinite(v) for v in last):
                scores[key] = sum(last) / len(last)
    for metric, k in wanted.items():
        if metric in costs:
            if not math.isfinite(costs[metric]):
                raise ObjectiveError(f"objective {metric} is {costs[metric]}")
            continue
        scores[metric] = objective_value(history.get(metric, []), metric, k)
    return scores


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


def mark(name: str, state: str) -> str:
    """``trial-003 G 32 ...`` -> ``trial-003 [pruned] G 32 ...``."""
    number, _, rest = name.partition(" ")
    return f"{number} {state} {rest}".rstrip()


RUN_NAME_CHARS = 110  # the runs table's name column shows about this much at its widest


def trial_run_name(number: int, sampled: dict[str, Any]) -> str:
    """What differs between a study's trials: the trial number, then its sampled values
    (``G 128x64`` for sampled layer widths, ``g_lr=3.2e-04``), shortened; the fixed base
    config is the same for every run and left out."""
    parts: list[str] = []
    widths: dict[str, list[str]] = {}
    for key, value in sampled.items():
        name = key.split(".", 1)[-1]
        net, _, index = name.partition("_width_")
        if index.isdigit():
            widths.setdefault(net, []).append(str(value))
        elif name not in ("g_layers", "d_layers"):
            parts.append(f"{name}={value:.2g}" if isinstance(value, float) else f"{name}={value}")
    nets = [f"{net.upper()} {'x'.join(w)}" for net, w in widths.items()]
    text = " ".join([f"trial-{number:03d}", *nets, *parts])
    return text if len(text) <= RUN_NAME_CHARS else text[:RUN_NAME_CHARS - 1] + "…"
