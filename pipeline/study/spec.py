"""The study file: what a study searches and how, validated before any trial runs.

A study file (``studies/<name>.yaml``) holds the base config, the search space, the objective,
the budget, the sampler and the pruner. The study's name is the file's stem unless the file names
one. Parsed once per command into a ``StudyDefinition``, which every worker receives as is.
"""

from __future__ import annotations

import re
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
from pipeline.data import DATASETS
from pipeline.metrics.registry import objective_keys
from pipeline.study.space import ParamSpec, fixed_params, parse_space

SAMPLERS = ("tpe", "random", "cmaes", "gp")
PRUNERS = ("median", "hyperband", "none")
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

    def build(self, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        """Workers and resumed runs get distinct seeds, or they would repeat each other."""
        seed = None if self.seed is None else (self.seed + seed_offset) % 2**32
        if self.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=self.n_startup_trials)
        if self.name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=self.n_startup_trials)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)


@dataclass
class PrunerSpec:
    name: str = "median"
    n_startup_trials: int = 5  # median: trials that are never pruned
    n_warmup_steps: int = 3  # median: epochs before a trial can be pruned
    interval_steps: int = 1
    min_resource: int = 2  # hyperband: epochs of the first rung
    reduction_factor: int = 3  # hyperband

    def build(self) -> optuna.pruners.BasePruner:
        if self.name == "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=self.min_resource,
                                                  reduction_factor=self.reduction_factor)
        if self.name == "none":
            return optuna.pruners.NopPruner()
        return optuna.pruners.MedianPruner(n_startup_trials=self.n_startup_trials,
                                           n_warmup_steps=self.n_warmup_steps,
                                           interval_steps=self.interval_steps)


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
    _check_objective(spec.objective, base)
    enqueue = [fixed_params(params, space, base.to_dict(), where=f"enqueue[{i}]")
               for i, params in enumerate(spec.enqueue)]
    return StudyDefinition(name, spec, base, space, text, enqueue)


def _check_spec(spec: StudySpec) -> None:
    check_choice("objective.direction", spec.objective.direction, DIRECTIONS)
    check_choice("objective.aggregate", spec.objective.aggregate, AGGREGATES)
    if not 1 <= spec.objective.seeds <= MAX_SEEDS:
        raise ConfigError(f"objective.seeds: got {spec.objective.seeds!r}, expected 1 to "
                          f"{MAX_SEEDS} seeds per trial")
    check_choice("sampler.name", spec.sampler.name, SAMPLERS)
    check_choice("pruner.name", spec.pruner.name, PRUNERS)
    for key, value in (("budget.n_trials", spec.budget.n_trials),
                       ("budget.max_consecutive_failures", spec.budget.max_consecutive_failures),
                       ("budget.max_failures", spec.budget.failure_cap(1)),
                       ("objective.last_k", spec.objective.last_k),
                       ("pruner.reduction_factor", spec.pruner.reduction_factor - 1),
                       ("pruner.min_resource", spec.pruner.min_resource),
                       ("pruner.interval_steps", spec.pruner.interval_steps)):
        if value <= 0:
            raise ConfigError(f"{key}: got {value}, expected a larger positive number")
    if spec.budget.timeout is not None and spec.budget.timeout <= 0:
        raise ConfigError(f"budget.timeout: got {spec.budget.timeout}, expected seconds > 0")
    if spec.name is not None:
        check_study_name("name", spec.name)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


def check_study_name(key: str, name: str) -> str:
    """Study names become folder and file names (runs/compare/NAME.png, exports/NAME/), so they
    are plain: letters, digits, '-', '_' and '.', not starting with '.' or '-'."""
    if not _PLAIN_NAME.fullmatch(name):
        raise ConfigError(f"{key}: got {name!r}, expected a plain name (letters, digits, '-', "
                          f"'_', '.'; up to 100, not starting with '.' or '-')")
    return name


def _check_objective(objective: ObjectiveSpec, base: Config) -> None:
    allowed = objective_keys(DATASETS[base.data.name], base.eval.metrics)
    check_choice("objective.metric", objective.metric, allowed)


# Config keys that say where and how fast a study runs, not what its trials are.
RUN_KEYS = ("tracking.", "train.progress_bar", "train.threads", "train.accelerator")


def study_changes(old: StudyDefinition, new: StudyDefinition) -> list[str]:
    """What differs between the definition a study was created from and a new one, in the parts
    that make trials comparable: the objective, the search space and the base config."""
    out = []
    for key in ("metric", "direction", "last_k"):
        a, b = getattr(old.spec.objective, key), getattr(new.spec.objective, key)
        if a != b:
            out.append(f"objective.{key} {a!r} -> {b!r}")
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
