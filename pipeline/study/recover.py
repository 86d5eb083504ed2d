"""Rebuild a study from its MLflow runs when its journal is damaged or lost.

Every trial is also an MLflow run under the study's parent run: its sampled values (params
``sampled.<name>``), how it ended (tag ``optuna_state``, the run's status), the values Optuna
got (metrics ``objective`` or ``objective/<metric>``) and the objective's per-epoch history
(the pruner's intermediate values). The parent run keeps the study file (``study.yaml``), which
gives the directions and each parameter's distribution. The damaged journal is renamed aside,
never deleted or written to.

One job past 300 lines: reading the runs back and replaying them into a new journal is one
recovery, checked end to end by its tests.
"""

from __future__ import annotations

import datetime
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from pipeline.config_load import mask_secrets
from pipeline.errors import ConfigError
from pipeline.metrics.registry import MAIN_METRICS, val_key
from pipeline.study.space import WIDTH_KEYS, ParamSpec
from pipeline.study.spec import StudyDefinition, check_study_name, parse_study
from pipeline.study.storage import check_journal, folder_lock, open_storage, storage_url
from pipeline.study.store import (
    CREATED_ATTR,
    ERROR_ATTR,
    PARENT_ATTR,
    RUN_ATTR,
    SCORES_ATTR,
    SPEC_ATTR,
    TRIAL_RUN_ATTR,
)

State = optuna.trial.TrialState
PARAM_PREFIX = "sampled."
PARENT_TAG = "mlflow.parentRunId"
LOST = "no MLflow run for this trial number (lost with the journal)"
_CONSTRAINTS_KEY = "constraints"  # optuna.samplers._base's key for a trial's constraints


@dataclass
class Recovered:
    name: str
    counts: dict[str, int]  # complete, pruned, failed
    kept: Path | None  # where the damaged journal now is; None when there was none


def recover(name: str, storage: str | None = None, *, force: bool = False) -> Recovered:
    """The study ``name`` rebuilt in its journal file from its MLflow runs; raises ConfigError
    when there is nothing to recover (unless ``force``) or nothing to recover it from."""
    check_study_name("--study", name)
    url = storage_url(storage)
    if "://" in url:
        raise ConfigError(f"--storage {mask_secrets(url)}: recover rebuilds journal files "
                          f"only, not a database storage")
    path = Path(url)
    if path.is_dir():
        raise ConfigError(f"--storage {url}: a folder; expected a journal file")
    damaged = _journal_state(path, name, force)  # before MLflow: a refusal costs nothing
    client, parent, runs = _study_runs(name, url)
    text = _study_text(client, parent.info.run_id, name)
    defn = parse_study(text, default_name=name)
    trials = [_trial(client, defn, run, runs) for run in _trial_runs(runs, parent.info.run_id)]
    trials = _fill_gaps(trials)
    path.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(path.parent, exclusive=True):  # no sweep creates a journal meanwhile
        kept, others = _move_aside(path) if damaged else (None, [])
        study = _new_study(defn, path, parent.info.run_id, parent.info.start_time)
        for trial in trials:
            study.add_trial(trial)
        if kept is not None:
            for other in set(others) - {name}:  # a forced one keeps the other studies
                optuna.copy_study(from_study_name=other, from_storage=_journal(kept),
                                  to_storage=study._storage)
    counts = {"complete": _count(trials, State.COMPLETE), "pruned": _count(trials, State.PRUNED),
              "failed": _count(trials, State.FAIL)}
    return Recovered(name, counts, kept)


def summary_line(result: Recovered, storage: str | None = None) -> str:
    c = result.counts
    kept = (f"the damaged journal is kept at {result.kept}" if result.kept is not None else
            f"it was added to {storage_url(storage)}")
    return (f"study {result.name} recovered from MLflow: {sum(c.values())} trials "
            f"({c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed); {kept}")


def _journal_state(path: Path, name: str, force: bool) -> bool:
    """Whether the file must be moved aside: it is damaged, or it holds the study and
    ``force`` says to rebuild it anyway. A readable journal without the study gets it added."""
    if not path.exists():
        return False
    try:
        check_journal(path)
        names = optuna.get_all_study_names(open_storage(str(path)))
    except ConfigError:
        return True
    if name not in names:
        return False
    if not force:
        raise ConfigError(f"--study {name}: {path} is readable and holds the study: nothing "
                          f"to recover (--force rebuilds it from MLflow anyway)")
    return True


def _move_aside(path: Path) -> tuple[Path, list[str]]:
    """The journal renamed to ``<journal>.damaged-<time>``, and the studies it still holds
    when it is readable (a forced recovery)."""
    kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while kept.exists():  # two recoveries in one second: never overwrite the first's
        kept = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    path.rename(kept)
    try:
        check_journal(kept)
        names = optuna.get_all_study_names(_journal(kept))
    except Exception:  # damaged: its other studies need a recovery each
        names = []
    return kept, names


