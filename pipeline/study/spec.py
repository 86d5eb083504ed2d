"""The study file: what a study searches and how, validated before any trial runs.

A study file (``studies/<name>.yaml``) holds the base config, the search space, the objective,
the budget, the sampler and the pruner. The study's name is the file's stem unless the file names
one. Parsed once per command into a ``StudyDefinition``, which every worker receives as is.

One job past 300 lines: each part of the study file (space, objective, budget, sampler, pruner)
is validated against the others before a trial runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from pipeline.config import PROJECT_ROOT, Config, ConfigError, TrackingConfig, check_choice
from pipeline.config_load import (
    build_dataclass,
    deep_merge,
    load_config,
    parse_yaml,
    read_text_file,
    read_yaml,
)
from pipeline.costs import COST_KEYS
from pipeline.data import DATASETS
from pipeline.metrics.registry import objective_keys
from pipeline.study.conditions import Condition, check_metric, parse_condition
from pipeline.study.space import ParamSpec, fixed_params, parse_space

DIRECTIONS = ("minimize", "maximize")


@dataclass
class ObjectiveSpec:
    metric: str = "val/fid"
    direction: str = "minimize"
    # One evaluation is noisy (grid25's high_quality swings 0.05-0.13 between epochs); the mean
    # of the last few ranks trials better.
    last_k: int = 3
    # Each sampled configuration trained on this many seeds (train.seed, +1, ...), one MLflow
    # run each under the trial's run; Optuna sees `aggregate` of their values, so a setting
    # that wins on one lucky seed no longer wins.
    seeds: int = 1
    aggregate: str = "mean"  # mean, min (the worst seed for a maximized metric) or mean_minus_std


AGGREGATES = ("mean", "min", "mean_minus_std")  # how a trial's seeds make one value
MAX_SEEDS = 100


@dataclass
class BudgetSpec:
    n_trials: int = 20
    timeout: float | None = None  # seconds, per invocation
    epochs: int | None = None  # epochs per trial; overrides train.epochs of the base
    # A study whose trials keep failing stops instead of running away: after this many failed
    # trials in a row, or this many in all (null = as many as the trials asked for).
    max_consecutive_failures: int = 5
    max_failures: int | None = None

    def failure_cap(self, target: int) -> int:
        return self.max_failures if self.max_failures is not None else target


@dataclass
class SamplerSpec:
    name: str = "tpe"
    seed: int | None = 0
    n_startup_trials: int = 10  # tpe/gp: random trials before the model kicks in
    population_size: int = 50  # nsgaii: trials per generation

    def build(self, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        """Workers and resumed runs get distinct seeds, or they would repeat each other."""
        seed = None if self.seed is None else (self.seed + seed_offset) % 2**32
        return SAMPLERS[self.name].build(self, seed)


@dataclass(frozen=True)
class SamplerKind:
    build: Callable[[SamplerSpec, int | None], optuna.samplers.BaseSampler]
    multi_objective: bool  # Optuna's CMA-ES optimizes one objective only


SAMPLERS: dict[str, SamplerKind] = {
    "tpe": SamplerKind(lambda s, seed: optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=s.n_startup_trials), multi_objective=True),
    "random": SamplerKind(lambda s, seed: optuna.samplers.RandomSampler(seed=seed),
                          multi_objective=True),
    "cmaes": SamplerKind(lambda s, seed: optuna.samplers.CmaEsSampler(
        seed=seed, n_startup_trials=s.n_startup_trials), multi_objective=False),
    "gp": SamplerKind(lambda s, seed: optuna.samplers.GPSampler(
        seed=seed, n_startup_trials=s.n_startup_trials), multi_objective=True),
    "nsgaii": SamplerKind(lambda s, seed: optuna.samplers.NSGAIISampler(
        seed=seed, population_size=s.population_size), multi_objective=True),
}


@dataclass
class PrunerSpec:
    name: str = "median"
    n_startup_trials: int = 5  # median: trials that are never pruned
    n_warmup_steps: int = 3  # median: epochs before a trial can be pruned
    interval_steps: int = 1
    min_resource: int = 2  # hyperband: epochs of the first rung
    reduction_factor: int = 3  # hyperband

    def build(self) -> optuna.pruners.BasePruner:
        return PRUNERS[self.name](self)


PRUNERS: dict[str, Callable[[PrunerSpec], optuna.pruners.BasePruner]] = {
    "median": lambda p: optuna.pruners.MedianPruner(
        n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps,
        interval_steps=p.interval_steps),
    "hyperband": lambda p: optuna.pruners.HyperbandPruner(
        min_resource=p.min_resource, reduction_factor=p.reduction_factor),
    "none": lambda p: optuna.pruners.NopPruner(),
}
NO_PRUNER = "none"


@dataclass
class StudySpec:
    search_space: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    description: str = ""
    config: str | None = None  # a base config file (relative to the project root)
    base: dict[str, Any] = field(default_factory=dict)  # config overrides, nested like the YAML
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    # Several objectives instead of one (a Pareto front, e.g. quality against G's size): a
    # list of {metric, direction, last_k}; the first entry's seeds and aggregate apply to all.
    objectives: list[dict[str, Any]] = field(default_factory=list)
    # Conditions a trial must meet to count ('val/high_quality >= 0.9'): Optuna's constraints
    constraints: list[str] = field(default_factory=list)
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
    # ``objective`` alone, or ``objectives``: what every trial returns to Optuna, in order
    objectives: list[ObjectiveSpec] = field(default_factory=list)
    constraints: list[Condition] = field(default_factory=list)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def objective_metrics(self, values: Sequence[float]) -> dict[str, float]:
        """The values Optuna got, as MLflow metrics: ``objective`` for one objective (compare
        checks the two agree), ``objective/<metric>`` for each of several."""
        if len(values) == 1:
            return {"objective": float(values[0])}
        return {f"objective/{m}": float(v) for m, v in zip(self.metrics, values, strict=True)}


def load_study_file(path: str | Path, *, data: str | None = None) -> StudyDefinition:
    """The study file; ``data`` (a table file or image folder) replaces the base's
    ``data.path`` and names the study ``<file stem>-<data stem>``, so that one template serves
    many tables, each its own study."""
    path = Path(path)
    if not path.is_file():
        what = ("a folder, not a study file" if path.is_dir() else
                "not a regular file, expected a study file" if path.exists() else
                "no such study file")
        raise ConfigError(f"{path}: {what} (see studies/ for the shipped ones)")
    text = read_text_file(path, "study file")  # bounded: /dev/zero or a PNG fails at once
    if data is None:
        return parse_study(text, default_name=path.stem, source=str(path))
    data_path = Path(data).expanduser().resolve()
    return parse_study(text, default_name=f"{path.stem}-{data_path.stem}", source=str(path),
                       base_overrides={"data": {"path": str(data_path)}})


def parse_study(text: str, *, default_name: str, source: str = "study",
                base_overrides: dict[str, Any] | None = None) -> StudyDefinition:
    raw = parse_yaml(text, source) if text.strip() else None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with at least search_space")
    spec: StudySpec = build_dataclass(StudySpec, raw, prefix="")
    _check_spec(spec)
    objectives = _objectives(spec, raw)
    config_file = None
    if spec.config:
        config_file = Path(spec.config)
        if not config_file.is_absolute():
            config_file = PROJECT_ROOT / config_file
        read_yaml(config_file)  # a clear error if it is missing
    base_extra = deep_merge(dict(spec.base), base_overrides or {})
    if spec.budget.epochs is not None:
        base_extra = {**base_extra, "train": {**base_extra.get("train", {}),
                                              "epochs": spec.budget.epochs}}
    base = load_config(config_file, extra=base_extra)
    name = check_study_name("name" if spec.name else f"{source} (its file name)",
                            spec.name or default_name)
    if base.tracking.experiment == TrackingConfig.experiment:
        # One MLflow experiment per study, named after it: the UI's tables and charts then
        # compare this study's trials only (a study file may still name one).
        base.tracking.experiment = name
    space = parse_space(spec.search_space, base.to_dict())
    allowed = study_metrics(base)
    for i, objective in enumerate(objectives):
        where = "objective.metric" if len(objectives) == 1 else f"objectives[{i}].metric"
        check_metric(objective.metric, allowed, where=where)
    constraints = [parse_condition(text, allowed, where=f"constraints[{i}]")
                   for i, text in enumerate(spec.constraints)]
    enqueue = [fixed_params(params, space, base.to_dict(), where=f"enqueue[{i}]")
               for i, params in enumerate(spec.enqueue)]
    return StudyDefinition(name, spec, base, space, text, enqueue, objectives, constraints)


def _objectives(spec: StudySpec, raw: dict[str, Any]) -> list[ObjectiveSpec]:
    """``objective`` or ``objectives`` (never both); with several, the checks that Optuna would
    only make once the study exists: distinct metrics, a sampler and no pruner that can take
    them. ``spec.objective`` becomes the first one, whose seeds and aggregate the trial uses."""
    if not spec.objectives:
        return [spec.objective]
    if "objective" in raw:
        raise ConfigError("objective and objectives: give one of them (objectives for several)")
    out = []
    for i, entry in enumerate(spec.objectives):
        objective = build_dataclass(ObjectiveSpec, entry, prefix=f"objectives[{i}].")
        check_choice(f"objectives[{i}].direction", objective.direction, DIRECTIONS)
        if i and (objective.seeds, objective.aggregate) != (ObjectiveSpec.seeds,
                                                            ObjectiveSpec.aggregate):
            raise ConfigError(f"objectives[{i}]: seeds and aggregate apply to the whole trial;"
                              f" give them on objectives[0] only")
        out.append(objective)
    _check_objective_numbers(out[0], "objectives[0]")
    metrics = [o.metric for o in out]
    repeated = sorted({m for m in metrics if metrics.count(m) > 1})
    if repeated:
        raise ConfigError(f"objectives: {repeated[0]} is given twice")
    if len(out) > 1:
        if not SAMPLERS[spec.sampler.name].multi_objective:
            able = ", ".join(n for n, k in SAMPLERS.items() if k.multi_objective)
            raise ConfigError(f"sampler.name: {spec.sampler.name} optimizes one objective "
                              f"only; with several objectives use one of: {able}")
        if "pruner" in raw and spec.pruner.name != NO_PRUNER:
            raise ConfigError(f"pruner: Optuna's pruners do not support several objectives; "
                              f"remove pruner: (or set pruner.name: {NO_PRUNER})")
        spec.pruner.name = NO_PRUNER
    spec.objective = out[0]
    return out


def study_metrics(base: Config) -> list[str]:
    """What a study may optimize or constrain: the evaluation's val/ keys and the cost/ ones."""
    return [*objective_keys(DATASETS[base.data.name], base.eval.metrics), *COST_KEYS]


