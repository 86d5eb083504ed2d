"""Bad inputs and faults: a one-line error with nothing written, or a study that stops, resumes
and loses nothing. (Signals and killed processes: tests/test_slow_faults.py.)"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from slow_helpers import SMOKE

from pipeline.__main__ import main
from pipeline.cli.runs import capped_workers
from pipeline.config import PROJECT_ROOT, ConfigError
from pipeline.config_load import mask_secrets
from pipeline.readers.mixtures import ring8
from pipeline.study.spec import load_study_file, parse_study
from pipeline.study.storage import open_storage
from pipeline.study.store import ERROR_ATTR, OWNER_ATTR, PARENT_ATTR, RUN_ATTR, create_or_load
from pipeline.study.sweep import SweepError, run_sweep
from pipeline.study.worker import seed_offset

TINY = ["data.n_points=512", "train.epochs=1", "train.steps_per_epoch=2", "eval.n_samples=100",
        "train.batch_size=64", "model.g_hidden=[8]", "model.d_hidden=[8]",
        "train.progress_bar=false"]


def one_line_error(capsys: pytest.CaptureFixture[str], fragment: str) -> None:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    assert fragment in err, err


def nothing_written(root: Path) -> None:
    assert not (root / "runs" / "mlflow.db").exists()
    assert not (root / "runs" / "optuna.journal").exists()


BAD_TRAIN = [
    ("train.g_lr=.nan", "train.g_lr: got nan, expected a number in (0, 1]"),
    ("train.d_lr=.inf", "train.d_lr: got inf"),
    ("data.std=1e300", "data.std: got 1e+300, expected a number in (0, 100]"),
    ("train.seed=-1", "train.seed: got -1, expected an integer in [0, 4294967295]"),
    ("data.n_points=3", "data.n_points: got 3, expected at least 100"),
    ("tracking.tracking_uri=bogus://x", "tracking.tracking_uri: got 'bogus://x'"),
    ("model.g_hidden=[1000000000]", "model.g_hidden: got 1000000000, expected an integer in"),
    ("model.d_hidden=[8000, 8000, 8000]", "expected at most 100,000,000"),
    ("train.threads=100000", "train.threads: got 100000"),
    ("eval.every_n_epochs=5", "eval.every_n_epochs: got 5, expected at most train.epochs (1)"),
    ("model.leaky_slope=-0.1", "model.leaky_slope: got -0.1"),
    ("train.ema_decay=1.0", "train.ema_decay: got 1.0, expected a number in [0, 1)"),
    ("train.lr_decay_start=1.5", "train.lr_decay_start: got 1.5"),
    ("model.d_activation=swish", "model.d_activation: got 'swish', expected one of relu"),
    ("model.pack=1000", "model.pack: got 1000"),
]


@pytest.mark.parametrize(("override", "fragment"), BAD_TRAIN, ids=[b[0] for b in BAD_TRAIN])
def test_bad_train_values(override: str, fragment: str, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *TINY, override]) == 2
    one_line_error(capsys, fragment)
    nothing_written(tmp_path)


def test_gpu_without_cuda_is_a_config_error(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train", *TINY, "train.accelerator=gpu"]) == 2
    one_line_error(capsys, "train.accelerator: got 'gpu', but this machine has no CUDA GPU")
    nothing_written(tmp_path)


def bad_study(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


SPACE = "search_space: {train.g_lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}\n"


@pytest.mark.parametrize(("text", "fragment"), [
    ("search_space: {train.g_lr: {type: float, low: .nan, high: 1.0e-2}}",
     "search_space.train.g_lr: low and high must be finite numbers"),
    ("name: ../../x/evil\n" + SPACE, "name: got '../../x/evil', expected a plain name"),
    ("name: /tmp/evil\n" + SPACE, "expected a plain name"),
    ("name: ..\n" + SPACE, "expected a plain name"),
    ("base: {eval: {every_n_epochs: 5}, train: {epochs: 3}}\n" + SPACE,
     "eval.every_n_epochs: got 5, expected at most train.epochs (3)"),
    ("budget: {max_consecutive_failures: 0}\n" + SPACE, "budget.max_consecutive_failures"),
])
def test_bad_study_files(text: str, fragment: str, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", bad_study(tmp_path, text)]) == 2
    one_line_error(capsys, fragment)
    nothing_written(tmp_path)


def test_study_file_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "folder.yaml").mkdir()
    assert main(["sweep", str(tmp_path / "folder.yaml")]) == 2
    one_line_error(capsys, "a folder, not a study file")


@pytest.mark.parametrize(("storage", "fragment"), [
    ("foo://nowhere/db", "not a usable database URL"),
    ("postgresql+psycopg2://u:secret@127.0.0.1:1/x", "cannot open the database"),
])
def test_bogus_storage(storage: str, fragment: str, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(SMOKE), "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "secret" not in err and err.count("\n") == 1, err


def test_unreachable_mlflow_creates_no_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A first start with MLflow down must not leave a study without its parent run (every
    later resume would wait for one)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    assert main(["sweep", str(SMOKE), "--storage", str(tmp_path / "j.journal")]) == 2
    one_line_error(capsys, "MLflow at http://127.0.0.1:9 does not answer")
    assert not (tmp_path / "j.journal").exists() or not optuna.get_all_study_names(
        open_storage(str(tmp_path / "j.journal")))


@pytest.mark.parametrize(("values", "fragment"), [
    (np.array([[np.nan, 0.0]] * 20), "expected finite numbers"),
    (np.array([[np.inf, 0.0]] * 20), "expected finite numbers"),
    (np.array([["a", "b"]] * 20), "holds <U1 values"),
])
def test_bad_samples_for_evaluate(values: np.ndarray, fragment: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "s.npy", values)
    assert main(["evaluate", "--data", "ring8", "--samples", str(tmp_path / "s.npy")]) == 2
    one_line_error(capsys, fragment)


@pytest.mark.parametrize("argv", [
    ["compare", "--study", "smoke", "--top", "0"],
    ["compare", "--study", "smoke", "--top", "-2"],
    ["sample", "nowhere", "-n", "-5", "--out", "x.npy"],
    ["sample", "nowhere", "-n", "0", "--out", "x.npy"],
    ["sweep", str(SMOKE), "--workers", "0"],
    ["ui", "--port", "70000"],
])
def test_bad_options_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err


def test_corrupt_export_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "generator.pt").write_bytes(b"not a model")
    (folder / "config.json").write_text(json.dumps({"generator": {"latent_dim": 2}}))
    assert main(["sample", str(folder), "--out", str(tmp_path / "x.npy")]) == 2
    one_line_error(capsys, "corrupt export folder")
    (folder / "config.json").write_text("{not json")
    assert main(["sample", str(folder), "--out", str(tmp_path / "x.npy")]) == 2
    one_line_error(capsys, "corrupt export folder")
    assert not (tmp_path / "x.npy").exists()


def test_compare_and_export_without_the_mlflow_store(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Losing runs/mlflow.db: a one-line error, and no empty store created in its place."""
    defn = load_study_file(SMOKE)
    create_or_load(defn, str(tmp_path / "runs" / "optuna.journal"))
    for argv in (["compare", "--study", "smoke"], ["export", "--study", "smoke"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_workers_are_capped_at_the_cpu_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert capped_workers(1000, "cpu") == os.cpu_count()
    assert f"--workers 1000: capped at {os.cpu_count()}" in capsys.readouterr().err
    assert capped_workers(1, "cpu") == 1


def test_secrets_are_masked() -> None:
    for url, secret in [("postgresql://user:hunter2@db/optuna", "hunter2"),
                        ("postgresql://:hunter2@db/optuna", "hunter2"),
                        ("postgresql://db/optuna?user=u&password=hunter2", "hunter2"),
                        ("mysql://db/x?sslmode=require&PASSWORD=hunter2&x=1", "hunter2"),
                        ("http://tok:hunter2@mlflow:5000", "hunter2")]:
        masked = mask_secrets(url)
        assert secret not in masked and "***" in masked, masked
    assert mask_secrets("postgresql://db/optuna?user=u") == "postgresql://db/optuna?user=u"


def test_ui_passes_the_store_in_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The store URL (password included) never reaches a command line that ps shows."""
    from pipeline.cli import servers as cli

    seen = {}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u:hunter2@127.0.0.1/mlflow")
    monkeypatch.setattr(cli, "serve", lambda cmd, env: seen.update(cmd=cmd, env=env) or 0)
    assert main(["ui"]) == 0
    assert "hunter2" not in " ".join(seen["cmd"]) and "hunter2" not in capsys.readouterr().err
    assert seen["env"]["MLFLOW_BACKEND_STORE_URI"].endswith("hunter2@127.0.0.1/mlflow")


# --- faults ------------------------------------------------------------------------------------


@pytest.fixture
def study_env(tmp_path: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    return store_uri, str(tmp_path / "optuna.journal")


def statuses(uri: str) -> list[str]:
    client = MlflowClient(tracking_uri=uri)
    return [r.info.status for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])]


def test_a_study_whose_trials_all_fail_stops(study_env: tuple[str, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    uri, storage = study_env
    from pipeline import module

    def broken(self, chunk, batch_idx):
        raise RuntimeError("boom in training")

    monkeypatch.setattr(module.GANModule, "training_step", broken)
    with pytest.raises(SweepError, match=r"study smoke stopped: 5 trials failed in a row; last "
                                         r"error \(trial 4\): RuntimeError: boom in training"):
        run_sweep(load_study_file(SMOKE), n_trials=50, storage=storage, progress=False)
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage))
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 5
    assert all("boom" in t.user_attrs[ERROR_ATTR] for t in study.trials)
    assert sorted(statuses(uri)) == ["FAILED"] * 6  # 5 trials and the parent, none RUNNING


def test_failures_count_toward_a_hard_cap(study_env: tuple[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Failures that never come 5 in a row still stop the study at budget.max_failures."""
    uri, storage = study_env
    from pipeline.study import objective

    calls = {"n": 0}
    real = objective.Objective._run

    def every_other(self, trial):
        calls["n"] += 1
        if calls["n"] % 2:
            raise RuntimeError("odd trial")
        return real(self, trial)

    monkeypatch.setattr(objective.Objective, "_run", every_other)
    defn = parse_study(SMOKE.read_text().replace("budget: {n_trials: 4, epochs: 3}",
                                                 "budget: {n_trials: 40, epochs: 1, "
                                                 "max_failures: 3}"), default_name="smoke")
    with pytest.raises(SweepError, match="3 trials failed; last error"):
        run_sweep(defn, storage=storage, progress=False)
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage))
    assert [t.state.name for t in study.trials].count("FAIL") == 3
    assert "RUNNING" not in statuses(uri)


