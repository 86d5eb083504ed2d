"""The accelerator table: ``train.accelerator`` names -> the torch device a run trains on.

Config validation, the device a run picks, Lightning's Trainer arguments and the sweep's worker
cap all read this one table, so a new accelerator is one entry.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.errors import ConfigError


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _mps_available() -> bool:
    import torch

    return bool(torch.backends.mps.is_available())


def _cuda(name: str = "gpu") -> str:
    if not _cuda_available():
        raise ConfigError(f"train.accelerator: got {name!r}, but this machine has no CUDA GPU "
                          "torch can use (use auto or cpu)")
    # cuBLAS is only deterministic with a fixed workspace; must be set before its first use.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return "cuda:0"


def _mps() -> str:
    if not _mps_available():
        raise ConfigError("train.accelerator: got 'mps', but MPS is not available here")
    return "mps"


def _auto() -> str:
    return _cuda() if _cuda_available() else "cpu"


@dataclass(frozen=True)
class Accelerator:
    device: Callable[[], str]  # the torch device string, or a ConfigError saying why not
    uses_gpus: bool = False  # counts CUDA GPUs when capping a sweep's workers


ACCELERATORS: dict[str, Accelerator] = {
    "auto": Accelerator(_auto, uses_gpus=True),
    "cpu": Accelerator(lambda: "cpu"),
    "gpu": Accelerator(_cuda, uses_gpus=True),
    "cuda": Accelerator(lambda: _cuda("cuda"), uses_gpus=True),
    "mps": Accelerator(_mps),
}


def default_device(accelerator: str) -> str:
    return ACCELERATORS[accelerator].device()


def lightning_devices(device: str) -> tuple[str, list[int] | int]:
    """Lightning's Trainer (accelerator, devices) for a torch device string."""
    if device.startswith("cuda"):
        return "gpu", [int(device.split(":")[1])] if ":" in device else 1
    return ("mps", 1) if device == "mps" else ("cpu", 1)


def gpu_count(accelerator: str) -> int:
    """CUDA GPUs a sweep's workers can share under this accelerator (0 for CPU-only ones)."""
    if not ACCELERATORS[accelerator].uses_gpus:
        return 0
    import torch

    return int(torch.cuda.device_count())
