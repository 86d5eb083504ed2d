"""fit(config) -> FitResult: data, networks, module, Trainer and one MLflow run.

Shared by ``python -m pipeline train`` and by every trial of a study, so a trial is exactly a
single run with sampled overrides.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import signal
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
import yaml

from pipeline.callbacks import MlflowMetrics, StopOnRequest
from pipeline.checkpoint import EpochCheckpoint, checkpoint_path, resume_config
from pipeline.config import Config, ConfigError, DataConfig, EvalConfig, ModelConfig
from pipeline.data import DATASETS, Dataset, TensorBatches, load_dataset
from pipeline.metrics import MAIN_METRICS, Evaluator, check_settings
from pipeline.module import GANModule
from pipeline.networks import Discriminator, Generator, count_parameters
from pipeline.tracking import Ending, RunLogger, get_client, mlflow_run, tracking_uri

# GAN steps per Lightning batch: Lightning's loop costs ~0.7 ms per batch, paid once per chunk.
# Results do not depend on it (every per-step rule runs inside the training step).
STEPS_PER_BATCH = 64


@dataclass
class FitResult:
    run_id: str
    metrics: dict[str, float]  # the last evaluation, keys 'val/<name>'
    history: dict[str, list[float]]  # 'val/<name>' -> one value per evaluation
    epochs_evaluated: list[int]


def fit(
    cfg: Config,
    *,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    extra_params: Mapping[str, Any] | None = None,
    callbacks: Sequence[L.Callback] = (),
    ended_by: Mapping[type[BaseException], Ending] | None = None,
    device: str | None = None,
    on_run_start: Callable[[str], None] | None = None,
    finish: Callable[[RunLogger, dict[str, list[float]], list[int]], None] | None = None,
    checkpoint: bool = False,
    resume: str | None = None,
) -> FitResult:
    """Train one configuration, tracked as one MLflow run; returns its metrics.

    Everything that can fail on bad input (config, data files, the feature classifier) happens
    before the MLflow run is created, so a mistake leaves no half-logged run behind. ``finish``
    runs inside the run after training (a study scores the trial there: if it raises, the run
    ends FAILED). ``checkpoint``: keep runs/checkpoints/<run_id>.ckpt while training, so that
    ``resume=<run_id>`` can continue the run after a kill (same run, same final metrics).
    """
    cfg.validate()
    if resume is not None:
        checkpoint = True
        check_resumable(resume, cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = device or default_device(cfg.train.accelerator)
    dataset = cached_dataset(cfg.data, cfg.train.seed)
    evaluator = cached_evaluator(cfg.data, cfg.eval, cfg.train.seed, device)
    t = cfg.train
    train_batches = TensorBatches(dataset.train.to(device), t.batch_size, seed=t.seed,
                                  steps=t.steps_per_epoch, chunk=STEPS_PER_BATCH)
    module = build_module(cfg, dataset, evaluator, steps_per_epoch=train_batches.steps)
    eval_z = torch.randn(cfg.eval.n_samples, cfg.model.latent_dim,
                         generator=torch.Generator().manual_seed(t.seed + 2)).to(device)
    eval_batches = TensorBatches(eval_z, 4096, shuffle=False, drop_last=False)

    run_tags = {
        "dataset": dataset.name,
        "fid_features": evaluator.feature_name,
        "device": device,
        **(tags or {}),
    }
    uri = tracking_uri(cfg.tracking.tracking_uri)
    with mlflow_run(uri, cfg.tracking.experiment, run_name=run_name, parent_run_id=parent_run_id,
                    tags=run_tags, ended_by=ended_by, run_id=resume,
                    system_metrics=cfg.tracking.system_metrics) as run:
        if on_run_start is not None:
            on_run_start(run.run_id)
        if resume is None:
            params: dict[str, Any] = dict(cfg.flat())
            params["model.g_parameters"] = count_parameters(module.generator)
            params["model.d_parameters"] = count_parameters(module.discriminator)
            if evaluator.classifier_accuracy is not None:
                params["eval.classifier_test_accuracy"] = round(evaluator.classifier_accuracy, 4)
            params.update(extra_params or {})
            run.log_params(params)
            run.log_training_data(dataset.train.numpy(), f"{dataset.name}-train", dataset.source)

        tracker = MlflowMetrics(run, dataset, sample_every_n_epochs=t.sample_every_n_epochs)
        saver = EpochCheckpoint(run.run_id, cfg) if checkpoint else None
        # tracker first: it logs an evaluation before a pruning callback raises; the
        # checkpoint last: it saves what the others logged
        trainer = make_trainer(cfg, device, [tracker, *callbacks, *([saver] if saver else []),
                                             StopOnRequest()])
        run_trainer(trainer, module, train_batches, eval_batches,
                    ckpt_path=None if resume is None else str(checkpoint_path(resume)))

        epochs = f"{t.epochs} epoch{'s' if t.epochs != 1 else ''}"
        tracker.log_picture(module, f"after {epochs}", artifact_file="samples/final.png")
        if cfg.tracking.log_weights:
            log_weights(run, module, cfg, dataset)
        if finish is not None:
            finish(run, tracker.history, tracker.epochs_evaluated)
        if saver is not None:
            saver.remove()
        final = {k: v[-1] for k, v in tracker.history.items()}
        return FitResult(run.run_id, final, dict(tracker.history), tracker.epochs_evaluated)


def check_resumable(run_id: str, cfg: Config) -> None:
    """The run exists in this store and did not finish; it has a checkpoint."""
    if not checkpoint_path(run_id).exists():
        resume_config(run_id)  # raises the one-line error
    client = get_client(tracking_uri(cfg.tracking.tracking_uri))
    try:
        status = client.get_run(run_id).info.status
    except Exception:
        raise ConfigError(f"--resume {run_id}: no such run in the MLflow store") from None
    if status == "FINISHED":
        raise ConfigError(f"--resume {run_id}: the run already finished")


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
        n_picture=64 if dataset.is_images else cfg.eval.n_samples, seed=t.seed,
    )


def make_trainer(cfg: Config, device: str, callbacks: Sequence[L.Callback]) -> L.Trainer:
    """Lightning's Trainer as every run uses it: validation = evaluation every N epochs."""
    return L.Trainer(
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=[int(device.split(":")[1])] if device.startswith("cuda:") else 1,
        max_epochs=cfg.train.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=cfg.train.progress_bar,
        check_val_every_n_epoch=cfg.eval.every_n_epochs,
        num_sanity_val_steps=0,
        deterministic=True,
        callbacks=list(callbacks),
    )


