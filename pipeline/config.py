"""Typed configuration: YAML files and ``key=value`` overrides -> validated dataclasses.

Config flows one way: ``conf/defaults.yaml`` <- a config file <- command-line overrides, merged as
plain dicts, then turned into the dataclasses below. Every mistake (unknown key, wrong type, value
out of range, malformed YAML) raises ``ConfigError`` with a one-line message that names the key,
the bad value and what is allowed, before anything is trained or written to MLflow.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.data import DATASETS
from pipeline.devices import ACCELERATORS
from pipeline.errors import ConfigError
from pipeline.losses import LOSSES
from pipeline.metrics.registry import METRICS, MIN_SAMPLES
from pipeline.networks import ACTIVATIONS, NORMS, OUTPUT_ACTIVATIONS
from pipeline.tables.transform import NUMERIC_ENCODINGS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_FILE = PROJECT_ROOT / "conf" / "defaults.yaml"

# Allowed names come from the registries, so a new loss, dataset or activation needs no edit here.
# Sizes that would exhaust memory rather than train: rejected before anything is allocated.
MAX_WIDTH = 16_384
MAX_LAYERS = 32
MAX_HIDDEN_WEIGHTS = 100_000_000  # per network (400 MB of float32, three times that for Adam)


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


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    extra: Mapping[str, Any] | None = None,
    defaults: str | Path | None = DEFAULTS_FILE,
) -> Config:
    """Defaults <- YAML file <- ``extra`` (nested, e.g. a study's base) <- ``key=value``."""
    merged: dict[str, Any] = {}
    if defaults is not None and Path(defaults).exists():
        merged = _deep_merge(merged, read_yaml(defaults))
    if path is not None:
        merged = _deep_merge(merged, read_yaml(path))
    merged = _deep_merge(merged, extra or {})
    merged = _deep_merge(merged, parse_overrides(overrides))
    return config_from_dict(merged)


MAX_YAML_BYTES = 1_000_000  # a config or study file is a few KB: more is a wrong file
MAX_YAML_DEPTH = 50  # nesting levels; a config has 2 or 3
SHOWN_CHARS = 200  # what an error message echoes of a value


# A URL's password (scheme://user:PASSWORD@host, up to the last '@' before the host) and
# query parameters that carry a secret (?password=, &access_token=, ;sig= ...).
_USERINFO_PASSWORD = re.compile(r"(://[^:/@\s'\"]*:)[^\s'\"/]*@")
_QUERY_SECRET = re.compile(
    r"((?:^|[?&;\s])(?:[a-z_]*(?:password|passwd|pwd|secret|token|api_?key)|key|sig|signature"
    r"|auth)=)[^&;\s'\"]*", re.IGNORECASE)


def mask_secrets(value: Any) -> Any:
    """Passwords in URIs hidden, for every kind (postgresql://u:pw@, http://u:pw@, ?password=):
    the one function everything that prints, logs or tags a URI, or an error holding one, uses.
    Anything but a string is returned as is."""
    if isinstance(value, str):
        return _QUERY_SECRET.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***@", value))
    return value


def cut(text: str) -> str:
    """Text for an error message: secrets masked, cut to SHOWN_CHARS (a pasted blob keeps the
    message short)."""
    text = mask_secrets(text)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}... ({len(text):,} characters)"


def shown(value: Any) -> str:
    """``repr(value)`` for an error message, secrets masked and cut to SHOWN_CHARS."""
    return cut(repr(value))


def read_text_file(path: Path, what: str = "file") -> str:
    """A small UTF-8 text file. At most MAX_YAML_BYTES + 1 bytes are read, so /dev/zero, an
    image or a multi-gigabyte file given by mistake fails at once."""
    try:
        if path.is_dir():
            raise ConfigError(f"{path}: a folder, not a {what}")
        if path.is_fifo() or path.is_socket():  # opening one would wait for a writer
            raise ConfigError(f"{path}: not a regular file, expected a {what}")
        with open(path, "rb") as fh:
            data = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if b"\0" in data:
        raise ConfigError(f"{path}: a binary file, not a YAML {what}")
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES:,} bytes, not a YAML {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}), not a YAML {what}"
                          ) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    data = parse_yaml(read_text_file(path), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML this project does not accept (a repeated key, an anchor)."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without its two silent traps: a key given twice (PyYAML keeps the
    last one, so an edit lower down the file silently wins) and anchors/aliases (``&a``/``*a``:
    a few lines of aliases expand to billions of values; a config file never needs them)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(problem="anchors and aliases (&name, *name) are not allowed; write "
                                   "the value out", problem_mark=event.start_mark)
        if self.depth >= MAX_YAML_DEPTH:  # before Python's recursion limit, and at once
            raise _Refused(problem=f"nested more than {MAX_YAML_DEPTH} levels deep",
                           problem_mark=event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<': merged keys may be overridden, that is what it is for
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if seen:
                raise _Refused(problem=f"duplicate key {shown(key)} (first at line "
                                       f"{first[key] + 1})", problem_mark=key_node.start_mark)
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> Python values; malformed YAML, a repeated key or an alias is a ConfigError
    naming ``source`` and the line."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_YAML_BYTES:,} characters, not YAML "
                          f"this project reads")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds no objects
    except _Refused as exc:
        mark = exc.problem_mark
        raise ConfigError(f"{source}: line {mark.line + 1 if mark else '?'}: "
                          f"{exc.problem}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"{source}: malformed YAML{line}: {cut(str(problem))}") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{source}: unreadable value ({cut(str(exc).split(';')[0])})"
                          ) from None


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["train.epochs=2", "model.g_hidden=[64,64]"]`` -> nested dict; values parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {shown(item)}: expected key=value, e.g. train.epochs=2")
        # a repeated key or an alias is refused here too
        value = parse_yaml(raw, f"{cut(key)}: value {shown(raw)}") if raw.strip() else None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {shown(item)}: {shown(part)} is a value, not a "
                                  f"section")
        node[parts[-1]] = value
    return nested


def config_from_dict(data: Mapping[str, Any]) -> Config:
    config = build_dataclass(Config, data, prefix="")
    config.validate()
    return config


def build_dataclass(cls: type, data: Any, prefix: str) -> Any:
    """A dataclass from a mapping, each value checked against its type hint; unknown keys fail."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: got {data!r}, expected a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key '{prefix}{unknown[0]}' (allowed in {where}: {', '.join(names)})"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[name] = build_dataclass(hint, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = coerce(f"{prefix}{name}", value, hint)
    return cls(**kwargs)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a type hint (int, float, str, bool, list[...], X | None)."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: got {value!r}, expected a mapping")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return coerce(key, value, inner)
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: got {value!r}, expected a list of {inner.__name__}")
        return [coerce(key, v, inner) for v in value]
    if hint is float and isinstance(value, str):
        # PyYAML reads 1e-3 (no dot) as a string; users write learning rates that way.
        try:
            return float(value)
        except ValueError:
            pass
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise ConfigError(f"{key}: got {value!r}, expected {hint.__name__}")
    return float(value) if hint is float else value


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


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