def test_a_nan_objective_fails_trial_and_run(study_env: tuple[str, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    uri, storage = study_env
    from pipeline.metrics import evaluator

    real = evaluator.Evaluator.evaluate
    monkeypatch.setattr(evaluator.Evaluator, "evaluate",
                        lambda self, fake, only=None: {**real(self, fake, only),
                                                             "fid": float("nan")})
    defn = parse_study(SMOKE.read_text().replace("n_trials: 4, epochs: 3", "n_trials: 1, "
                                                 "epochs: 3, max_consecutive_failures: 1"),
                       default_name="smoke")
    with pytest.raises(SweepError, match="1 trials failed in a row"):
        run_sweep(defn, storage=storage, progress=False)
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage))
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    run = MlflowClient(tracking_uri=uri).get_run(trial.user_attrs[RUN_ATTR])
    assert run.info.status == "FAILED" and "is nan" in run.data.tags["error"]


def test_torn_journal_tail_is_repaired(study_env: tuple[str, str],
                                       caplog: pytest.LogCaptureFixture) -> None:
    uri, storage = study_env
    defn = load_study_file(SMOKE)
    run_sweep(defn, n_trials=2, storage=storage, progress=False)
    path = Path(storage)
    size = path.stat().st_size
    os.truncate(path, size - 40)  # a writer killed mid-record
    run_sweep(defn, n_trials=3, storage=storage, progress=False)
    assert "dropped 1 torn record(s)" in caplog.text
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage))
    assert len([t for t in study.trials if t.state.is_finished()]) >= 3
    assert all(line.endswith(b"\n") and json.loads(line) for line in
               path.read_bytes().splitlines(keepends=True))
    assert "RUNNING" not in statuses(uri)
    assert main(["compare", "--study", "smoke", "--storage", storage, "--format", "json"]) == 0