def run_trainer(trainer: L.Trainer, module: GANModule, train_batches: TensorBatches,
                eval_batches: TensorBatches, ckpt_path: str | None = None) -> None:
    try:
        trainer.fit(module, train_dataloaders=train_batches, val_dataloaders=eval_batches,
                    ckpt_path=ckpt_path)
    except SystemExit as exc:
        # Lightning turns Ctrl-C (any KeyboardInterrupt) into sys.exit(1) and ignores SIGINT
        # from then on: restore Ctrl-C and re-raise the interrupt itself (it may name the
        # signal), so the run ends KILLED rather than FAILED.
        if not trainer.interrupted:
            raise
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
        interrupt = exc.__context__
        raise (interrupt if isinstance(interrupt, KeyboardInterrupt)
               else KeyboardInterrupt()) from None


def default_device(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.accelerator: got {accelerator!r}, but this machine has no "
                          f"CUDA GPU torch can use (use auto or cpu)")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.accelerator: got 'mps', but MPS is not available here")
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        # cuBLAS is only deterministic with a fixed workspace; must be set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        return "cuda:0"
    if accelerator == "mps":
        return "mps"
    return "cpu"


def generator_kwargs(model: ModelConfig, dataset: Dataset) -> dict[str, Any]:
    out_act = model.output_activation
    if out_act == "auto":
        out_act = "tanh" if dataset.is_images else "none"
    return {
        "latent_dim": model.latent_dim, "out_dim": dataset.dim, "hidden": list(model.g_hidden),
        "activation": model.activation, "leaky_slope": model.leaky_slope, "norm": model.g_norm,
        "dropout": model.g_dropout, "output_activation": out_act,
    }


def discriminator_kwargs(model: ModelConfig, dataset: Dataset) -> dict[str, Any]:
    return {
        "in_dim": dataset.dim, "hidden": list(model.d_hidden),
        "activation": model.d_activation or model.activation,
        "leaky_slope": model.leaky_slope, "norm": model.d_norm, "dropout": model.d_dropout,
        "spectral_norm": model.spectral_norm, "pack": model.pack,
    }


