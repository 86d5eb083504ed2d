"""Study files and Optuna plumbing: study definition, storage, sampler, pruner.

A study file (``studies/<name>.yaml``) holds the base config, the search space, the objective,
the budget, the sampler and the pruner. Everything in it is validated when it is loaded, before
any trial runs. The study's name is the file's stem unless the file names one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from pipeline.config import (
    PROJECT_ROOT,
    Config,
    ConfigError,
    build_dataclass,
    load_config,
    read_yaml,
)
from pipeline.metrics.names import resolve_metrics
from pipeline.search_space import ParamSpec, fixed_params, parse_space

DEFAULT_STORAGE = Path("runs") / "optuna.journal"
SAMPLERS = ("tpe", "random", "cmaes", "gp")
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = ("minimize", "maximize")
# A study's budget counts these: a pruned trial is a finished one.
FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
SPEC_ATTR = "study_file"  # the study file's text, kept in the study so any machine can rebuild it


@dataclass
class ObjectiveSpec:
    metric: str = "val/fid"
    direction: str = "minimize"
    # One evaluation is noisy (grid25's high_quality swings 0.05-0.13 between epochs); the mean
    # of the last few ranks trials better.
    last_k: int = 3


@dataclass
class BudgetSpec:
    n_trials: int = 20
    timeout: float | None = None  # seconds, per invocation
    epochs: int | None = None  # epochs per trial; overrides train.epochs of the base


@dataclass
class SamplerSpec:
    name: str = "tpe"
    seed: int | None = 0
    n_startup_trials: int = 10  # tpe/gp: random trials before the model kicks in


@dataclass
class PrunerSpec:
    name: str = "median"
    n_startup_trials: int = 5  # median: trials that are never pruned
    n_warmup_steps: int = 3  # median: epochs before a trial can be pruned
    interval_steps: int = 1
    min_resource: int = 2  # hyperband: epochs of the first rung
    reduction_factor: int = 3  # hyperband


@dataclass
class StudySpec:
    search_space: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    description: str = ""
    config: str | None = None  # a base config file (relative to the project root)
    base: dict[str, Any] = field(default_factory=dict)  # config overrides, nested like the YAML
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    # Trials to run first (Optuna's enqueue_trial), e.g. a known-good setting, so the search
    # starts from it: {search_space key: value}; keys left out are sampled.
    enqueue: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StudyDefinition:
    name: str
    spec: StudySpec
    base: Config  # the resolved base config every trial starts from
    space: dict[str, ParamSpec]
    text: str  # the study file as written
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # as Optuna parameter names


def load_study_file(path: str | Path) -> StudyDefinition:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such study file (see studies/ for the shipped ones)")
    return parse_study(path.read_text(), default_name=path.stem, source=str(path))


def parse_study(text: str, *, default_name: str, source: str = "study") -> StudyDefinition:
    try:
        raw = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", exc)
        raise ConfigError(f"{source}: malformed YAML{line}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with at least search_space")
    spec: StudySpec = build_dataclass(StudySpec, raw, prefix="")
    _check_spec(spec)
    config_file = None
    if spec.config:
        config_file = Path(spec.config)
        if not config_file.is_absolute():
            config_file = PROJECT_ROOT / config_file
        read_yaml(config_file)  # a clear error if it is missing
    base_extra = dict(spec.base)
    if spec.budget.epochs is not None:
        base_extra = {**base_extra, "train": {**base_extra.get("train", {}),
                                              "epochs": spec.budget.epochs}}
    base = load_config(config_file, extra=base_extra)
    space = parse_space(spec.search_space, base.to_dict())
    _check_objective(spec.objective, base)
    enqueue = [fixed_params(params, space, base.to_dict(), where=f"enqueue[{i}]")
               for i, params in enumerate(spec.enqueue)]
    return StudyDefinition(spec.name or default_name, spec, base, space, text, enqueue)


def _check_spec(spec: StudySpec) -> None:
    def choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            raise ConfigError(f"{key}: got {value!r}, expected one of {', '.join(allowed)}")

    choice("objective.direction", spec.objective.direction, DIRECTIONS)
    choice("sampler.name", spec.sampler.name, SAMPLERS)
    choice("pruner.name", spec.pruner.name, PRUNERS)
    for key, value in (("budget.n_trials", spec.budget.n_trials),
                       ("objective.last_k", spec.objective.last_k),
                       ("pruner.reduction_factor", spec.pruner.reduction_factor - 1),
                       ("pruner.min_resource", spec.pruner.min_resource),
                       ("pruner.interval_steps", spec.pruner.interval_steps)):
        if value <= 0:
            raise ConfigError(f"{key}: got {value}, expected a larger positive number")
    if spec.budget.timeout is not None and spec.budget.timeout <= 0:
        raise ConfigError(f"budget.timeout: got {spec.budget.timeout}, expected seconds > 0")
    if spec.name is not None and not spec.name.strip():
        raise ConfigError("name: got '', expected a study name")


def _check_objective(objective: ObjectiveSpec, base: Config) -> None:
    from pipeline.data import IMAGE_DATASETS

    kind = "images" if base.data.name in IMAGE_DATASETS else "points"
    names = [*resolve_metrics(kind, base.eval.metrics), "eval_seconds"]
    allowed = [f"val/{n}" for n in names]
    if objective.metric not in allowed:
        raise ConfigError(
            f"objective.metric: got {objective.metric!r}, expected one of {', '.join(allowed)}"
        )


# --- storage, sampler, pruner -------------------------------------------------------------------


def storage_url(given: str | None = None) -> str:
    """--storage, else $OPTUNA_STORAGE, else the journal file runs/optuna.journal."""
    return given or os.environ.get("OPTUNA_STORAGE") or str(DEFAULT_STORAGE)


def open_storage(url: str) -> optuna.storages.BaseStorage | str:
    """An RDB URL (postgresql://, sqlite://) as is; anything else is a journal file path.

    The journal file is Optuna's storage for several processes on one machine (SQLite locks
    under parallel writers); PostgreSQL is the one for many machines.
    """
    if "://" in url:
        return _rdb_storage(url)
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def _rdb_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

    races = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError,
             sqlalchemy.exc.OperationalError)
    for attempt in range(attempts - 1):
        try:
            return optuna.storages.RDBStorage(url)
        except races:
            # Machines starting together on an empty database race to create Optuna's tables
            # and stamp their version (a duplicate key on alembic_version, seen with two
            # machines on PostgreSQL); on the next try the loser finds them made.
            time.sleep(1.0 + attempt)
    return optuna.storages.RDBStorage(url)


def make_sampler(spec: SamplerSpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """Workers and resumed runs get distinct seeds, or they would repeat each other's trials."""
    seed = None if spec.seed is None else spec.seed + seed_offset
    if spec.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=spec.n_startup_trials)
    if spec.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=spec.n_startup_trials)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.n_startup_trials)