def test_a_journal_corrupted_mid_file_is_refused_and_kept(tmp_path: Path) -> None:
    """What the torn tail did before its repair existed (a record appended after it): only a
    torn *last* record is mended; damage inside the file is refused, the file kept as it is."""
    path = tmp_path / "j.journal"
    study = optuna.create_study(storage=open_storage(str(path), create=True), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    lines = path.read_bytes().splitlines(keepends=True)
    damaged = b"".join([*lines[:3], lines[3][:10], *lines[3:]])
    path.write_bytes(damaged)
    with pytest.raises(ConfigError, match=f"damaged journal: line 4 of {len(lines)} is not"):
        open_storage(str(path), create=True)
    assert path.read_bytes() == damaged


def test_resuming_an_edited_study_names_the_difference(study_env: tuple[str, str],
                                                       capsys) -> None:
    _uri, storage = study_env
    text = SMOKE.read_text()
    run_sweep(parse_study(text, default_name="smoke"), n_trials=1, storage=storage,
              progress=False)
    capsys.readouterr()  # what the first sweep printed
    edited = text.replace("objective: {metric: val/fid, direction: minimize, last_k: 2}",
                          "objective: {metric: val/coverage, direction: minimize, last_k: 2}")
    path = Path(storage).parent / "smoke.yaml"
    path.write_text(edited)
    assert main(["sweep", str(path), "--storage", storage, "--trials", "2"]) == 2
    one_line_error(capsys, "objectives minimize val/fid (last 2) -> minimize val/coverage "
                           "(last 2). Resume with --allow-changes")
    path.write_text(edited.replace("direction: minimize", "direction: maximize"))
    assert main(["sweep", str(path), "--storage", storage, "--allow-changes"]) == 2
    one_line_error(capsys, "the objectives' directions changed (minimize -> maximize)")
    path.write_text(edited)
    assert main(["sweep", str(path), "--storage", storage, "--trials", "2", "--allow-changes",
                 "--no-progress"]) == 0
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage))
    assert len(study.trials) == 2
    assert study.user_attrs["study_file_changes"][0]["changes"] == [
        "objectives minimize val/fid (last 2) -> minimize val/coverage (last 2)"]


