"""compare and export on a finished smoke study (shared by the tests of this module)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from slow_helpers import SMOKE

from pipeline.__main__ import main
from pipeline.compare import compare, format_rows
from pipeline.config import ConfigError
from pipeline.config_load import load_config
from pipeline.data import load_dataset
from pipeline.drs import calibrate
from pipeline.export import export_best
from pipeline.exported import DRS_FILE, ExportError, load_export
from pipeline.networks import Discriminator, Generator
from pipeline.study.choice import DisagreementError
from pipeline.study.spec import load_study_file
from pipeline.study.storage import open_storage
from pipeline.study.store import PARENT_ATTR, RUN_ATTR, SPEC_ATTR
from pipeline.study.sweep import run_sweep


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("study")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "OPTUNA_STORAGE": str(root / "optuna.journal")}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.chdir(root)
        run_sweep(load_study_file(SMOKE), n_trials=3, progress=False)
        yield {**env, "root": str(root)}


@pytest.fixture
def study_env(finished_study: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", finished_study["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("OPTUNA_STORAGE", finished_study["OPTUNA_STORAGE"])
    return finished_study


def _study(env: dict[str, str]) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=open_storage(env["OPTUNA_STORAGE"]))


def test_compare_ranks_and_agrees(study_env: dict[str, str], tmp_path: Path) -> None:
    text, figure = compare("smoke", top=3, fmt="json", figure_path=tmp_path / "cmp.png")
    rows = json.loads(text)
    study = _study(study_env)
    complete = sorted((t for t in study.trials if t.state.name == "COMPLETE"),
                      key=lambda t: t.value)
    assert [r["trial"] for r in rows[: len(complete)]] == [t.number for t in complete][:3]
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    first = rows[0]
    assert first["objective"] == pytest.approx(complete[0].value)
    assert first["run_id"] == complete[0].user_attrs[RUN_ATTR]
    assert {"fid", "modes_covered", "high_quality", "reverse_kl"} <= set(first)
    assert any(k.startswith("p:") for k in first)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(tracking_uri=study_env["MLFLOW_TRACKING_URI"])
    logged = {a.path for a in client.list_artifacts(study.user_attrs[PARENT_ATTR], "comparison")}
    assert logged == {"comparison/top_trials.png"}


def test_compare_formats(study_env: dict[str, str], tmp_path: Path, capsys) -> None:
    assert main(["compare", "--study", "smoke", "--top", "2", "--format", "csv",
                 "--figure", str(tmp_path / "c.png")]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 2 and rows[0]["rank"] == "1"
    text, _ = compare("smoke", top=2, fmt="markdown", figure_path=tmp_path / "c.png")
    assert text.splitlines()[1].startswith("|---|")
    table, _ = compare("smoke", top=2, fmt="table", figure_path=tmp_path / "c.png")
    assert table.splitlines()[0].split()[:4] == ["rank", "trial", "state", "objective"]


def test_compare_detects_disagreement(study_env: dict[str, str], tmp_path: Path) -> None:
    study = _study(study_env)
    best = study.best_trial
    client = MlflowClient(tracking_uri=study_env["MLFLOW_TRACKING_URI"])
    run_id = best.user_attrs[RUN_ATTR]
    history = client.get_metric_history(run_id, "objective")
    client.log_metric(run_id, "objective", best.value + 1.0, step=history[-1].step + 1)
    try:
        with pytest.raises(DisagreementError, match=f"trial {best.number}"):
            compare("smoke", top=3, figure_path=tmp_path / "c.png")
        # export refuses to ship (or register) a model whose value the store contradicts
        with pytest.raises(DisagreementError, match=f"trial {best.number}"):
            export_best("smoke", tmp_path / "x")
        assert not (tmp_path / "x").exists()
    finally:
        client.log_metric(run_id, "objective", best.value, step=history[-1].step + 2)


def test_export_best(study_env: dict[str, str], tmp_path: Path) -> None:
    out, version = export_best("smoke", tmp_path / "export")
    files = {p.name for p in out.iterdir()}
    assert files == {"generator.pt", "generator.onnx", "config.json", "metrics.json",
                     "samples.png", "MODEL_CARD.md"}
    study = _study(study_env)
    best = study.best_trial
    config = json.loads((out / "config.json").read_text())
    assert config["trial"] == best.number
    assert config["mlflow_run_id"] == best.user_attrs[RUN_ATTR]
    # config.json is the full resolved config (it rebuilds the trial's Config) plus the shapes
    assert load_config(None, extra={k: config[k] for k in ("data", "model", "train", "eval")}
                       ).model.g_hidden == config["generator"]["kwargs"]["hidden"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == pytest.approx(best.value)
    assert "val/fid" in metrics

    # the registry: <study>-generator@champion is the run's logged MLflow model, tagged
    client = MlflowClient(tracking_uri=study_env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("smoke-generator", "champion")
    assert int(champion.version) == version
    assert champion.run_id == best.user_attrs[RUN_ATTR]
    # the run's MLflow 3 logged model (the Models tab), READY, with the run's metrics linked
    (logged,) = client.search_logged_models(
        [client.get_run(champion.run_id).info.experiment_id],
        filter_string=f"source_run_id = '{champion.run_id}'")
    assert champion.source == f"models:/{logged.model_id}" and logged.name == "generator"
    assert str(logged.status) in ("READY", "LoggedModelStatus.READY")
    assert {m.key for m in logged.metrics} >= {"val/fid", "cost/g_params"}
    assert float(champion.tags["val_fid"]) == pytest.approx(metrics["val/fid"], rel=1e-5)
    # exporting the same run again adds no version
    assert export_best("smoke", tmp_path / "again")[1] == version
    assert len(client.search_model_versions("name='smoke-generator'")) == 1

    # the same z through TorchScript, ONNX, MLflow's pyfunc and the project's own model
    z = torch.randn(64, config["generator"]["latent_dim"],
                    generator=torch.Generator().manual_seed(3))
    scripted = torch.jit.load(str(out / "generator.pt"))
    session = onnxruntime.InferenceSession(str(out / "generator.onnx"))
    local = Path(client.download_artifacts(best.user_attrs[RUN_ATTR], "model", str(tmp_path)))
    own = Generator(**config["generator"]["kwargs"])
    own.load_state_dict(torch.load(local / "generator.pt", weights_only=True))
    own.eval()
    with torch.no_grad():
        expected = own(z).numpy()
        np.testing.assert_allclose(scripted(z).numpy(), expected, rtol=1e-5, atol=1e-6)
    (onnx_out,) = session.run(None, {"z": z.numpy()})
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-5)
    card = (out / "MODEL_CARD.md").read_text()
    for text in ("torch.jit.load", "float32", "Headline value", "last 2 evaluations",
                 "`train.seed`", "`train.g_lr`", "mlflow.pyfunc.load_model"):
        assert text in card, text


def test_registered_model_loads_in_a_fresh_process_without_the_project(
        study_env: dict[str, str], tmp_path: Path) -> None:
    """models:/smoke-generator@champion through mlflow.pyfunc, in a process where importing
    the project fails: the same samples as the exported TorchScript file."""
    out, _ = export_best("smoke", tmp_path / "export")
    z = np.random.default_rng(0).standard_normal((32, 2)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    script = (
        "import sys; sys.modules['pipeline'] = None\n"  # the project cannot be imported
        "import mlflow, numpy as np\n"
        "model = mlflow.pyfunc.load_model('models:/smoke-generator@champion')\n"
        "np.save('out.npy', model.predict(np.load('z.npy')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={
                              **os.environ, "MLFLOW_TRACKING_URI": study_env["MLFLOW_TRACKING_URI"],
                              "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    expected = torch.jit.load(str(out / "generator.pt"))(torch.from_numpy(z)).detach().numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, rtol=1e-5, atol=1e-6)


def test_sample_cli(study_env: dict[str, str], tmp_path: Path) -> None:
    out, _ = export_best("smoke", tmp_path / "export")
    for name in ("s.npy", "s.csv", "s.png"):
        assert main(["sample", str(out), "-n", "50", "--seed", "1",
                     "--out", str(tmp_path / name)]) == 0
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (50, 2)
    np.testing.assert_allclose(np.loadtxt(tmp_path / "s.csv", delimiter=","), samples, rtol=1e-6)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    again = tmp_path / "again.npy"
    main(["sample", str(out), "-n", "50", "--seed", "1", "--out", str(again)])
    np.testing.assert_array_equal(np.load(again), samples)


def test_export_errors(study_env: dict[str, str], tmp_path: Path, capsys) -> None:
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text("{}")
    with pytest.raises(ExportError, match=r"incomplete export folder, missing generator\.pt"):
        load_export(tmp_path / "partial")
    assert main(["sample", str(tmp_path / "partial"), "--out", str(tmp_path / "x.npy")]) == 2
    with pytest.raises(ConfigError, match="not found"):
        export_best("no-such-study", tmp_path / "e")
    # a study whose only trial failed has nothing to export
    study = optuna.create_study(study_name="empty", storage=open_storage(
        study_env["OPTUNA_STORAGE"]))
    study.set_user_attr(SPEC_ATTR, SMOKE.read_text())
    trial = study.ask()
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    with pytest.raises(ExportError, match="no complete trial"):
        export_best("empty", tmp_path / "e")
    assert main(["export", "--study", "empty", "--out", str(tmp_path / "e")]) == 2
    assert "no complete trial" in capsys.readouterr().err


def test_conditional_parameter_columns_stay_together() -> None:
    rows = [{"rank": 1, "p:a": 1, "run_id": "r1"},
            {"rank": 2, "p:a": 2, "p:leaky_slope": 0.2, "run_id": "r2"}]
    header = format_rows(rows, "csv").splitlines()[0]
    assert header == "rank,p:a,p:leaky_slope,run_id"


def test_export_drs_and_sample_drs(study_env: dict[str, str], tmp_path: Path, capsys) -> None:
    """export --drs writes the trial's D calibrated exactly as eval.drs calibrates it, and
    sample --drs keeps the samples it favours; an export without it is refused by name."""
    plain, _ = export_best("smoke", tmp_path / "plain")
    assert main(["sample", str(plain), "--drs", "--out", str(tmp_path / "x.npy")]) == 2
    assert "exported without --drs" in capsys.readouterr().err

    out, _ = export_best("smoke", tmp_path / "drs", drs=True)
    config = json.loads((out / "config.json").read_text())
    assert config["drs"]["seed"] == config["train"]["seed"] + 3  # prepare.DRS_SEED_OFFSET
    exported_d = torch.jit.load(str(out / DRS_FILE))

    # the same calibration by hand, from the run's own D and data
    run_id = config["mlflow_run_id"]
    local = Path(MlflowClient(tracking_uri=study_env["MLFLOW_TRACKING_URI"]).download_artifacts(
        run_id, "model", str(tmp_path)))
    meta = json.loads((local / "generator.json").read_text())
    d = Discriminator(**meta["discriminator_kwargs"])
    d.load_state_dict(torch.load(local / "discriminator.pt", weights_only=True))
    g = Generator(**meta["generator_kwargs"])
    g.load_state_dict(torch.load(local / "generator.pt", weights_only=True))
    cfg = load_config(None, extra={k: config[k] for k in ("data", "model", "train", "eval")})
    real = load_dataset(cfg.data, cfg.train.seed).train.float()
    by_hand = calibrate(d, g.eval(), real, batch_size=cfg.train.batch_size, lr=cfg.train.d_lr,
                        seed=config["drs"]["seed"])
    probe = torch.randn(256, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(exported_d(probe), by_hand(probe))

    for name in ("raw.npy", "drs.npy", "again.npy"):
        assert main(["sample", str(out), "-n", "1000", "--seed", "1",
                     *(["--drs"] if name != "raw.npy" else []),
                     "--out", str(tmp_path / name)]) == 0
    assert "DRS accepted" in capsys.readouterr().err
    assert "--drs" in (out / "MODEL_CARD.md").read_text()
    assert "--drs" not in (plain / "MODEL_CARD.md").read_text()
    raw, filtered = np.load(tmp_path / "raw.npy"), np.load(tmp_path / "drs.npy")
    assert filtered.shape == raw.shape == (1000, 2)
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), filtered)
    with torch.no_grad():  # acceptance rises with D's logit: what it keeps, D rates higher
        assert (exported_d(torch.from_numpy(filtered)).mean()
                > exported_d(torch.from_numpy(raw)).mean())
    (out / DRS_FILE).write_bytes(b"not a TorchScript archive")
    assert main(["sample", str(out), "--drs", "--out", str(tmp_path / "y.npy")]) == 2
    assert f"cannot load {DRS_FILE}" in capsys.readouterr().err
    # exported again without --drs, the folder loses the calibrated D along with config's drs
    export_best("smoke", out)
    assert not (out / DRS_FILE).exists()
    assert json.loads((out / "config.json").read_text())["drs"] is None
