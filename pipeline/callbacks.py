"""Lightning callbacks that move training numbers and pictures into an MLflow run.

MLflow is written here rather than through Lightning's MLFlowLogger because the project wants
per-epoch metrics at ``step=epoch`` (the logger uses the optimizer-step count, which manual
optimization with two optimizers makes twice the batch count) and owns the run's lifecycle
(nesting under a study, KILLED for pruned trials).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import lightning.pytorch as L
import torch

from pipeline.data import Dataset
from pipeline.module import GANModule
from pipeline.plots import samples_png
from pipeline.tracking import RunLogger


class MlflowMetrics(L.Callback):
    """Training losses averaged every N steps (``train/...``); evaluations at ``step=epoch``."""

    def __init__(self, run: RunLogger, dataset: Dataset, *, log_every_n_steps: int,
                 sample_every_n_epochs: int) -> None:
        self.run = run
        self.dataset = dataset
        self.every = log_every_n_steps
        self.sample_every = sample_every_n_epochs
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = defaultdict(int)
        self._steps = 0
        self.history: dict[str, list[float]] = defaultdict(list)
        self.epochs_evaluated: list[int] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._steps += 1
        for key, value in (outputs or {}).items():
            self._sums[key] = self._sums.get(key, 0) + value  # stays a tensor: no sync per step
            self._counts[key] += 1
        if self._steps % self.every == 0:
            self.flush_train()

    def flush_train(self) -> None:
        if not self._sums:
            return
        means = {f"train/{k}": float(v) / self._counts[k] for k, v in self._sums.items()}
        self.run.log_metrics(means, step=self._steps)
        self._sums.clear()
        self._counts.clear()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, GANModule)
        if trainer.sanity_checking or not pl_module.last_eval:
            return
        epoch = trainer.current_epoch + 1
        self.run.log_metrics(pl_module.last_eval, step=epoch)
        for key, value in pl_module.last_eval.items():
            self.history[key].append(value)
        self.epochs_evaluated.append(epoch)
        if epoch % self.sample_every == 0:
            self.log_picture(pl_module, f"samples/epoch_{epoch:04d}.png", f"epoch {epoch}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush_train()

    def log_picture(self, pl_module: GANModule, artifact_file: str, title: str) -> None:
        ds = self.dataset
        png = samples_png(
            pl_module.picture_samples().numpy(),
            image_shape=ds.image_shape,
            centres=None if ds.centres is None else ds.centres.numpy(),
            title=f"{ds.name}: {title}",
        )
        self.run.log_bytes(png, artifact_file)
