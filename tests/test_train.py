"""A tiny training run end to end, read back from a tmp_path MLflow store."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from fit_helper import fit
from mlflow.tracking import MlflowClient

import pipeline
from pipeline.__main__ import main
from pipeline.config import PROJECT_ROOT
from pipeline.metrics.modes import mixture_mode_metrics
from pipeline.networks import Generator
from pipeline.prepare import EVAL_SEED_OFFSET, cached_dataset


def test_tiny_run_is_tracked(tiny_config, store_uri: str, tmp_path: Path) -> None:
    cfg = tiny_config()
    result = fit(cfg)
    client = MlflowClient(tracking_uri=store_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"

    # every resolved config value is a param
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["data.name"] == "grid25"
    assert run.data.params["model.g_hidden"] == "[32, 32]"
    assert set(cfg.flat()) <= set(run.data.params)
    assert run.data.tags["dataset"] == "grid25"
    assert run.data.tags["fid_features"] == "coordinates"
    assert run.data.tags["package_version"] == pipeline.__version__
    # MLflow's own run context fills in user and source (the git commit: see the CLI test)
    assert run.data.tags["mlflow.user"] == getpass.getuser()
    assert run.data.tags["mlflow.source.name"] == sys.argv[0]
    # the training set as an MLflow dataset input: name, digest of the points, code source
    (data_input,) = run.inputs.dataset_inputs
    assert data_input.dataset.name == "grid25-train"
    assert [(t.key, t.value) for t in data_input.tags] == [("mlflow.data.context", "training")]
    assert json.loads(data_input.dataset.source) == {"tags": {
        "drawn_by": "pipeline.readers.mixtures.mixture", "modes": "25", "n": str(cfg.data.n_points),
        "std": "0.05", "seed": str(cfg.train.seed)}}
    assert json.loads(data_input.dataset.profile)["features_shape"] == [cfg.data.n_points, 2]

    # per-epoch validation metrics at step = epoch
    for name in ("val/fid", "val/modes_covered", "val/high_quality", "val/reverse_kl",
                 "val/eval_seconds"):
        history = client.get_metric_history(result.run_id, name)
        assert [m.step for m in history] == [1, 2], name
    assert result.epochs_evaluated == [1, 2]

    # training losses averaged every 4 steps: 2 epochs x 16 batches -> 8 points
    d_loss = client.get_metric_history(result.run_id, "train/d_loss")
    assert [m.step for m in d_loss] == [4, 8, 12, 16, 20, 24, 28, 32]
    for name in ("train/g_loss", "train/d_real", "train/d_fake"):
        assert len(client.get_metric_history(result.run_id, name)) == 8

    artifacts = {a.path for a in client.list_artifacts(result.run_id, "samples")}
    assert artifacts == {"samples/final.png"}
    from PIL import Image

    final = Image.open(client.download_artifacts(result.run_id, "samples/final.png",
                                                 str(tmp_path)))
    assert final.width >= 600  # large enough to see a grid's modes
    # Step-indexed pictures (the UI's slider): the untrained G at step 0 (no empty first
    # frame), then one per epoch (sample_every_n_epochs=1); the last is not logged twice.
    images = [a.path for a in client.list_artifacts(result.run_id, "images")
              if a.path.endswith(".png")]
    assert sorted(p.split("+")[:3] for p in images) == [["images/samples", "step", "0"],
                                                        ["images/samples", "step", "1"],
                                                        ["images/samples", "step", "2"]]
    # Training ended on a pictured epoch: the final picture is that frame, not drawn again.
    (last,) = [p for p in images if p.startswith("images/samples+step+2+")]
    frame = Image.open(client.download_artifacts(result.run_id, last, str(tmp_path)))
    assert np.array_equal(np.asarray(final.convert("RGB")), np.asarray(frame.convert("RGB")))
    model_files = {a.path for a in client.list_artifacts(result.run_id, "model")}
    assert model_files == {"model/generator.pt", "model/discriminator.pt",
                           "model/generator.json", "model/config.yaml"}

    # The logged weights are the evaluated generator: scoring it again on the evaluation's z
    # (drawn from seed + 2) reproduces the final logged metrics exactly.
    local = Path(client.download_artifacts(result.run_id, "model", str(tmp_path)))
    meta = json.loads((local / "generator.json").read_text())
    g = Generator(**meta["generator_kwargs"])
    g.load_state_dict(torch.load(local / "generator.pt", weights_only=True))
    g.eval()
    z = torch.randn(cfg.eval.n_samples, cfg.model.latent_dim,
                    generator=torch.Generator().manual_seed(cfg.train.seed + EVAL_SEED_OFFSET))
    with torch.no_grad():
        again = mixture_mode_metrics(g(z), cached_dataset(cfg.data, 0).centres, 0.05)
    for name, value in again.items():
        assert run.data.metrics[f"val/{name}"] == result.metrics[f"val/{name}"] == value, name


def test_workers_starting_together_share_the_training_set_row(tmp_path: Path) -> None:
    """Trials that start at the same moment log the same training set into one experiment,
    which MLflow stores once (a unique key on experiment, name and digest): every run gets its
    input, none fails on the key (seen on SQLite and PostgreSQL)."""
    import threading

    import numpy as np

    from pipeline.run_log import RunLogger, start_run
    from pipeline.tracking import get_client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    points = np.random.default_rng(0).random((100, 2))
    errors: list[BaseException] = []
    runs: list[str] = []

    def first_trial(experiment: str) -> None:
        try:
            client = MlflowClient(tracking_uri=uri)
            run_id = start_run(client, experiment)
            RunLogger(client, run_id).log_training_data(points, "ring8-train", {"seed": "0"})
            runs.append(run_id)
        except BaseException as exc:
            errors.append(exc)

    client = get_client(uri)
    for k in range(5):  # a fresh experiment each time: the row does not exist yet
        client.create_experiment(f"study-{k}")
        threads = [threading.Thread(target=first_trial, args=(f"study-{k}",)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(runs) == 20
    for run_id in runs:
        (data_input,) = client.get_run(run_id).inputs.dataset_inputs
        assert data_input.dataset.name == "ring8-train"


def test_same_seed_same_metrics(tiny_config) -> None:
    first = fit(tiny_config("train.seed=7"))
    second = fit(tiny_config("train.seed=7"))
    timing = "val/eval_seconds"
    assert {k: v for k, v in first.metrics.items() if k != timing} == {
        k: v for k, v in second.metrics.items() if k != timing}
    assert first.history["val/fid"] == second.history["val/fid"]
    other = fit(tiny_config("train.seed=8"))
    assert other.metrics["val/fid"] != first.metrics["val/fid"]


@pytest.mark.parametrize("loss", ["bce", "lsgan", "wgan-gp"])
def test_losses_and_options_train(tiny_config, store_uri: str, tmp_path: Path,
                                  loss: str) -> None:
    cfg = tiny_config(f"train.loss={loss}", "train.n_critic=2", "model.pack=2",
                      "model.spectral_norm=true", "model.d_norm=layer", "model.g_norm=batch",
                      "model.d_dropout=0.2", "train.epochs=1")
    result = fit(cfg)
    assert result.epochs_evaluated == [1]
    # The options reached the networks that were trained and logged.
    client = MlflowClient(tracking_uri=store_uri)
    local = Path(client.download_artifacts(result.run_id, "model", str(tmp_path)))
    d_state = torch.load(local / "discriminator.pt", weights_only=True)
    g_state = torch.load(local / "generator.pt", weights_only=True)
    assert d_state["net.0.parametrizations.weight.original"].shape == (32, 4)  # 2 packed x 2-D
    assert "net.1.weight" in d_state and d_state["net.1.weight"].shape == (32,)  # LayerNorm
    assert "net.1.running_mean" in g_state  # BatchNorm in G
    if loss == "wgan-gp":
        # D's loss is linear in the logits plus the gradient penalty: the logged mean exceeds
        # the Wasserstein estimate d_fake - d_real by the (positive) penalty.
        hist = {k: client.get_metric_history(result.run_id, f"train/{k}")[0].value
                for k in ("d_loss", "d_real", "d_fake")}
        assert hist["d_loss"] - (hist["d_fake"] - hist["d_real"]) > 1e-4


def test_digits_run_with_image_metrics(tiny_config, store_uri: str) -> None:
    cfg = tiny_config("data.name=digits", "train.epochs=1", "model.latent_dim=16",
                      "eval.n_samples=300", "eval.metrics=[fid, classes_covered, class_kl]")
    result = fit(cfg)
    assert set(result.metrics) == {"val/fid", "val/classes_covered", "val/class_kl",
                                   "val/eval_seconds"}
    run = MlflowClient(tracking_uri=store_uri).get_run(result.run_id)
    assert run.data.tags["fid_features"].startswith("fcgan-mlp-classifier-digits")
    assert float(run.data.params["eval.classifier_test_accuracy"]) >= 0.95


def test_failed_run_ends_failed(tiny_config, store_uri: str, monkeypatch) -> None:
    from pipeline import module

    def broken(self, real, batch_idx):
        raise RuntimeError("boom in training")

    monkeypatch.setattr(module.GANModule, "training_step", broken)
    with pytest.raises(RuntimeError, match="boom"):
        fit(tiny_config())
    runs = MlflowClient(tracking_uri=store_uri).search_runs(["1"])
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert "boom in training" in runs[0].data.tags["error"]


def test_interrupted_run_ends_killed(tiny_config, store_uri: str, monkeypatch) -> None:
    from pipeline import module

    def interrupt(self, real, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(module.GANModule, "training_step", interrupt)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        fit(tiny_config())
    runs = MlflowClient(tracking_uri=store_uri).search_runs(["1"])
    assert [r.info.status for r in runs] == ["KILLED"]


def test_cli_train_prints_run_id(store_uri: str, capsys) -> None:
    code = main(["train", f"tracking.tracking_uri={store_uri}",
                 "data.n_points=1024", "train.epochs=1", "train.steps_per_epoch=4",
                 "train.progress_bar=false", "eval.n_samples=200", "model.g_hidden=[16]",
                 "model.d_hidden=[16]"])
    assert code == 0
    out = capsys.readouterr().out
    run_id = out.splitlines()[0].removeprefix("MLflow run: ")
    run = MlflowClient(tracking_uri=store_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    printed = json.loads(out.split("\n", 1)[1])
    assert printed == {k: v for k, v in run.data.metrics.items() if k.startswith("val/")}


def test_cli_run_records_source_and_git_commit(store_uri: str, tmp_path: Path) -> None:
    """Run as `python -m pipeline train`, MLflow's run context names the source file and the
    project's git commit."""
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", f"tracking.tracking_uri={store_uri}",
         "data.n_points=512", "train.epochs=1", "train.steps_per_epoch=2",
         "train.progress_bar=false", "eval.n_samples=100", "model.g_hidden=[8]",
         "model.d_hidden=[8]", "tracking.log_weights=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    run_id = out.stdout.splitlines()[0].removeprefix("MLflow run: ")
    tags = MlflowClient(tracking_uri=store_uri).get_run(run_id).data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head
    assert tags["mlflow.source.name"] == str(PROJECT_ROOT / "pipeline" / "__main__.py")


