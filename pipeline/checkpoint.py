"""Checkpoints of a ``train`` run, so that a killed training continues where it stopped.

One file per run, ``runs/checkpoints/<run_id>.ckpt``, rewritten atomically after every epoch
(after its evaluation and logging): Lightning's full checkpoint (weights, optimizer and schedule
states, the loops' progress, the callbacks' state) plus the module's own (step counters, RNG
state) and the run's resolved config. Removed when the run finishes; a killed or failed run
keeps it for ``python -m pipeline train --resume RUN_ID``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch

from pipeline.config import Config, ConfigError, config_from_dict

CHECKPOINT_DIR = Path("runs") / "checkpoints"


def checkpoint_path(run_id: str) -> Path:
    return CHECKPOINT_DIR / f"{run_id}.ckpt"


class EpochCheckpoint(L.Callback):
    """After each epoch: the whole training state, written to a temporary file and renamed."""

    def __init__(self, run_id: str, cfg: Config) -> None:
        self.path = checkpoint_path(run_id)
        self.config = cfg.to_dict()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)
        os.replace(tmp, self.path)  # a kill mid-write leaves the previous epoch's file whole

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint["fcgan_config"] = self.config

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def resume_config(run_id: str) -> Config:
    """The resolved config a run was trained with, from its checkpoint."""
    path = checkpoint_path(run_id)
    if not path.exists():
        raise ConfigError(f"--resume {run_id}: no checkpoint at {path} (runs of `train` keep one "
                          f"until they finish; finished runs and study trials have none)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        return config_from_dict(state["fcgan_config"])
    except (OSError, EOFError, RuntimeError, KeyError, ValueError) as exc:
        raise ConfigError(f"--resume {run_id}: unreadable checkpoint {path} ({exc})") from None