def _check_spec(spec: StudySpec) -> None:
    check_choice("objective.direction", spec.objective.direction, DIRECTIONS)
    _check_objective_numbers(spec.objective, "objective")
    check_choice("sampler.name", spec.sampler.name, tuple(SAMPLERS))
    check_choice("pruner.name", spec.pruner.name, tuple(PRUNERS))
    for key, value in (("budget.n_trials", spec.budget.n_trials),
                       ("budget.max_consecutive_failures", spec.budget.max_consecutive_failures),
                       ("budget.max_failures", spec.budget.failure_cap(1)),
                       ("pruner.reduction_factor", spec.pruner.reduction_factor - 1),
                       ("pruner.min_resource", spec.pruner.min_resource),
                       ("pruner.interval_steps", spec.pruner.interval_steps),
                       ("sampler.population_size", spec.sampler.population_size - 1)):
        if value <= 0:
            raise ConfigError(f"{key}: got {value}, expected a larger positive number")
    if spec.budget.timeout is not None and spec.budget.timeout <= 0:
        raise ConfigError(f"budget.timeout: got {spec.budget.timeout}, expected seconds > 0")
    if spec.name is not None:
        check_study_name("name", spec.name)


def _check_objective_numbers(objective: ObjectiveSpec, where: str) -> None:
    check_choice(f"{where}.aggregate", objective.aggregate, AGGREGATES)
    if not 1 <= objective.seeds <= MAX_SEEDS:
        raise ConfigError(f"{where}.seeds: got {objective.seeds!r}, expected 1 to "
                          f"{MAX_SEEDS} seeds per trial")
    if objective.last_k <= 0:
        raise ConfigError(f"{where}.last_k: got {objective.last_k}, expected a larger "
                          f"positive number")


