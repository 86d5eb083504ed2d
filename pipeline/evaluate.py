"""Score samples from any model: an (N, D) array in the dataset's own scale -> metrics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.config import ConfigError, DataConfig, EvalConfig
from pipeline.data import load_dataset
from pipeline.metrics import Evaluator
from pipeline.metrics.registry import MIN_SAMPLES


def evaluate_file(
    data_name: str,
    samples_path: str | Path,
    *,
    root: str | None = None,
    metrics: Sequence[str] | None = None,
    cache_dir: str | Path = EvalConfig.cache_dir,
) -> dict[str, float]:
    data_cfg = DataConfig(name=data_name, root=root)
    data_cfg.validate()
    try:
        samples = np.load(samples_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--samples: cannot read {samples_path} as .npy ({exc})") from None
    if samples.dtype.kind not in "fiu" or not np.isfinite(samples).all():
        raise ConfigError(f"--samples: {samples_path} holds {samples.dtype} values, expected "
                          f"finite numbers (no NaN, no infinity)")
    dataset = load_dataset(data_cfg)
    if samples.ndim != 2 or samples.shape[1] != dataset.dim or len(samples) < MIN_SAMPLES:
        raise ConfigError(
            f"--samples: got shape {samples.shape}, expected (N, {dataset.dim}) with "
            f"N >= {MIN_SAMPLES} for {data_name}"
        )
    try:
        evaluator = Evaluator(dataset, n_samples=len(samples), metrics=metrics,
                              cache_dir=Path(cache_dir))
    except ValueError as exc:  # an unknown metric name
        raise ConfigError(f"--metrics: {exc}") from None
    return evaluator.evaluate(torch.from_numpy(samples.astype(np.float32)))