def make_pruner(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    if spec.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_resource,
                                              reduction_factor=spec.reduction_factor)
    if spec.name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials,
                                       n_warmup_steps=spec.n_warmup_steps,
                                       interval_steps=spec.interval_steps)


def create_or_load(defn: StudyDefinition, storage: str) -> tuple[optuna.Study, bool]:
    """The study, and whether this call created it.

    Creation is atomic in every Optuna storage (the study name is unique), so exactly one of
    several processes starting a new study at once learns it created it: that one creates the
    study's MLflow parent run, and the others wait for it (see ``sweep.ensure_parent_run``).
    The creator also enqueues the study file's ``enqueue`` trials.
    """
    kwargs: dict[str, Any] = dict(
        study_name=defn.name,
        storage=open_storage(storage),
        sampler=make_sampler(defn.spec.sampler),
        pruner=make_pruner(defn.spec.pruner),
        direction=defn.spec.objective.direction,
    )
    try:
        study, created = optuna.create_study(**kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.create_study(**kwargs, load_if_exists=True), False
    if study.user_attrs.get(SPEC_ATTR) is None:
        study.set_user_attr(SPEC_ATTR, defn.text)
    if created:  # only once: a resumed study has run (or still holds) them
        for params in defn.enqueue:
            study.enqueue_trial(params)
    return study, created


def find_study(name: str, storage: str | None = None) -> tuple[optuna.Study, StudyDefinition]:
    """A study by name in the (default) storage, with the definition it was created from."""
    url = storage_url(storage)
    if "://" not in url and not Path(url).exists():
        raise ConfigError(f"--study {name}: no study storage at {url} (run `make sweep` first)")
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(url))]
        raise ConfigError(
            f"--study {name}: not found in {url} (studies there: {', '.join(names) or 'none'})"
        ) from None
    text = study.user_attrs.get(SPEC_ATTR)
    if text is None:
        raise ConfigError(f"--study {name}: the study has no study file recorded")
    return study, parse_study(text, default_name=name)


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=FINISHED_STATES)
