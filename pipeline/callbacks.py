"""Lightning callbacks that move training numbers and pictures into an MLflow run.

MLflow is written here rather than through Lightning's MLFlowLogger because the project wants
per-epoch metrics at ``step=epoch`` (the logger uses the optimizer-step count, which manual
optimization with two optimizers makes twice the batch count) and owns the run's lifecycle
(nesting under a study, pruned trials tagged as such).

Metric points are buffered and written with one ``log_batch`` at each evaluation, at the end,
and at an epoch's end once LOSS_FLUSH_SECONDS have passed since the last write (every epoch when
the run keeps a checkpoint, so that a resumed run has every point from before its checkpoint).
One call per 50 steps cost ~4% of a grid25 trial on SQLite; one per epoch was still 0.4 s of a
20 s table trial (40 epochs of half a second, ~12 ms a write).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import lightning.pytorch as L
import matplotlib.pyplot as plt
from mlflow.entities import Metric

from pipeline import interrupt
from pipeline.dataset import Dataset
from pipeline.module import GANModule
from pipeline.plots import TableFigure, samples_figure
from pipeline.run_log import RunLogger, now_ms

if TYPE_CHECKING:
    from PIL import Image


class StopOnRequest(L.Callback):
    """Honours a stop requested by a signal (pipeline.interrupt) at safe points: after each
    chunk of steps and after each evaluation has been logged."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        interrupt.check()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        interrupt.check()


LOSS_FLUSH_SECONDS = 5.0  # the longest a loss point waits for its write (the UI's lag)


class MlflowMetrics(L.Callback):
    """Training losses averaged every N steps (``train/...``); evaluations at ``step=epoch``."""

    def __init__(self, run: RunLogger, dataset: Dataset, *, sample_every_n_epochs: int,
                 model_id: str | None = None, flush_every_epoch: bool = False) -> None:
        """``model_id``: the run's logged model, which every evaluation's metrics link to;
        ``flush_every_epoch``: write the losses at every epoch's end (a checkpointed run)."""
        self.run = run
        self.flush_every_epoch = flush_every_epoch
        self._flushed = time.monotonic()
        self.model_id = model_id
        self.dataset = dataset
        self.sample_every = sample_every_n_epochs
        self._buffer: list[Metric] = []
        self.history: dict[str, list[float]] = {}
        self.epochs_evaluated: list[int] = []
        self.pictured: set[int] = set()  # the steps of the "samples" slider already logged
        # The latest slider picture and its step: the final picture, when training ended on a
        # pictured epoch, is the same image (a table's takes ~0.5 s to draw).
        self._last_picture: tuple[int, Image.Image] | None = None
        self._table_figure: TableFigure | None = None  # made at the first picture of a table

    def state_dict(self) -> dict[str, Any]:
        """In a checkpoint: what a resumed run needs to return the same history."""
        return {"history": self.history, "epochs_evaluated": self.epochs_evaluated}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: list(v) for k, v in state_dict["history"].items()}
        self.epochs_evaluated = list(state_dict["epochs_evaluated"])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        assert isinstance(pl_module, GANModule)
        self._drain(pl_module)

    def _drain(self, module: GANModule) -> None:
        now = now_ms()
        for step, means in module.pending_logs:
            self._buffer += [Metric(k, float(v), now, step) for k, v in means.items()]
        module.pending_logs.clear()

    def flush(self) -> None:
        if self._buffer:
            self.run.log_metric_points(self._buffer)
            self._buffer = []
        self._flushed = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        evaluated = trainer.check_val_every_n_epoch is not None and not (
            (trainer.current_epoch + 1) % trainer.check_val_every_n_epoch)
        due = time.monotonic() - self._flushed >= LOSS_FLUSH_SECONDS
        if not evaluated and (due or self.flush_every_epoch):
            self.flush()  # no evaluation this epoch to carry the points

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, GANModule)
        if trainer.sanity_checking or not pl_module.last_eval:
            return
        epoch = trainer.current_epoch + 1
        now = now_ms()
        self._buffer += [Metric(k, v, now, epoch, model_id=self.model_id)
                         for k, v in pl_module.last_eval.items()]
        self.flush()  # before a pruning callback (after this one) can stop the run
        for key, value in pl_module.last_eval.items():
            self.history.setdefault(key, []).append(value)
        self.epochs_evaluated.append(epoch)
        if epoch % self.sample_every == 0:
            self.log_picture(pl_module, f"epoch {epoch}", step=epoch)

    def log_final(self, metrics: dict[str, float], step: int) -> None:
        """Metrics known after training (the costs), linked to the model like the others."""
        now = now_ms()
        self.run.log_metric_points([Metric(k, float(v), now, step, model_id=self.model_id)
                                    for k, v in metrics.items()])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The untrained generator at step 0: the UI's picture slider starts there, so it
        shows where training began instead of an empty frame."""
        assert isinstance(pl_module, GANModule)
        if trainer.current_epoch == 0:  # not on a resumed run
            self.log_picture(pl_module, "before training", step=0)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, GANModule)
        pl_module.close_last_interval()
        self._drain(pl_module)
        self.flush()

    def log_picture(self, pl_module: GANModule, title: str, *, step: int | None = None,
                    artifact_file: str | None = None) -> None:
        """A step-indexed image (the MLflow UI's slider), or a named artifact file."""
        if (artifact_file is not None and self._last_picture is not None
                and self._last_picture[0] == step):
            self.run.client.log_image(self.run.run_id, self._last_picture[1],
                                      artifact_file=artifact_file)
            return
        ds = self.dataset
        samples = pl_module.picture_samples().numpy()
        if ds.table is not None:
            t = ds.table
            if self._table_figure is None:
                self._table_figure = TableFigure(t.test_frame, t.test_frame.columns,
                                                 t.transformer.categorical)
            fig = self._table_figure.draw(t.transformer.inverse_transform(samples),
                                          title=f"{ds.name}: {title}")
        else:
            fig = samples_figure(samples, image_shape=ds.image_shape,
                                 centres=None if ds.centres is None else ds.centres.numpy(),
                                 title=f"{ds.name}: {title}")
        if artifact_file is not None:
            self.run.client.log_figure(self.run.run_id, fig, artifact_file)
        if step is not None and step not in self.pictured:
            self.pictured.add(step)
            self._last_picture = (step, self.run.log_image(fig, key="samples", step=step))
        else:
            plt.close(fig)
