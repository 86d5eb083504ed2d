"""The config schema: typed dataclasses for data/model/train/eval/tracking and their validation.

Each section's ``validate()`` checks its values against the registries (allowed names) and the
bounds below, and ``Config.validate()`` the rules across sections. Every mistake raises
``ConfigError`` with a one-line message that names the key, the bad value and what is allowed,
before anything is trained or written to MLflow. Reading YAML and ``key=value`` overrides into
these dataclasses is ``pipeline.config_load``'s job.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data import DATASETS
from pipeline.devices import ACCELERATORS
from pipeline.errors import ConfigError
from pipeline.losses import LOSSES
from pipeline.metrics.registry import METRICS, MIN_SAMPLES
from pipeline.networks import ACTIVATIONS, NORMS, OUTPUT_ACTIVATIONS
from pipeline.tables.numeric import NUMERIC_ENCODINGS

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Allowed names come from the registries, so a new loss, dataset or activation needs no edit here.
# Sizes that would exhaust memory rather than train: rejected before anything is allocated.
MAX_WIDTH = 16_384
MAX_LAYERS = 32
MAX_HIDDEN_WEIGHTS = 100_000_000  # per network (400 MB of float32, three times that for Adam)
# MLflow refuses a longer experiment name (mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH),
# with a traceback once the run is being created: checked here with the rest of the config.
MAX_EXPERIMENT_NAME = 500


@dataclass
class DataConfig:
    name: str = "grid25"
    root: str | None = None  # IDX folder (fashion_mnist, mnist); else env var / Debian path
    n_points: int = 100_000  # mixtures: training points drawn from the seed (PacGAN uses 100k)
    radius: float = 1.0  # ring8: radius of the circle of modes
    std: float | None = None  # mixtures: component std; None = PacGAN's (ring8 0.01, grid25 0.05)
    path: str | None = None  # table: a .csv/.tsv/.parquet/.npy file; images: a folder
    columns: list[str] | None = None  # table: the columns to model; None = all
    label: str | None = None  # table: a categorical column whose categories are the classes
    categorical: list[str] = field(default_factory=list)  # table: columns to treat as categories
    dropna: bool = False  # table: drop rows with missing values instead of refusing them
    test_fraction: float = 0.2  # table, images: the held-out rows the metrics compare against
    numeric_encoding: str = "standard"  # table: standard, quantile or mode (CTGAN's)

    def validate(self) -> None:
        check_choice("data.name", self.name, DATASETS)
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction: got {self.test_fraction!r}, expected a "
                              "number in (0, 1)")
        check_choice("data.numeric_encoding", self.numeric_encoding, NUMERIC_ENCODINGS)
        if self.path is not None and not DATASETS[self.name].reads_path:
            raise ConfigError(f"data.path: {self.name} reads no file (data.path is for "
                              "data.name=table or images)")
        check_range("data.n_points", self.n_points, 1, 10_000_000)
        check_range("data.radius", self.radius, 0, 1000, low_open=True)
        if self.std is not None:
            check_range("data.std", self.std, 0, 100, low_open=True)


@dataclass
class ModelConfig:
    latent_dim: int = 2
    g_hidden: list[int] = field(default_factory=lambda: [128, 128, 128])
    d_hidden: list[int] = field(default_factory=lambda: [128, 128, 128])
    activation: str = "relu"  # G's, and D's unless d_activation is set
    d_activation: str | None = None  # D's own (G ReLU + D LeakyReLU is what covers grid25)
    leaky_slope: float = 0.2  # only used by leaky_relu
    g_norm: str = "none"
    d_norm: str = "none"
    g_dropout: float = 0.0
    d_dropout: float = 0.0
    spectral_norm: bool = False  # on D's linear layers
    pack: int = 1  # PacGAN: D judges `pack` samples concatenated
    output_activation: str = "auto"  # auto = tanh for images, table for tables, none for points
    head_temperature: float = 0.2  # tables: Gumbel-softmax temperature of G's one-hot heads

    def validate(self) -> None:
        check_range("model.latent_dim", self.latent_dim, 1, MAX_WIDTH)
        for key in ("g_hidden", "d_hidden"):
            widths = getattr(self, key)
            if not 1 <= len(widths) <= MAX_LAYERS:
                raise ConfigError(f"model.{key}: got {len(widths)} layers, expected 1 to "
                                  f"{MAX_LAYERS} hidden layers")
            for w in widths:
                check_range(f"model.{key}", w, 1, MAX_WIDTH)
            weights = sum(a * b for a, b in itertools.pairwise(widths))
            if weights > MAX_HIDDEN_WEIGHTS:
                raise ConfigError(f"model.{key}: {weights:,} weights between hidden layers, "
                                  f"expected at most {MAX_HIDDEN_WEIGHTS:,}")
        check_choice("model.activation", self.activation, ACTIVATIONS)
        if self.d_activation is not None:
            check_choice("model.d_activation", self.d_activation, ACTIVATIONS)
        check_range("model.leaky_slope", self.leaky_slope, 0, 10, low_open=True)
        check_choice("model.g_norm", self.g_norm, NORMS)
        check_choice("model.d_norm", self.d_norm, NORMS)
        _fraction("model.g_dropout", self.g_dropout)
        _fraction("model.d_dropout", self.d_dropout)
        check_range("model.pack", self.pack, 1, 64)
        check_choice("model.output_activation", self.output_activation,
                     ["auto", *OUTPUT_ACTIVATIONS])
        check_range("model.head_temperature", self.head_temperature, 0, 10, low_open=True)


@dataclass
class TrainConfig:
    epochs: int = 20
    seed: int = 0
    batch_size: int = 256
    steps_per_epoch: int | None = None  # None = one pass over the training set
    loss: str = "hinge"
    n_critic: int = 1  # D steps per G step
    gp_weight: float = 10.0  # wgan-gp only
    g_lr: float = 5e-4
    d_lr: float = 5e-4
    g_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    d_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    ema_decay: float = 0.0  # EMA of G's weights, evaluated and exported; 0 = off (e.g. 0.999)
    lr_decay_start: float = 1.0  # fraction of training after which both lrs decay linearly to 0
    log_every_n_steps: int = 50  # training losses are averaged over this many steps
    sample_every_n_epochs: int = 5  # sample pictures; one is always made at the end
    accelerator: str = "auto"
    threads: int | None = None  # torch intra-op threads; None = torch's default
    progress_bar: bool = True

    def validate(self) -> None:
        check_range("train.epochs", self.epochs, 1, 1_000_000)
        check_range("train.seed", self.seed, 0, 2**32 - 1)
        check_range("train.batch_size", self.batch_size, 1, 65_536)
        if self.steps_per_epoch is not None:
            check_range("train.steps_per_epoch", self.steps_per_epoch, 1, 100_000_000)
        check_choice("train.loss", self.loss, LOSSES)
        check_range("train.n_critic", self.n_critic, 1, 100)
        check_range("train.gp_weight", self.gp_weight, 0, 10_000)
        check_range("train.g_lr", self.g_lr, 0, 1, low_open=True)
        check_range("train.d_lr", self.d_lr, 0, 1, low_open=True)
        for key in ("g_betas", "d_betas"):
            betas = getattr(self, key)
            if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
                raise ConfigError(f"train.{key}: got {betas!r}, expected two numbers in [0, 1)")
        _fraction("train.ema_decay", self.ema_decay)
        if not 0.0 <= self.lr_decay_start <= 1.0:
            raise ConfigError(
                f"train.lr_decay_start: got {self.lr_decay_start!r}, expected a number in [0, 1]")
        check_range("train.log_every_n_steps", self.log_every_n_steps, 1, 10**9)
        check_range("train.sample_every_n_epochs", self.sample_every_n_epochs, 1, 10**9)
        check_choice("train.accelerator", self.accelerator, ACCELERATORS)
        if self.threads is not None:
            check_range("train.threads", self.threads, 1, os.cpu_count() or 1)


@dataclass
class EvalConfig:
    n_samples: int = 2500  # PacGAN's protocol for the mixtures
    every_n_epochs: int = 1
    metrics: list[str] | None = None  # None = every metric that applies to the dataset
    # Light evaluations between full ones: null = every metric at every evaluation; N = all of
    # them every N epochs and at the last, the others only the main metrics and `always` (a
    # study adds its objective metric). PRDC, KID and NDB cost seconds on 10,000 images.
    full_every_n_epochs: int | None = None
    always: list[str] = field(default_factory=list)
    cache_dir: str = "runs/cache"  # the FID feature classifiers are trained once and kept here
    # Also score the final G through Discriminator Rejection Sampling (drs.py), logged as
    # drs/<metric> beside the raw G's val/<metric>; never in place of them.
    drs: bool = False

    def validate(self) -> None:
        check_range("eval.n_samples", self.n_samples, MIN_SAMPLES, 1_000_000)
        check_range("eval.every_n_epochs", self.every_n_epochs, 1, 1_000_000)
        for name in self.metrics or ():
            check_choice("eval.metrics", name, METRICS)
        for name in self.always:
            check_choice("eval.always", name, self.metrics or METRICS)
        if self.full_every_n_epochs is not None:
            check_range("eval.full_every_n_epochs", self.full_every_n_epochs, 1, 1_000_000)


@dataclass
class TrackingConfig:
    tracking_uri: str | None = None  # None = $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db
    experiment: str = "fcgan"
    log_weights: bool = True
    system_metrics: bool = True  # MLflow's CPU/memory/disk samples (system/*), every 10 s

    def validate(self) -> None:
        if not self.experiment:
            raise ConfigError("tracking.experiment: got '', expected a non-empty name")
        if len(self.experiment) > MAX_EXPERIMENT_NAME:
            raise ConfigError(f"tracking.experiment: got a name of {len(self.experiment):,} "
                              f"characters, expected at most {MAX_EXPERIMENT_NAME} (MLflow's "
                              f"limit)")
        if self.tracking_uri is not None:
            check_tracking_uri("tracking.tracking_uri", self.tracking_uri)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()
        if self.train.batch_size < self.model.pack:
            raise ConfigError(
                f"model.pack: got {self.model.pack}, expected at most train.batch_size "
                f"({self.train.batch_size})"
            )
        if self.eval.drs and self.model.pack != 1:
            raise ConfigError(f"eval.drs: needs model.pack 1 (got {self.model.pack}): rejection "
                              "sampling reads D's logit of each sample, a packed D has one a pack")
        if self.eval.every_n_epochs > self.train.epochs:
            raise ConfigError(
                f"eval.every_n_epochs: got {self.eval.every_n_epochs}, expected at most "
                f"train.epochs ({self.train.epochs}): the run would never be evaluated")
        if DATASETS[self.data.name].has_centres:  # mixtures: drawn from the seed
            least = max(self.train.batch_size, self.eval.n_samples)
            if self.data.n_points < least:
                raise ConfigError(
                    f"data.n_points: got {self.data.n_points}, expected at least {least} "
                    f"(train.batch_size {self.train.batch_size}, eval.n_samples "
                    f"{self.eval.n_samples})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, e.g. {'train.epochs': 20, ...}: what MLflow records as params."""
        return {
            f"{section}.{key}": value
            for section, values in self.to_dict().items()
            for key, value in values.items()
        }


def check_choice(key: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}: got {value!r}, expected one of {', '.join(allowed)}")


TRACKING_SCHEMES = ("sqlite:///", "file:", "http://", "https://", "postgresql", "mysql",
                    "mssql", "databricks")


def check_tracking_uri(key: str, uri: str) -> None:
    if not uri.startswith(TRACKING_SCHEMES):
        raise ConfigError(f"{key}: got {uri!r}, expected a URI starting with one of "
                          f"{', '.join(TRACKING_SCHEMES)}")


def check_range(key: str, value: float, low: float, high: float, *,
                low_open: bool = False) -> None:
    """low <= value <= high (low < value with ``low_open``); NaN and infinity never pass."""
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        kind = "an integer" if isinstance(value, int) else "a number"
        bracket = "(" if low_open else "["
        raise ConfigError(f"{key}: got {value!r}, expected {kind} in {bracket}{_bound(low)}, "
                          f"{_bound(high)}]")


def _bound(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _fraction(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key}: got {value!r}, expected a number in [0, 1)")
