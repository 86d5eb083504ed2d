"""Shared fixtures: a tiny CPU config whose MLflow store and caches live in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Config
from pipeline.config_load import load_config

TINY = [
    "data.name=grid25",
    "data.n_points=2048",
    "model.latent_dim=2",
    "model.g_hidden=[32, 32]",
    "model.d_hidden=[32, 32]",
    "train.epochs=2",
    "train.batch_size=128",
    "train.accelerator=cpu",
    "train.threads=1",  # tiny MLPs gain nothing from a second thread; it only adds contention
    "train.progress_bar=false",
    "train.log_every_n_steps=4",
    "train.sample_every_n_epochs=1",
    "eval.n_samples=500",
]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes to the user's runs/ or reads their MLflow/Optuna settings."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def tiny_config(tmp_path: Path, store_uri: str):
    def make(*overrides: str) -> Config:
        return load_config(None, [
            *TINY,
            f"tracking.tracking_uri={store_uri}",
            f"eval.cache_dir={tmp_path / 'cache'}",
            *overrides,
        ])

    return make
