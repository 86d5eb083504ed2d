"""Checkpoints of a ``train`` run, so that a killed training continues where it stopped.

One file per run, ``runs/checkpoints/<run_id>.ckpt``, rewritten atomically after every epoch
(after its evaluation and logging): Lightning's full checkpoint (weights, optimizer and schedule
states, the loops' progress, the callbacks' state) plus the module's own (step counters, RNG
state) and the run's resolved config. Removed when the run finishes; a killed or failed run
keeps it for ``python -m pipeline train --resume RUN_ID``.

A checkpoint holds tensors and plain values only (dicts, lists, tuples, str, int, float, bool,
None), so it is read with ``torch.load(weights_only=True)``, which runs no code from the file:
a full unpickle of a file someone else placed under runs/checkpoints/ could run anything.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch

from pipeline.config import Config, ConfigError
from pipeline.config_load import config_from_dict, shown

CHECKPOINT_DIR = Path("runs") / "checkpoints"
_RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow's run ids: uuid4().hex
_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def check_run_id(run_id: str) -> str:
    """A run id is MLflow's 32 lowercase hex digits: anything else (``../x``, an absolute
    path) is refused before a path is built from it."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ConfigError(f"--resume {shown(run_id)}: not an MLflow run id (expected 32 "
                          f"lowercase hex digits, as `train` prints after 'MLflow run:')")
    return run_id


def checkpoint_path(run_id: str) -> Path:
    return CHECKPOINT_DIR / f"{check_run_id(run_id)}.ckpt"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Tensors and plain values only; a file that names anything else is refused unread."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"a {type(state).__name__}, not a checkpoint")
    return state


def _refusal(exc: pickle.UnpicklingError) -> str:
    found = _GLOBAL.search(str(exc))
    if found:
        return (f"it holds {found.group(1).rstrip('.')}, not only tensors and plain values; "
                f"loading it could run code from the file")
    return "not a checkpoint torch can read without running code from it"


class EpochCheckpoint(L.Callback):
    """After each epoch: the whole training state, written to a temporary file and renamed."""

    def __init__(self, run_id: str, cfg: Config) -> None:
        self.path = checkpoint_path(run_id)
        self.config = cfg.to_dict()  # plain dicts, lists and scalars

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)
        # A state that is not plain (a numpy scalar, an object) would make the checkpoint
        # unloadable by --resume: found now, at the first epoch, not after a kill. mmap: the
        # tensors are not read.
        try:
            torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as exc:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"checkpoint {self.path}: {_refusal(exc)}; the module's and "
                               f"callbacks' checkpoint state must be plain") from None
        os.replace(tmp, self.path)  # a kill mid-write leaves the previous epoch's file whole

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint["fcgan_config"] = self.config

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def resume_config(run_id: str) -> Config:
    """The resolved config a run was trained with, from its checkpoint in runs/checkpoints/."""
    path = checkpoint_path(run_id)
    if not path.exists():
        raise ConfigError(f"--resume {run_id}: no checkpoint at {path} (runs of `train` keep one "
                          f"until they finish; finished runs and study trials have none)")
    if path.is_symlink() or not path.is_file() or (
            path.resolve().parent != CHECKPOINT_DIR.resolve()):
        raise ConfigError(f"--resume {run_id}: {path} is a link or not a regular file; only "
                          f"checkpoints written into {CHECKPOINT_DIR} by `train` are read")
    try:
        state = load_checkpoint(path)
    except pickle.UnpicklingError as exc:
        raise ConfigError(f"--resume {run_id}: refusing {path}: {_refusal(exc)}") from None
    except (OSError, EOFError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"--resume {run_id}: unreadable checkpoint {path} "
                          f"({shown(str(exc).splitlines()[0] if str(exc) else exc)})") from None
    try:
        return config_from_dict(state["fcgan_config"])
    except (KeyError, TypeError, ValueError) as exc:  # ConfigError is a ValueError
        raise ConfigError(f"--resume {run_id}: checkpoint {path} has no usable config "
                          f"({type(exc).__name__}: {shown(str(exc))})") from None
