"""A user's table end to end on a slice of a real one (Palmer penguins): training, the study,
the bad inputs of the command line. Tiny networks and few steps: seconds each."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.__main__ import main
from pipeline.study.spec import parse_study
from pipeline.study.storage import open_storage
from pipeline.study.store import RUN_ATTR
from pipeline.study.sweep import run_sweep
from pipeline.tables.shipped import SHIPPED

ROWS = 150  # every species, island and sex is present in the first 150 rows of 333

TINY_TABLE = [
    "data.name=table", "model.latent_dim=8", "model.g_hidden=[32]", "model.d_hidden=[32]",
    "train.epochs=2", "train.batch_size=32", "train.steps_per_epoch=10", "train.threads=1",
    "train.progress_bar=false", "train.accelerator=cpu", "eval.n_samples=200",
    "tracking.system_metrics=false",
]


@pytest.fixture
def penguins_csv(tmp_path: Path) -> Path:
    path = tmp_path / "penguins.csv"
    SHIPPED["penguins"]().head(ROWS).to_csv(path, index=False)
    return path


def test_a_table_run_logs_table_metrics_floors_costs_and_its_encoding(
        penguins_csv: Path, store_uri: str) -> None:
    rc = main(["train", *TINY_TABLE, f"data.path={penguins_csv}", "data.label=species",
               f"tracking.tracking_uri={store_uri}"])
    assert rc == 0
    client = MlflowClient(tracking_uri=store_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fcgan").experiment_id])
    metrics = run.data.metrics
    for name in ("quality", "column_shapes", "pair_trends", "category_coverage", "detection_auc",
                 "dcr_share", "classes_covered", "fid"):
        assert f"val/{name}" in metrics, name
        assert f"floor/{name}" in metrics, name
    assert 0.0 <= metrics["val/quality"] <= 1.0
    assert metrics["cost/g_params"] > 0 and metrics["cost/sample_ms"] > 0
    assert run.data.tags["dataset"] == "penguins"
    files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/table_encoding.json" in files
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "penguins-train"


def test_a_tiny_table_study_optimizes_the_quality_score(penguins_csv: Path, store_uri: str,
                                                        tmp_path: Path) -> None:
    text = f"""
base:
  data: {{name: table, path: {penguins_csv}}}
  model: {{latent_dim: 8, g_hidden: [16], d_hidden: [16]}}
  train: {{batch_size: 32, steps_per_epoch: 5, log_every_n_steps: 5}}
  eval: {{n_samples: 200}}
  tracking: {{tracking_uri: "{store_uri}", system_metrics: false}}
budget: {{n_trials: 2, epochs: 2}}
objective: {{metric: val/quality, direction: maximize, last_k: 1}}
sampler: {{name: random, seed: 0}}
pruner: {{name: median, n_startup_trials: 1}}
search_space:
  data.numeric_encoding: {{type: categorical, choices: [standard, quantile, mode]}}
  model.pack: {{type: categorical, choices: [1, 4]}}
"""
    defn = parse_study(text, default_name="tiny-table")
    storage = str(tmp_path / "optuna.journal")
    summary = run_sweep(defn, storage=storage, progress=False)
    assert summary.n_finished == 2
    study = optuna.load_study(study_name="tiny-table", storage=open_storage(storage))
    client = MlflowClient(tracking_uri=store_uri)
    for trial in study.trials:
        run = client.get_run(trial.user_attrs[RUN_ATTR])
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == pytest.approx(run.data.metrics["val/quality"])

    # export, then sample: rows in the original schema, from the export folder and from the
    # registered MLflow model alike
    import mlflow
    import numpy as np

    from pipeline.export import export_best
    from pipeline.exported import sample_export, write_samples

    out, _ = export_best("tiny-table", tmp_path / "export", storage=storage)
    samples, config = sample_export(out, 300, seed=1)
    rows = pd.read_csv(write_samples(samples, config, tmp_path / "rows.csv"))
    original = pd.read_csv(penguins_csv)
    assert list(rows.columns) == list(original.columns) and len(rows) == 300
    assert dict(rows.dtypes) == dict(original.dtypes)
    for column in ("species", "island", "sex"):
        assert set(rows[column]) <= set(original[column])
    mlflow.set_tracking_uri(store_uri)
    model = mlflow.pyfunc.load_model("models:/tiny-table-generator@champion")
    frame = model.predict(np.zeros((4, 8), dtype=np.float32))
    assert list(frame.columns) == list(original.columns)
    assert frame["body_mass_g"].dtype == original["body_mass_g"].dtype


def _date_table(path: Path) -> None:
    pd.DataFrame({"when": pd.date_range("2020-01-01", periods=60).astype(str),
                  "x": range(60)}).to_csv(path, index=False)


def _nan_table(path: Path) -> None:
    pd.DataFrame({"x": [1.0, None, 3.0] * 20, "y": range(60)}).to_csv(path, index=False)


@pytest.mark.parametrize(("make", "fragment"), [
    (None, "no such file"),
    (_date_table, "when"),
    (_nan_table, "data.dropna=true"),
])
def test_bad_tables_are_one_line_and_write_nothing(make, fragment: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.csv"
    if make is not None:
        make(path)
    before = sorted(tmp_path.iterdir())
    rc = main(["train", *TINY_TABLE, f"data.path={path}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert fragment in err
    assert sorted(tmp_path.iterdir()) == before  # no runs/, no MLflow store


def test_a_sweep_on_a_missing_table_stops_before_creating_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.config import PROJECT_ROOT

    rc = main(["sweep", str(PROJECT_ROOT / "studies" / "table.yaml"), "--data",
               str(tmp_path / "nope.csv")])
    assert rc == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
