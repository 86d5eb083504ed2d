"""prepare(config) -> Prepared: everything a training needs that can fail on bad input.

Validation, the device, the data, the evaluator's real side and the seeded module are all built
here, before any MLflow run exists, so a mistake leaves no half-logged run behind. A study
worker runs many trials on the same data: the dataset and the evaluator are cached per worker.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch

from pipeline.batches import TensorBatches
from pipeline.config import Config, ConfigError, DataConfig, EvalConfig, ModelConfig
from pipeline.data import DATASETS, load_dataset
from pipeline.dataset import Dataset
from pipeline.devices import default_device
from pipeline.metrics import MAIN_METRICS, Evaluator, check_settings
from pipeline.module import GANModule
from pipeline.networks import Discriminator, Generator, count_parameters
from pipeline.run_log import Ending, RunLogger, mlflow_run
from pipeline.tracking import tracking_uri

# GAN steps per Lightning batch: Lightning's loop costs ~0.7 ms per batch, paid once per chunk.
# Results do not depend on it (every per-step rule runs inside the training step).
STEPS_PER_BATCH = 64
# Latent vectors generated per forward pass when evaluating: bounds the activations' memory
# (4096 x 1024 float32 = 16 MB a layer) without a pass per row.
EVAL_BATCH = 4096
# The seeds a run draws from train.seed: the networks' initialisation uses the seed itself, the
# picture's fixed latent points seed + 1, the evaluation's latent points seed + 2, so that none
# of the three streams repeats another; rejection sampling (eval.drs) draws from seed + 3.
PICTURE_SEED_OFFSET = 1
EVAL_SEED_OFFSET = 2
DRS_SEED_OFFSET = 3
# The evaluator's real subsample is drawn from a fixed seed, not the run's: every run of a study
# is then scored against the same real rows, so their metrics compare.
EVALUATOR_SEED = 0
PICTURE_POINTS_IMAGES = 64  # an 8 x 8 grid of images; point clouds show eval.n_samples points


def drs_seed(train_seed: int) -> int:
    """The seed of rejection sampling's calibration and draws for a run of ``train_seed``:
    eval.drs, export --drs and its config.json all use this one."""
    return train_seed + DRS_SEED_OFFSET


@dataclass
class Prepared:
    """A training ready to run: call ``train(prepared, run)`` inside ``prepared.run(...)``."""

    cfg: Config
    device: str
    dataset: Dataset
    evaluator: Evaluator
    module: GANModule
    train_batches: TensorBatches
    eval_batches: TensorBatches

    def params(self) -> dict[str, Any]:
        """What MLflow records as the run's parameters: the resolved config and network sizes."""
        params: dict[str, Any] = dict(self.cfg.flat())
        params["model.g_parameters"] = count_parameters(self.module.generator)
        params["model.d_parameters"] = count_parameters(self.module.discriminator)
        if self.evaluator.classifier_accuracy is not None:
            params["eval.classifier_test_accuracy"] = round(self.evaluator.classifier_accuracy, 4)
        return params

    def run(self, *, run_name: str | None = None, parent_run_id: str | None = None,
            tags: Mapping[str, Any] | None = None,
            ended_by: Mapping[type[BaseException], Ending] | None = None,
            run_id: str | None = None) -> AbstractContextManager[RunLogger]:
        """The MLflow run to train into, in the config's store and experiment, tagged with what
        was prepared (dataset, feature space, device). ``run_id`` reopens a run to continue it."""
        c = self.cfg.tracking
        pairs = self.evaluator.pair_rule  # tables: which column pairs the pair trends use
        return mlflow_run(
            tracking_uri(c.tracking_uri), c.experiment, run_name=run_name,
            parent_run_id=parent_run_id, ended_by=ended_by, run_id=run_id,
            system_metrics=c.system_metrics,
            tags={"dataset": self.dataset.name, "fid_features": self.evaluator.feature_name,
                  "device": self.device, **({"quality_pairs": pairs} if pairs else {}),
                  **(tags or {})})


def prepare(cfg: Config, *, device: str | None = None) -> Prepared:
    cfg.validate()
    t = cfg.train
    if t.threads:
        set_threads(t.threads)
    device = device or default_device(t.accelerator)
    dataset = cached_dataset(cfg.data, t.seed)
    evaluator = cached_evaluator(cfg.data, cfg.eval, t.seed, device)
    train_batches = TensorBatches(dataset.train.to(device), t.batch_size, seed=t.seed,
                                  steps=t.steps_per_epoch, chunk=STEPS_PER_BATCH)
    module = build_module(cfg, dataset, evaluator, steps_per_epoch=train_batches.steps)
    eval_z = torch.randn(cfg.eval.n_samples, cfg.model.latent_dim, generator=torch.Generator()
                         .manual_seed(t.seed + EVAL_SEED_OFFSET)).to(device)
    eval_batches = TensorBatches(eval_z, EVAL_BATCH, shuffle=False, drop_last=False)
    return Prepared(cfg, device, dataset, evaluator, module, train_batches, eval_batches)