def _journal(path: Path) -> optuna.storages.JournalStorage:
    """A journal opened directly: ``open_storage`` takes the folder's lock, already held."""
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _study_runs(name: str, storage: str) -> tuple[Any, Any, list[Any]]:
    """The study's parent run and every run tagged with the study (trials and seeds)."""
    from pipeline.tracking import open_store_for_reading, tracking_uri

    client = open_store_for_reading(tracking_uri())
    found = client.get_experiment_by_name(name)
    experiments = ([found] if found is not None else
                   client.search_experiments())  # the study file may name its experiment
    runs = client.search_runs([e.experiment_id for e in experiments],
                              filter_string=f"tags.optuna_study = '{name}'",
                              max_results=50000)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    if not parents:
        raise ConfigError(f"--study {name}: no parent run of the study in MLflow "
                          f"({client.tracking_uri}): set MLFLOW_TRACKING_URI to the store the "
                          f"study was run with")
    same_storage = [r for r in parents if _same_path(r.data.tags.get("optuna_storage"), storage)]
    if not same_storage and len(parents) > 1:
        raise ConfigError(f"--study {name}: {len(parents)} parent runs in MLflow and none ran "
                          f"with --storage {storage} (runs: "
                          f"{', '.join(r.info.run_id for r in parents)})")
    parent = max(same_storage or parents, key=lambda r: r.info.start_time)
    return client, parent, runs


def _same_path(a: str | None, b: str) -> bool:
    return a is not None and (a == b or Path(a).resolve() == Path(b).resolve())


def _study_text(client: Any, parent_id: str, name: str) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(parent_id, "study.yaml", tmp)
        except Exception as exc:
            raise ConfigError(f"--study {name}: the parent run {parent_id} has no study.yaml "
                              f"({type(exc).__name__})") from None
        return Path(local).read_text()


def _trial_runs(runs: list[Any], parent_id: str) -> list[Any]:
    """The parent's children that are trials (a seed's run is a child of its trial's run), by
    trial number; of two runs with one number, the later."""
    by_number: dict[int, Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time):
        tags = run.data.tags
        if tags.get(PARENT_TAG) == parent_id and tags.get("optuna_trial", "").isdigit():
            by_number[int(tags["optuna_trial"])] = run
    return [by_number[n] for n in sorted(by_number)]


def _trial(client: Any, defn: StudyDefinition, run: Any,
           runs: list[Any]) -> optuna.trial.FrozenTrial:
    tags = run.data.tags
    state = _state(run)
    params, distributions = _params(defn, run.data.params)
    values = _values(defn, run.data.metrics) if state == State.COMPLETE else None
    if state == State.COMPLETE and values is None:
        state = State.FAIL  # ended FINISHED without its objective: Optuna never got it
    user_attrs: dict[str, Any] = {RUN_ATTR: run.info.run_id}
    if "objective_seeds" in tags:
        user_attrs[TRIAL_RUN_ATTR] = run.info.run_id
        user_attrs[RUN_ATTR] = _first_seed(runs, run.info.run_id) or run.info.run_id
    if state == State.FAIL:
        user_attrs[ERROR_ATTR] = tags.get("error", f"run ended {run.info.status}")
    system_attrs: dict[str, Any] = {}
    if values is not None:
        scores = _scores(client, defn, run, values)
        user_attrs[SCORES_ATTR] = scores
        if defn.constraints and all(c.metric in scores for c in defn.constraints):
            system_attrs[_CONSTRAINTS_KEY] = [c.violation(scores[c.metric])
                                              for c in defn.constraints]
    intermediate = _intermediate(client, defn, run)
    if state == State.PRUNED and intermediate:  # Optuna's tell gives it its last report
        values = [intermediate[max(intermediate)]]
    return optuna.trial.FrozenTrial(
        number=int(tags["optuna_trial"]), trial_id=0, state=state, value=None, values=values,
        datetime_start=_time(run.info.start_time),
        datetime_complete=_time(run.info.end_time) or datetime.datetime.now(),
        params=params, distributions=distributions, user_attrs=user_attrs,
        system_attrs=system_attrs, intermediate_values=intermediate)


def _state(run: Any) -> State:
    """FAILED or KILLED runs (and any still RUNNING: its worker is gone) failed."""
    if run.info.status != "FINISHED":
        return State.FAIL
    return {"COMPLETE": State.COMPLETE, "PRUNED": State.PRUNED}.get(
        run.data.tags.get("optuna_state", ""), State.FAIL)


def _params(defn: StudyDefinition, logged: dict[str, str]
            ) -> tuple[dict[str, Any], dict[str, optuna.distributions.BaseDistribution]]:
    params: dict[str, Any] = {}
    distributions: dict[str, optuna.distributions.BaseDistribution] = {}
    for key, text in logged.items():
        if not key.startswith(PARAM_PREFIX):
            continue
        name = key.removeprefix(PARAM_PREFIX)
        spec = _spec_of(defn, name)
        if spec is None:
            raise ConfigError(f"--study {defn.name}: param {key} is not in the study file's "
                              f"search_space (was the study resumed with --allow-changes?)")
        params[name] = _value(spec, text, f"--study {defn.name}: param {key}")
        distributions[name] = distribution(spec)
    return params, distributions