def test_missing_data_logs_nothing(tiny_config, store_uri: str, tmp_path: Path) -> None:
    from pipeline.errors import DataError

    with pytest.raises(DataError):
        fit(tiny_config("data.name=fashion_mnist", f"data.root={tmp_path / 'nothing'}"))
    assert not (tmp_path / "mlflow.db").exists()


class KillAtEpoch(L.Callback):
    """Ctrl-C at the start of an epoch, after the previous epoch's checkpoint was written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def test_killed_training_resumes_to_the_same_result(tiny_config, store_uri: str) -> None:
    """Weights, optimizer and schedule states, the EMA, step counters and the RNG all come back:
    a run killed after 2 of 4 epochs and resumed ends with the uninterrupted run's metrics, in
    the same MLflow run, and its checkpoint is gone once it finishes."""
    from pipeline.checkpoint import checkpoint_path

    cfg = tiny_config("train.epochs=4", "train.ema_decay=0.9", "train.lr_decay_start=0.5",
                      "train.n_critic=2")
    whole = fit(cfg)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, checkpoint=True, callbacks=[KillAtEpoch(2)])
    client = MlflowClient(tracking_uri=store_uri)
    killed = client.search_runs(["1"], filter_string="attributes.status = 'KILLED'")
    assert len(killed) == 1
    run_id = killed[0].info.run_id
    assert checkpoint_path(run_id).exists()
    assert [m.step for m in client.get_metric_history(run_id, "val/fid")] == [1, 2]

    resumed = fit(cfg, resume=run_id)
    assert resumed.run_id == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    timing = "val/eval_seconds"
    assert {k: v for k, v in resumed.metrics.items() if k != timing} == {
        k: v for k, v in whole.metrics.items() if k != timing}
    assert resumed.history["val/fid"] == whole.history["val/fid"]
    assert [m.step for m in client.get_metric_history(run_id, "val/fid")] == [1, 2, 3, 4]
    assert not checkpoint_path(run_id).exists()


def test_resume_errors(tiny_config, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", "0123abcd"]) == 2
    assert "--resume '0123abcd': not an MLflow run id" in capsys.readouterr().err
    run_id = "0123456789abcdef0123456789abcdef"
    assert main(["train", "--resume", run_id]) == 2
    assert f"--resume {run_id}: no checkpoint at runs/checkpoints/{run_id}.ckpt" in (
        capsys.readouterr().err)
    assert main(["train", "--resume", "0123abcd", "train.epochs=3"]) == 2
    assert "give no --config or key=value with it" in capsys.readouterr().err


def test_light_evaluations_between_full_ones(tiny_config, store_uri: str) -> None:
    """full_every_n_epochs=2 over 3 epochs: every metric at epochs 2 and 3 (the last), only the
    main metrics and eval.always at epoch 1."""
    result = fit(tiny_config("train.epochs=3", "eval.full_every_n_epochs=2",
                             "eval.always=[kid]"))
    client = MlflowClient(tracking_uri=store_uri)

    def steps(name: str) -> list[int]:
        return [m.step for m in client.get_metric_history(result.run_id, f"val/{name}")]

    for name in ("fid", "modes_covered", "high_quality", "reverse_kl", "kid"):
        assert steps(name) == [1, 2, 3], name
    for name in ("precision", "recall", "density", "coverage"):
        assert steps(name) == [2, 3], name
    assert set(result.metrics) >= {"val/kid", "val/coverage"}  # the final checkpoint: all
