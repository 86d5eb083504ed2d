"""Which trial export and reeval take: the best one, a trial by number, or a ``--pick`` rule.

A one-objective study has a best trial. A multi-objective study has a Pareto front and no best
trial: the user chooses, by number (``--trial N``) or by a rule over the trials' recorded scores
(``--pick "smallest cost/g_params with val/pacgan_score >= 0.95"``); without a choice it is an
error that lists the front, so that the next command can name one.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from pipeline.errors import ConfigError
from pipeline.study.conditions import parse_pick
from pipeline.study.spec import StudyDefinition, study_metrics
from pipeline.study.store import RUN_ATTR, SCORES_ATTR, TRIAL_RUN_ATTR, best_trial, pareto_front

COMPLETE = optuna.trial.TrialState.COMPLETE


def chosen_trial(study: optuna.Study, defn: StudyDefinition, *, trial: int | None = None,
                 pick: str | None = None) -> optuna.trial.FrozenTrial:
    if trial is not None and pick is not None:
        raise ConfigError("--trial and --pick: give one of them")
    if trial is not None:
        return numbered_trial(study, trial)
    if pick is not None:
        rule = parse_pick(pick, study_metrics(defn.base))
        feasible = {t.number: t for t in study.get_trials(deepcopy=False, states=(COMPLETE,))
                    if all(v <= 0 for v in t.constraints.values())}
        number = rule.choose({n: scores(t, defn) for n, t in feasible.items()})
        if number is None:
            raise ConfigError(f"--pick {pick!r}: no complete trial of study {study.study_name} "
                              f"meets it; {front_text(study, defn)}")
        return feasible[number]
    if defn.multi_objective:
        raise ConfigError(f"study {study.study_name} has {len(defn.objectives)} objectives: "
                          f"choose with --trial N or --pick RULE (make ... TRIAL=N or PICK=...);"
                          f" {front_text(study, defn)}")
    best = best_trial(study)
    if best is None:
        raise ConfigError(f"study {study.study_name}: no complete trial (run `make sweep`)")
    return best


def numbered_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise ConfigError(f"--trial {number}: study {study.study_name} has trials 0 to "
                          f"{len(trials) - 1}")
    t = trials[number]
    if t.state != COMPLETE:
        raise ConfigError(f"--trial {number}: {t.state.name.lower()}, not complete (only a "
                          f"complete trial has a final model and scores)")
    return t


def scores(trial: optuna.trial.FrozenTrial, defn: StudyDefinition) -> dict[str, float]:
    """The trial's recorded scores; a trial from before they were recorded has its values."""
    recorded = dict(trial.user_attrs.get(SCORES_ATTR, {}))
    for metric, value in zip(defn.metrics, trial.values or [], strict=False):
        recorded.setdefault(metric, value)
    return recorded


def front_text(study: optuna.Study, defn: StudyDefinition) -> str:
    front = pareto_front(study)
    if not front:
        return "it has no complete trial yet"
    members = "; ".join(
        f"trial {t.number} (" + ", ".join(f"{m} {v:.4g}" for m, v in
                                          zip(defn.metrics, t.values, strict=True)) + ")"
        for t in front)
    return f"its Pareto front: {members}"


class DisagreementError(ConfigError):
    """Optuna's value for a trial differs from the one its MLflow run recorded: the journal or
    the store was damaged or replaced, so neither can be trusted to pick a model."""


def check_recorded(trial: optuna.trial.FrozenTrial, defn: StudyDefinition, client: Any) -> None:
    """A complete trial's values against its run's ``objective`` metrics (compare, export and
    the ``best`` tag check them before they rank, ship or mark anything). With several seeds
    per trial the values are on the trial's run, which holds the seeds' runs."""
    run_id = trial.user_attrs.get(TRIAL_RUN_ATTR) or trial.user_attrs.get(RUN_ATTR, "")
    metrics = client.get_run(run_id).data.metrics
    for key, value in defn.objective_metrics(trial.values).items():
        recorded = metrics.get(key)
        if recorded is None or not math.isclose(recorded, value, rel_tol=1e-6, abs_tol=1e-9):
            raise DisagreementError(f"trial {trial.number}: Optuna says {key} = {value}, its "
                                    f"MLflow run {run_id} says {recorded}; was the journal or "
                                    f"the MLflow store damaged or replaced?")