# A study's name is its MLflow experiment's name too (parse_study), so it stays well inside
# MLflow's limit (config.MAX_EXPERIMENT_NAME), a file or --data stem included.
MAX_STUDY_NAME = 100
_PLAIN_NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{MAX_STUDY_NAME - 1}}}")


def check_study_name(key: str, name: str) -> str:
    """Study names become folder and file names (runs/compare/NAME.png, exports/NAME/), so they
    are plain: letters, digits, '-', '_' and '.', not starting with '.' or '-'."""
    if not _PLAIN_NAME.fullmatch(name):
        raise ConfigError(f"{key}: got {name!r}, expected a plain name (letters, digits, '-', "
                          f"'_', '.'; up to {MAX_STUDY_NAME}, not starting with '.' or '-')")
    return name


# Config keys that say where and how fast a study runs, not what its trials are.
RUN_KEYS = ("tracking.", "train.progress_bar", "train.threads", "train.accelerator")


def study_changes(old: StudyDefinition, new: StudyDefinition) -> list[str]:
    """What differs between the definition a study was created from and a new one, in the parts
    that make trials comparable: the objective, the search space and the base config."""
    out = []
    before = [f"{o.direction} {o.metric} (last {o.last_k})" for o in old.objectives]
    after = [f"{o.direction} {o.metric} (last {o.last_k})" for o in new.objectives]
    if before != after:
        out.append(f"objectives {'; '.join(before)} -> {'; '.join(after)}")
    if old.constraints != new.constraints:
        out.append(f"constraints {list(map(str, old.constraints))} -> "
                   f"{list(map(str, new.constraints))}")
    for key in sorted(set(old.space) | set(new.space)):
        a, b = old.space.get(key), new.space.get(key)
        if a != b:
            what = ("added" if a is None else "removed" if b is None
                    else f"{_brief(a)} -> {_brief(b)}")
            out.append(f"search_space.{key} {what}")
    old_base, new_base = old.base.flat(), new.base.flat()
    for key in sorted(old_base):
        if not key.startswith(RUN_KEYS) and old_base[key] != new_base.get(key):
            out.append(f"base {key} {old_base[key]!r} -> {new_base.get(key)!r}")
    return out


def _brief(spec: ParamSpec) -> str:
    return ", ".join(f"{k}={v}" for k, v in vars(spec).items() if v not in (None, False))
