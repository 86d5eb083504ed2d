"""The project's side of the benchmark, timed through its public API (``prepare``, ``train``, the
study's ``Objective``) with one Lightning callback, the Stopwatch: nothing of it is patched.

A trial's logging outside validation (in ``eval_fraction``) is read from MLflow's timestamps of
its run and the Stopwatch's windows: the run's ``start_time`` to the fit's start (params, the
data's record), the epoch ends outside validation (losses), the fit's end to the run's
``end_time`` (final picture, weights, objective). An upper bound: it holds the Trainer's set-up
and MLflow's system-metrics thread too (~0.1 s a trial). Both clocks are ``time.time()``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import optuna

from pipeline.config import Config
from pipeline.config_load import config_from_dict
from pipeline.prepare import prepare
from pipeline.run_log import start_run
from pipeline.study.objective import Objective
from pipeline.study.spec import ObjectiveSpec, StudyDefinition, parse_study
from pipeline.study.store import RUN_ATTR, create_or_load
from pipeline.tracking import get_client
from pipeline.train import train


def with_train(cfg: Config, eval_every: int | None = None, **train: Any) -> Config:
    """``cfg`` with these train.* values (and eval.every_n_epochs if given)."""
    data = cfg.to_dict()
    data["train"].update(train)
    if eval_every is not None:
        data["eval"]["every_n_epochs"] = eval_every
    return config_from_dict(data)


class Stopwatch(L.Callback):
    """Lightning's fit loop and its windows: validation (evaluation, its logging, pictures,
    pruning reports) and epoch ends. After the other callbacks, so it times what they log."""

    def __init__(self) -> None:
        self.fit_seconds = self.validation_seconds = self.epoch_end_seconds = 0.0
        self.fit_started = self.train_ended = 0.0  # time.time(): MLflow's clock
        self._t0 = self._v0 = self._gap0 = self._gap_validation = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_started = time.time()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self._gap0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._gap0, self._gap_validation = time.perf_counter(), 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._v0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._v0
        self.validation_seconds += seconds
        self._gap_validation += seconds

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_gap()  # Lightning validates after the epoch's last batch, before this hook

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close_gap()  # the last losses' flush
        self.fit_seconds = time.perf_counter() - self._t0
        self.train_ended = time.time()

    def _close_gap(self) -> None:
        now = time.perf_counter()
        self.epoch_end_seconds += now - self._gap0 - self._gap_validation
        self._gap0, self._gap_validation = now, 0.0


def project_train(cfg: Config, steps: int) -> float:
    """Seconds for ``steps`` GAN steps of the module in its Trainer, as a sweep runs it: one epoch
    of ``train`` into an MLflow run, its fit loop less the evaluation that ends it (Lightning's
    one-off set-up is a trial's fixed cost: startup_seconds). An epoch of a study that evaluates
    every few epochs (the table's) is evaluated too: a run must be, and the time is left out."""
    prepared = prepare(with_train(cfg, eval_every=1, epochs=1, steps_per_epoch=steps),
                       device="cpu")
    stopwatch = Stopwatch()
    with prepared.run(run_name="bench train") as run:
        train(prepared, run, callbacks=[stopwatch])
    return stopwatch.fit_seconds - stopwatch.validation_seconds


@dataclass
class TrialTiming:
    wall: float
    fit_loop: float  # Lightning's fit loop, validation included
    validation: float
    logging_outside_validation: float  # MLflow writes and pictures outside validation windows


def trial_definition(cfg: Config, name: str,
                     objective: ObjectiveSpec | None = None) -> StudyDefinition:
    """A study whose one trial is exactly ``cfg`` (a one-choice parameter samples nothing else),
    pruned as the grid25 study prunes, its objective FID unless given (a table's study
    maximizes its quality)."""
    objective = objective or ObjectiveSpec("val/fid", "minimize")
    text = json.dumps({
        "base": cfg.to_dict(),
        "budget": {"n_trials": 1},
        "objective": dataclasses.asdict(objective),
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "median", "n_startup_trials": 5},
        "search_space": {"train.seed": {"type": "categorical", "choices": [cfg.train.seed]}},
    })
    return parse_study(text, default_name=name)


def project_trial(cfg: Config, tmp: Path, kind: str, timings: list[TrialTiming],
                  objective: ObjectiveSpec | None = None) -> float:
    """Seconds of one real trial in a running worker (Optuna study, objective, training, MLflow,
    pruning); its TrialTiming is appended to ``timings``."""
    name = f"trial-{kind}-{len(timings)}"
    defn = trial_definition(cfg, name, objective)
    study, _ = create_or_load(defn, str(tmp / f"{name}.journal"))
    uri = cfg.tracking.tracking_uri or ""
    client = get_client(uri)
    parent = start_run(client, "bench", run_name=f"bench {name}")
    stopwatch = Stopwatch()
    trial_objective = Objective(defn, parent, uri, threads=1, device="cpu",
                                callbacks=(stopwatch,))
    start = time.perf_counter()
    study.optimize(trial_objective, n_trials=1)
    wall = time.perf_counter() - start
    trial = study.trials[-1]
    if trial.state != optuna.trial.TrialState.COMPLETE:
        raise RuntimeError(f"benchmark trial {name} ended {trial.state.name}")
    run = client.get_run(trial.user_attrs[RUN_ATTR]).info
    timings.append(TrialTiming(wall, stopwatch.fit_seconds, stopwatch.validation_seconds, (
        stopwatch.fit_started - run.start_time / 1e3 + stopwatch.epoch_end_seconds
        + run.end_time / 1e3 - stopwatch.train_ended)))
    return wall