def _spec_of(defn: StudyDefinition, name: str) -> ParamSpec | None:
    """``model.g_width_1`` is sampled from ``model.g_width``'s spec (one per layer)."""
    if name in defn.space:
        return defn.space[name]
    width, _, index = name.rpartition("_")
    return defn.space.get(width) if width in WIDTH_KEYS and index.isdigit() else None


def distribution(spec: ParamSpec) -> optuna.distributions.BaseDistribution:
    """The distribution ``space.suggest`` samples ``spec`` from."""
    if spec.type == "categorical":
        return optuna.distributions.CategoricalDistribution(spec.choices or [])
    assert spec.low is not None and spec.high is not None
    if spec.type == "int":
        return optuna.distributions.IntDistribution(int(spec.low), int(spec.high),
                                                    log=spec.log, step=int(spec.step or 1))
    return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log,
                                                  step=spec.step)


def _value(spec: ParamSpec, text: str, where: str) -> Any:
    """A sampled value back from MLflow's string (``str(value)``)."""
    try:
        if spec.type == "int":
            return int(text)
        if spec.type == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not a {spec.type}") from None
    for choice in spec.choices or []:
        if str(choice) == text:
            return choice
    raise ConfigError(f"{where}: {text!r} is none of the choices {spec.choices}")


def _values(defn: StudyDefinition, metrics: dict[str, float]) -> list[float] | None:
    keys = list(defn.objective_metrics([0.0] * len(defn.metrics)))
    if not all(k in metrics for k in keys):
        return None
    return [float(metrics[k]) for k in keys]


def _intermediate(client: Any, defn: StudyDefinition, run: Any) -> dict[int, float]:
    """What the pruning callback reported: the objective's metric at each evaluation, at step
    ``epoch - 1`` (Lightning's current epoch; MLflow logs evaluations at step = epoch). A
    multi-objective study has no pruning and a seeds trial's run no per-epoch history."""
    metric = defn.spec.objective.metric
    if defn.multi_objective or metric not in run.data.metrics:
        return {}
    import numpy as np

    # Lightning hands the callback a float32 tensor: its value, as the pruner saw it
    return {m.step - 1: float(np.float32(m.value))
            for m in client.get_metric_history(run.info.run_id, metric)}


def _scores(client: Any, defn: StudyDefinition, run: Any,
            values: list[float]) -> dict[str, float]:
    """The scores as ``objective.trial_scores`` made them: the objectives' values, the costs,
    and the ``last_k`` mean of each constraint's and main metric's evaluations."""
    last_k = defn.spec.objective.last_k
    metrics = run.data.metrics
    scores = {k: float(v) for k, v in metrics.items() if k.startswith("cost/")}
    wanted = {c.metric for c in defn.constraints} | {val_key(m) for m in MAIN_METRICS}
    for key in sorted(wanted - set(scores)):
        if key in metrics:
            history = sorted(client.get_metric_history(run.info.run_id, key),
                             key=lambda m: m.step)[-last_k:]
            scores[key] = sum(m.value for m in history) / len(history)
    scores.update(zip(defn.metrics, values, strict=True))
    return scores


def _first_seed(runs: list[Any], trial_run_id: str) -> str | None:
    seeds = [r for r in runs if r.data.tags.get(PARENT_TAG) == trial_run_id
             and r.data.tags.get("objective_seed", "").lstrip("-").isdigit()]
    if not seeds:
        return None
    return str(min(seeds, key=lambda r: int(r.data.tags["objective_seed"])).info.run_id)


def _fill_gaps(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """A failed placeholder for each number without a run, so trials keep their numbers (run
    names, compare and export's --trial say ``trial 7``)."""
    by_number = {t.number: t for t in trials}
    now = datetime.datetime.now()
    out = []
    for number in range(max(by_number, default=-1) + 1):
        out.append(by_number.get(number) or optuna.trial.FrozenTrial(
            number=number, trial_id=0, state=State.FAIL, value=None, values=None,
            datetime_start=now, datetime_complete=now, params={}, distributions={},
            user_attrs={ERROR_ATTR: LOST}, system_attrs={}, intermediate_values={}))
    return out


def _new_study(defn: StudyDefinition, path: Path, parent_id: str,
               started_ms: int) -> optuna.Study:
    directions = [optuna.study.StudyDirection[d.upper()] for d in defn.directions]
    study = optuna.create_study(study_name=defn.name, directions=directions,
                                storage=open_storage(str(path), create=True))
    with warnings.catch_warnings():  # "experimental": it is what names the objectives
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(defn.metrics)
    study.set_user_attr(SPEC_ATTR, defn.text)
    study.set_user_attr(CREATED_ATTR, started_ms / 1000)
    study.set_user_attr(PARENT_ATTR, parent_id)
    return study


def _time(ms: int | None) -> datetime.datetime | None:
    return None if ms is None else datetime.datetime.fromtimestamp(ms / 1000)


def _count(trials: list[optuna.trial.FrozenTrial], state: State) -> int:
    return sum(t.state == state for t in trials)