def warm_up(uri: str) -> None:
    """A worker's one-off costs, paid before its first trial instead of inside it: the store's
    connection and schema check (1-1.5 s on SQLite), and the map of installed packages that
    MLflow's save_model checks the model's requirements against (0.7 s, built once per process).
    In the first trial they made a fresh worker's first run ~2 s longer than the next ones."""
    from mlflow.utils import requirements_utils

    get_client(uri)
    requirements_utils._init_packages_to_modules_map()


def log_weights(run: RunLogger, module: GANModule, cfg: Config, dataset: Dataset) -> None:
    """The evaluated generator as an MLflow model (``generator/``: TorchScript, a signature and
    an input example, loadable with ``mlflow.pyfunc.load_model`` without this project), and
    ``model/``: state dicts, constructor arguments and the resolved config (export reads it)."""
    import mlflow.pytorch

    generator = module.sampler
    was_training = generator.training
    generator.eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        torch.save(generator.state_dict(), folder / "generator.pt")
        torch.save(module.discriminator.state_dict(), folder / "discriminator.pt")
        meta = {
            "generator_kwargs": generator_kwargs(cfg.model, dataset),
            "discriminator_kwargs": discriminator_kwargs(cfg.model, dataset),
            "dataset": dataset.name,
            "image_shape": list(dataset.image_shape) if dataset.image_shape else None,
            "output_scale": "[-1, 1] (images)" if dataset.is_images else "raw 2-D coordinates",
            "centres": None if dataset.centres is None else dataset.centres.tolist(),
        }
        (folder / "generator.json").write_text(json.dumps(meta, indent=2))
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        run.log_dir(folder, "model")

        scripted = torch.jit.script(copy.deepcopy(generator).cpu())
        # MLflow warns about pickle for any non-pt2 format; a TorchScript archive is what makes
        # the model loadable without this project's code (pt2 does not take it).
        with warnings.catch_warnings(), quiet_logger("mlflow.pytorch"):
            warnings.simplefilter("ignore")
            mlflow.pytorch.save_model(
                scripted, str(Path(tmp) / MODEL_ARTIFACT), signature=generator_signature(
                    generator.latent_dim, dataset.dim),
                input_example=torch.randn(4, generator.latent_dim,
                                          generator=torch.Generator().manual_seed(0)).numpy(),
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                serialization_format="pickle")
        run.log_dir(Path(tmp) / MODEL_ARTIFACT, MODEL_ARTIFACT)
    generator.train(was_training)


MODEL_ARTIFACT = "generator"  # the MLflow model in every run: runs:/<run_id>/generator


@contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def generator_signature(latent_dim: int, out_dim: int) -> Any:
    """z (n, latent_dim) float32 in, samples (n, out_dim) float32 out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, latent_dim))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, out_dim))]))


# A study worker runs many trials on the same data: load it and prepare the real-data side of
# the metrics once per worker, not once per trial. Keys are JSON because the configs hold lists.
def _data_key(data: DataConfig, seed: int) -> tuple[str, int]:
    # Mixtures are drawn from the seed; image datasets are fixed files.
    return json.dumps(dataclasses.asdict(data), sort_keys=True), seed if DATASETS[
        data.name].seeded else 0


@lru_cache(maxsize=2)
def _dataset(data_json: str, seed: int) -> Dataset:
    return load_dataset(DataConfig(**json.loads(data_json)), seed)


@lru_cache(maxsize=2)
def _evaluator(data_json: str, seed: int, eval_json: str, device: str) -> Evaluator:
    ev = EvalConfig(**json.loads(eval_json))
    return Evaluator(_dataset(data_json, seed), n_samples=ev.n_samples, metrics=ev.metrics,
                     cache_dir=Path(ev.cache_dir), seed=0, device=device)


def cached_dataset(data: DataConfig, seed: int) -> Dataset:
    return _dataset(*_data_key(data, seed))


def cached_evaluator(data: DataConfig, ev: EvalConfig, seed: int, device: str) -> Evaluator:
    try:  # only the settings: a failure inside the metrics is not the user's config
        check_settings(cached_dataset(data, seed), ev.n_samples, ev.metrics)
    except ValueError as exc:  # e.g. eval.metrics names a metric that does not apply
        raise ConfigError(f"eval: {exc}") from None
    eval_json = json.dumps(dataclasses.asdict(ev), sort_keys=True)
    return _evaluator(*_data_key(data, seed), eval_json, device)