def _exit_at_once() -> None:
    pass


def test_trials_of_a_dead_worker_are_failed_and_their_runs_killed(
        study_env: tuple[str, str]) -> None:
    """A worker SIGKILLed mid-trial leaves its trial RUNNING in Optuna and its run RUNNING in
    MLflow; the next sweep of the study marks them FAIL and KILLED, with the reason."""
    uri, storage = study_env
    defn = load_study_file(SMOKE)
    study, _ = create_or_load(defn, storage)
    dead = multiprocessing.get_context("spawn").Process(target=_exit_at_once)
    dead.start()
    dead.join()
    trial = study.ask()
    owner = {"host": os.uname().nodename, "pid": dead.pid, "started": None}
    trial.set_user_attr(OWNER_ATTR, owner)
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("smoke"))
    trial.set_user_attr(RUN_ATTR, run.info.run_id)

    run_sweep(defn, n_trials=1, storage=storage, progress=False)
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage))
    zombie = study.trials[trial.number]
    assert zombie.state == optuna.trial.TrialState.FAIL
    assert zombie.user_attrs[ERROR_ATTR] == f"worker died (pid {dead.pid} on {owner['host']})"
    killed = client.get_run(run.info.run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["killed_reason"].startswith("worker died")
    assert "RUNNING" not in statuses(uri)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_processes_get_distinct_sampler_seeds() -> None:
    """The creating command's workers: reproducible and distinct; any other process (another
    machine joining, a resume): distinct from all of them."""
    assert [seed_offset(True, i, 0) for i in range(3)] == [0, 1000, 2000]
    others = {seed_offset(False, 0, 0) for _ in range(20)}
    assert len(others) == 20 and not others & {0, 1000, 2000}


def test_fresh_stores_created_at_the_same_moment(tmp_path: Path) -> None:
    """Several processes opening one new SQLite MLflow store, and one new SQLite Optuna
    storage, at once: every one succeeds and the stores stay usable."""
    script = (
        "import sys\n"
        "from pipeline.tracking import get_client\n"
        "from pipeline.study.storage import open_storage\n"
        f"client = get_client('sqlite:///{tmp_path}/mlflow.db')\n"
        "client.search_experiments()\n"
        f"open_storage('sqlite:///{tmp_path}/optuna.db', create=True)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
             for _ in range(4)]
    errors = [p.communicate(timeout=240)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert client.create_experiment("after")
    optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", study_name="after")


def test_parent_run_wait_is_bounded_by_the_study_age(study_env: tuple[str, str]) -> None:
    """A study whose creator died before making its parent run: a resume long after does not
    wait for it again (it used to hang for 120 s every time)."""
    import time

    from pipeline.study import parent_run
    from pipeline.study.store import CREATED_ATTR

    uri, storage = study_env
    defn = load_study_file(SMOKE)
    study, _ = create_or_load(defn, storage)
    study.set_user_attr(CREATED_ATTR, time.time() - 3600)
    start = time.monotonic()
    run_id = parent_run.ensure(study, defn, uri, storage, created=False)
    assert time.monotonic() - start < 5
    assert study.user_attrs[PARENT_ATTR] == run_id


def test_study_names_given_to_compare_and_export_are_plain() -> None:
    from pipeline.study.store import find_study

    with pytest.raises(ConfigError, match=r"--study: got '\.\./x', expected a plain name"):
        find_study("../x")


def test_evaluate_still_scores_good_samples(tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "s.npy", ring8(n=500, seed=1).train.numpy())
    assert main(["evaluate", "--data", "ring8", "--samples", str(tmp_path / "s.npy"),
                 "--metrics", "modes_covered"]) == 0
    assert json.loads(capsys.readouterr().out) == {"modes_covered": 8.0}


def test_a_worker_s_repeated_sigterm_stays_a_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C reaches the whole terminal group, then the command SIGTERMs its workers: for a
    worker that is one stop, at its next safe point (it used to raise at once, mid-step or in
    its exit handlers). A second SIGINT, a person pressing Ctrl-C again, still stops at once."""
    from pipeline import interrupt

    monkeypatch.setattr(interrupt, "_requested", [])
    optuna_logger = logging.getLogger("optuna")
    monkeypatch.setattr(optuna_logger, "level", optuna_logger.level)  # a request quiets it
    interrupt.request_stop(signal.SIGINT, None)
    interrupt.request_stop_once(signal.SIGTERM, None)
    interrupt.request_stop_once(signal.SIGTERM, None)
    assert interrupt.requested() == "SIGINT"
    with pytest.raises(interrupt.Stopped, match="SIGINT"):
        interrupt.request_stop(signal.SIGINT, None)
