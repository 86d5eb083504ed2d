"""train(prepared, run) -> FitResult: Lightning's Trainer on a prepared training, logged into a
run its caller opened.

Shared by ``python -m pipeline train``, every trial of a study, reeval and the benchmark, so a
trial is exactly a single run with sampled overrides:

    prepared = prepare(cfg)
    with prepared.run(run_name=...) as run:
        result = train(prepared, run)
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import lightning.pytorch as L
import torch
from torch import nn

from pipeline.callbacks import MlflowMetrics, StopOnRequest
from pipeline.checkpoint import EpochCheckpoint, checkpoint_path, resume_config
from pipeline.config import Config, ConfigError
from pipeline.costs import costs
from pipeline.devices import lightning_devices
from pipeline.drs import calibrate, rejection_sample
from pipeline.model_log import discard_logged_model, log_weights, start_logged_model
from pipeline.prepare import EVAL_BATCH, Prepared, drs_seed
from pipeline.run_log import RunLogger
from pipeline.tracking import get_client, tracking_uri


@dataclass
class FitResult:
    run_id: str
    metrics: dict[str, float]  # the last evaluation, keys 'val/<name>'
    history: dict[str, list[float]]  # 'val/<name>' -> one value per evaluation
    epochs_evaluated: list[int]
    floor: dict[str, float]  # the same metrics for real rows: what a perfect generator scores
    costs: dict[str, float]  # 'cost/<name>': size, FLOPs, latency, training time (costs.py)
    drs: dict[str, float]  # eval.drs: the final G through rejection sampling, keys <name>


def train(prep: Prepared, run: RunLogger, *, callbacks: Sequence[L.Callback] = (),
          checkpoint: bool = False, resume: bool = False) -> FitResult:
    """Train into ``run``; returns the evaluations' metrics.

    ``checkpoint``: keep runs/checkpoints/<run_id>.ckpt while training, so that a killed run
    can be continued: reopen the same run (``prepared.run(run_id=...)``) and pass ``resume``
    (same run, same final metrics). Parameters are logged once, by the run's first training.
    """
    cfg, module = prep.cfg, prep.module
    floor = real_floor(prep)
    if not resume:
        run.log_params(prep.params())
        ds = prep.dataset
        run.log_training_data(ds.train.numpy(), f"{ds.name}-train", ds.source)
        if floor:
            run.log_metrics({f"{FLOOR_PREFIX}{k}": v for k, v in floor.items()}, step=0)
    model_id = start_logged_model(run) if cfg.tracking.log_weights else None
    saver = EpochCheckpoint(run.run_id, cfg) if checkpoint or resume else None
    tracker = MlflowMetrics(run, prep.dataset, model_id=model_id,
                            sample_every_n_epochs=cfg.train.sample_every_n_epochs,
                            flush_every_epoch=saver is not None)
    # tracker first: it logs an evaluation before a pruning callback raises; the checkpoint
    # last: it saves what the others logged
    trainer = make_trainer(cfg, prep.device, [tracker, *callbacks, *([saver] if saver else []),
                                              StopOnRequest()])
    start = time.perf_counter()
    try:
        run_trainer(trainer, module, prep,
                    ckpt_path=str(checkpoint_path(run.run_id)) if resume else None)
    except BaseException:
        if model_id and saver is None:  # a checkpointed run resumes into the same model
            discard_logged_model(run, model_id)
        raise
    # the fit loop of this process: a resumed run counts the part after its resume
    cost = costs(module.evaluated_generator, module.discriminator, time.perf_counter() - start)
    tracker.log_final(cost, step=cfg.train.epochs)

    epochs = f"{cfg.train.epochs} epoch{'s' if cfg.train.epochs != 1 else ''}"
    # the final picture: a file, and the slider's last step (unless that epoch has one)
    tracker.log_picture(module, f"after {epochs}", artifact_file="samples/final.png",
                        step=cfg.train.epochs)
    drs = rejection_sampled(prep) if cfg.eval.drs else {}
    if drs:
        run.log_metrics({f"{DRS_PREFIX}{k}": v for k, v in drs.items()}, step=cfg.train.epochs)
    if model_id:
        log_weights(run, module, cfg, prep.dataset, model_id)
    if saver is not None:
        saver.remove()
    final = {k: v[-1] for k, v in tracker.history.items()}
    return FitResult(run.run_id, final, dict(tracker.history), tracker.epochs_evaluated, floor,
                     cost, drs)


FLOOR_PREFIX = "floor/"  # floor/<metric>: the metric of real rows, beside val/<metric>
DRS_PREFIX = "drs/"  # drs/<metric>: the final G filtered by rejection sampling (drs.py)


def rejection_sampled(prep: Prepared) -> dict[str, float]:
    """The final evaluation's metrics for eval.n_samples samples that DRS accepted, with the
    share of G's samples it accepted (``acceptance``)."""
    cfg, module = prep.cfg, prep.module
    real = prep.dataset.train.to(prep.device, torch.float32)
    d = calibrated_discriminator(cfg, module.discriminator, module.evaluated_generator, real)
    samples, accepted = rejection_sample(module.evaluated_generator, d, cfg.eval.n_samples,
                                         seed=drs_seed(cfg.train.seed), batch=EVAL_BATCH)
    return {**prep.evaluator.evaluate(samples), "acceptance": accepted}


def calibrated_discriminator(cfg: Config, discriminator: nn.Module, generator: nn.Module,
                             real: torch.Tensor) -> nn.Module:
    """D calibrated for rejection sampling with the run's batch size, D learning rate and DRS
    seed: what eval.drs scores through, and what export --drs ships."""
    return calibrate(discriminator, generator, real, batch_size=cfg.train.batch_size,
                     lr=cfg.train.d_lr, seed=drs_seed(cfg.train.seed))


def real_floor(prep: Prepared) -> dict[str, float]:
    """The evaluator's floor (computed once per evaluator, so once per study worker), or none
    for data with no second real sample to score (points without known mixture centres)."""
    try:
        return prep.evaluator.floor()
    except ValueError:
        return {}


def make_trainer(cfg: Config, device: str, callbacks: Sequence[L.Callback]) -> L.Trainer:
    """Lightning's Trainer as every run uses it: validation = evaluation every N epochs."""
    accelerator, devices = lightning_devices(device)
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
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


def run_trainer(trainer: L.Trainer, module: L.LightningModule, prep: Prepared,
                ckpt_path: str | None = None) -> None:
    try:
        trainer.fit(module, train_dataloaders=prep.train_batches,
                    val_dataloaders=prep.eval_batches, ckpt_path=ckpt_path,
                    weights_only=True)  # a checkpoint is plain data: never unpickle code
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