def set_threads(threads: int) -> None:
    """``threads`` CPU threads for torch and for the BLAS and OpenMP pools that numpy, SciPy and
    scikit-learn compute in (the table metrics' detection, DCR and pair trends), for the rest
    of the process. Those pools start one thread per core whatever torch uses: beside a second
    worker on two cores, a 100-column detection took 5.5-11 s with two BLAS threads and 0.6 s
    with one. threadpoolctl limits the libraries loaded so far: this module's imports load
    them all (pipeline.metrics imports scikit-learn, Lightning SciPy)."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)


def build_module(cfg: Config, dataset: Dataset, evaluator: Evaluator | None, *,
                 steps_per_epoch: int) -> GANModule:
    """Seeded networks and the LightningModule that trains them."""
    L.seed_everything(cfg.train.seed, verbose=False)
    t = cfg.train
    return GANModule(
        Generator(**generator_kwargs(cfg.model, dataset)),
        Discriminator(**discriminator_kwargs(cfg.model, dataset)),
        loss=t.loss, n_critic=t.n_critic, gp_weight=t.gp_weight, g_lr=t.g_lr, d_lr=t.d_lr,
        g_betas=t.g_betas, d_betas=t.d_betas, ema_decay=t.ema_decay,
        lr_decay_start=t.lr_decay_start, total_steps=t.epochs * steps_per_epoch,
        log_every_n_steps=t.log_every_n_steps, evaluator=evaluator,
        full_every_n_epochs=cfg.eval.full_every_n_epochs,
        light_metrics={*MAIN_METRICS, *cfg.eval.always},
        n_picture=PICTURE_POINTS_IMAGES if dataset.is_images else cfg.eval.n_samples,
        picture_seed=t.seed + PICTURE_SEED_OFFSET,
    )


def generator_kwargs(model: ModelConfig, dataset: Dataset) -> dict[str, Any]:
    out_act = model.output_activation
    if out_act == "auto":
        out_act = {"images": "tanh", "table": "table"}.get(dataset.kind, "none")
    heads: list[list[Any]] = []
    if dataset.table is not None:
        heads = [[s.start, s.width, s.activation] for s in dataset.table.transformer.spans]
    elif out_act == "table":
        raise ConfigError("model.output_activation: 'table' needs a table dataset "
                          "(data.name=table)")
    return {
        "latent_dim": model.latent_dim, "out_dim": dataset.dim, "hidden": list(model.g_hidden),
        "activation": model.activation, "leaky_slope": model.leaky_slope, "norm": model.g_norm,
        "dropout": model.g_dropout, "output_activation": out_act, "heads": heads,
        "head_temperature": model.head_temperature,
    }


def discriminator_kwargs(model: ModelConfig, dataset: Dataset) -> dict[str, Any]:
    return {
        "in_dim": dataset.dim, "hidden": list(model.d_hidden),
        "activation": model.d_activation or model.activation,
        "leaky_slope": model.leaky_slope, "norm": model.d_norm, "dropout": model.d_dropout,
        "spectral_norm": model.spectral_norm, "pack": model.pack,
    }


# Cache keys are JSON because the configs hold lists.
def _data_key(data: DataConfig, seed: int) -> tuple[str, int]:
    # Mixtures and table splits are drawn from the seed; image datasets are fixed files.
    return json.dumps(dataclasses.asdict(data), sort_keys=True), seed if DATASETS[
        data.name].seeded else 0


@lru_cache(maxsize=2)
def _dataset(data_json: str, seed: int) -> Dataset:
    return load_dataset(DataConfig(**json.loads(data_json)), seed)


@lru_cache(maxsize=2)
def _evaluator(data_json: str, seed: int, eval_json: str, device: str) -> Evaluator:
    ev = EvalConfig(**json.loads(eval_json))
    return Evaluator(_dataset(data_json, seed), n_samples=ev.n_samples, metrics=ev.metrics,
                     cache_dir=Path(ev.cache_dir), seed=EVALUATOR_SEED, device=device)


def cached_dataset(data: DataConfig, seed: int) -> Dataset:
    return _dataset(*_data_key(data, seed))


def check_inputs(cfg: Config) -> None:
    """What ``prepare`` checks of the user's input, without building anything: the config, the
    data (read once, and kept in this process's cache), the metrics' settings. A sweep checks
    its base config so before it creates anything: a mistake every trial would repeat (a
    missing file, a metric that does not apply) is then one line, not a study of failures."""
    cfg.validate()
    _check_eval_settings(cfg.data, cfg.eval, cfg.train.seed)


def _check_eval_settings(data: DataConfig, ev: EvalConfig, seed: int) -> None:
    try:  # only the settings: a failure inside the metrics is not the user's config
        check_settings(cached_dataset(data, seed), ev.n_samples, ev.metrics)
    except ValueError as exc:  # e.g. eval.metrics names a metric that does not apply
        raise ConfigError(f"eval: {exc}") from None


def cached_evaluator(data: DataConfig, ev: EvalConfig, seed: int, device: str) -> Evaluator:
    _check_eval_settings(data, ev, seed)
    # keyed on what the Evaluator reads: trials that differ only in the schedule
    # (every_n_epochs, full_every_n_epochs) share one, and its real side and floor
    eval_json = json.dumps({k: getattr(ev, k) for k in EVALUATOR_READS}, sort_keys=True)
    return _evaluator(*_data_key(data, seed), eval_json, device)


EVALUATOR_READS = ("n_samples", "metrics", "cache_dir")
