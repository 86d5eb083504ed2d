"""Issue 17's last classes: a full disk or read-only store mid-study, a lost or damaged MLflow
store, a storage refused before anything is created, and mistakes every trial would share
caught before the first. Each is one line, and nothing stays RUNNING once the study resumes."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.__main__ import main
from pipeline.config import PROJECT_ROOT
from pipeline.faults import fault_message, storage_fault
from pipeline.logs import FaultTracebacks
from pipeline.run_log import RunLogger
from pipeline.study.spec import load_study_file
from pipeline.study.storage import open_storage

SMOKE = PROJECT_ROOT / "studies" / "smoke.yaml"
ENOSPC = OSError(errno.ENOSPC, "No space left on device", "runs/artifacts/x.png")


def run_statuses(uri: str) -> list[str]:
    client = MlflowClient(tracking_uri=uri)
    return sorted(r.info.status for e in client.search_experiments()
                  for r in client.search_runs([e.experiment_id]))


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


# --- what a fault is --------------------------------------------------------------------------


def test_faults_are_found_inside_the_libraries_wrappers() -> None:
    try:
        try:
            raise ENOSPC
        except OSError as inner:
            raise MlflowException("could not log the artifact") from inner
    except MlflowException as wrapped:
        assert storage_fault(wrapped) == "no space left on the device (runs/artifacts/x.png)"
    assert storage_fault(RuntimeError("(sqlite3.OperationalError) database or disk is full")) \
        == "no space left on the device"
    assert storage_fault(RuntimeError("attempt to write a readonly database")) == \
        "a read-only store"
    assert storage_fault(OSError(errno.EROFS, "Read-only file system")) == \
        "a read-only file system"
    assert "damaged" in str(storage_fault(RuntimeError("file is not a database")))
    assert storage_fault(ValueError("a bad value")) is None
    assert storage_fault(OSError(errno.ENOENT, "No such file")) is None
    assert "run the same command again (it resumes" in fault_message("x", "no space",
                                                                    resumes=True)


def _record(msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("optuna", logging.WARNING, __file__, 1, msg, None, exc_info)


def test_fault_tracebacks_are_dropped_from_library_logs_but_not_others() -> None:
    drop = FaultTracebacks()
    assert not drop.filter(_record("Trial 3 failed with parameters: {} because ...", ENOSPC))
    assert not drop.filter(_record("Trial 3 failed with value None."))
    assert drop.filter(_record("Trial 4 failed with parameters: {}", ValueError("a bug")))
    assert drop.filter(_record("Trial 4 failed with value None."))
    assert not drop.filter(_record("Failed to log system metrics: database or disk is full"))
    assert drop.filter(_record("A new study created in Journal with name: smoke"))


# --- a full disk mid-study ---------------------------------------------------------------------


@pytest.fixture
def study_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri, str(tmp_path / "optuna.journal")


def test_a_full_disk_stops_the_study_in_one_line_and_it_resumes(
        study_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The second trial's picture cannot be written: the sweep stops there (no more trials
    started), says so once, exit 1; that trial is FAIL and its run FAILED; the same command,
    once the disk has room, finishes the study."""
    uri, storage = study_env
    real = RunLogger.log_image

    def full_disk_in_trial_1(self, fig, key, step):
        if self.client.get_run(self.run_id).data.tags.get("optuna_trial") == "1":
            raise ENOSPC
        return real(self, fig, key, step)

    monkeypatch.setattr(RunLogger, "log_image", full_disk_in_trial_1)
    argv = ["sweep", str(SMOKE), "--storage", storage, "--workers", "1", "--no-progress"]
    assert main(argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: study smoke stopped at trial 1: no space left on the "
                           "device (runs/artifacts/x.png); free space"), line
    assert "resumes the study" in line
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL"]
    assert run_statuses(uri) == ["FAILED", "FINISHED", "KILLED"]  # trial 1, trial 0, parent

    monkeypatch.setattr(RunLogger, "log_image", real)
    assert main(argv) == 0
    study = optuna.load_study(study_name="smoke", storage=open_storage(storage))
    assert len([t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]) == 4
    assert "RUNNING" not in run_statuses(uri)


def test_a_run_the_full_disk_kept_running_is_ended_when_the_study_resumes(
        study_env: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The store refuses the run's own ending too: it stays RUNNING until the resume."""
    uri, storage = study_env

    def full(*args, **kwargs):
        raise ENOSPC

    monkeypatch.setattr(RunLogger, "log_image", full)
    monkeypatch.setattr(MlflowClient, "set_terminated", full)
    assert run_sweep_code(storage) == 1
    assert one_error_line(capsys.readouterr().err).startswith(
        "error: study smoke stopped at trial 0: no space left")
    assert run_statuses(uri) == ["RUNNING", "RUNNING"]  # the trial's run and the parent
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert run_sweep_code(storage, trials=2) == 0
    runs = MlflowClient(tracking_uri=uri).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri=uri).search_experiments()])
    left = [r for r in runs if r.data.tags.get("optuna_trial") == "0"]
    assert [r.info.status for r in left] == ["FAILED"]
    assert "closed when the study resumed" in left[0].data.tags["error"]
    assert "RUNNING" not in run_statuses(uri)


def run_sweep_code(storage: str, trials: int | None = None) -> int:
    argv = ["sweep", str(SMOKE), "--storage", storage, "--workers", "1", "--no-progress"]
    return main([*argv, *(["--trials", str(trials)] if trials else [])])


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs")
def test_a_real_full_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """runs/ on a 1 MB tmpfs (where this machine lets root mount one): one line; with room
    again, the same command finishes the study and leaves nothing RUNNING (the parent run,
    which the full store could not close, included)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(runs)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        argv = ["sweep", str(SMOKE), "--workers", "1", "--no-progress"]
        assert main(argv) == 1
        assert "no space left on the device" in one_error_line(capsys.readouterr().err)
        uri = f"sqlite:///{runs / 'mlflow.db'}"
        subprocess.run(["mount", "-o", "remount,size=64m", str(runs)], check=True)
        assert main(argv) == 0
        assert "RUNNING" not in run_statuses(uri)
    finally:
        # lazily: this process's MLflow client still holds the database open
        subprocess.run(["umount", "-l", str(runs)], check=False)


def test_a_read_only_store_can_be_compared(tmp_path: Path, study_env: tuple[str, str],
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Readers take no lock file: a store whose lock file cannot be opened (here it is a
    folder, as good as a read-only one for open(..., "a")) is still compared."""
    _, storage = study_env
    assert run_sweep_code(storage, trials=2) == 0
    capsys.readouterr()
    lock = tmp_path / "mlflow.db.lock"
    lock.unlink()
    lock.mkdir()
    as_in_a_new_process(monkeypatch)
    assert main(["compare", "--study", "smoke", "--storage", storage]) == 0
    assert "trial" in capsys.readouterr().out


def as_in_a_new_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the stores this process has open: MLflow keeps an engine (and its pooled
    connections) per database, which would go on reading a file replaced under it."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as Registry
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service import utils as service

    for store in (SqlAlchemyStore, Registry):
        for engine in store._engine_map.values():
            engine.dispose()
        store._engine_map.clear()
    service._tracking_store_registry._get_store_with_resolved_uri.cache_clear()
    monkeypatch.setattr(tracking, "_opened", set())
    monkeypatch.setattr(tracking, "_answered", set())


# --- the MLflow store lost, replaced or damaged ------------------------------------------------


@pytest.fixture
def smoke_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A finished 1-trial smoke study in the default stores (runs/ under tmp_path)."""
    assert main(["sweep", str(SMOKE), "--workers", "1", "--no-progress", "--trials", "1"]) == 0
    capsys.readouterr()
    return tmp_path / "runs"


def test_a_study_whose_mlflow_store_was_deleted_is_refused_and_none_created(
        smoke_study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (smoke_study / "mlflow.db").unlink()
    journal = (smoke_study / "optuna.journal").read_bytes()
    assert main(["sweep", str(SMOKE), "--trials", "3", "--no-progress"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "study smoke (1 trial) cannot resume" in line and "does not exist" in line, line
    assert not (smoke_study / "mlflow.db").exists()
    assert (smoke_study / "optuna.journal").read_bytes() == journal


def test_a_study_whose_mlflow_store_was_replaced_is_refused(
        smoke_study: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    as_in_a_new_process(monkeypatch)
    (smoke_study / "mlflow.db").unlink()
    MlflowClient(tracking_uri=f"sqlite:///{smoke_study / 'mlflow.db'}").search_experiments()
    before = files(smoke_study)
    assert main(["sweep", str(SMOKE), "--trials", "3", "--no-progress"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "its MLflow parent run" in line and "is not in the store" in line, line
    assert files(smoke_study) == before


@pytest.mark.parametrize("damage", ["random", "inside"])
def test_a_damaged_mlflow_store_is_one_line_for_every_command(
        damage: str, smoke_study: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    as_in_a_new_process(monkeypatch)
    db = smoke_study / "mlflow.db"
    if damage == "random":
        db.write_bytes(os.urandom(300_000))
    else:  # a valid header, the pages after it overwritten
        with open(db, "r+b") as fh:
            fh.seek(100)
            fh.write(b"\xff" * 4000)
    before = db.read_bytes()
    tiny = ["data.name=grid25", "model.g_hidden=[8]", "model.d_hidden=[8]", "train.epochs=1",
            "train.steps_per_epoch=1", "eval.n_samples=100", "data.n_points=256"]
    for argv, code in ((["train", *tiny], None), (["compare", "--study", "smoke"], 2),
                       (["export", "--study", "smoke"], 2),
                       (["sweep", str(SMOKE), "--trials", "3", "--no-progress"], None)):
        as_in_a_new_process(monkeypatch)
        rc = main(argv)
        assert rc in ((1, 2) if code is None else (code,)), (argv, rc)
        line = one_error_line(capsys.readouterr().err)
        assert "mlflow.db" in line and ("damaged" in line or "not an SQLite" in line
                                        or "cannot read it" in line), (argv, line)
    assert db.read_bytes() == before


# --- refused before anything is created ----------------------------------------------------------


@pytest.mark.parametrize("storage", ["a_folder", "sqlite:////proc/nope/x.db",
                                     "postgresql+psycopg2://u:pw@127.0.0.1:1/x"])
def test_a_refused_storage_creates_no_mlflow_store(storage: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a_folder").mkdir()
    assert main(["sweep", str(SMOKE), "--storage", storage]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--storage" in line and "pw" not in line
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_a_refused_resume_appends_nothing_to_the_journal(
        smoke_study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edited = tmp_path / "smoke.yaml"
    edited.write_text(SMOKE.read_text().replace("metric: val/fid", "metric: val/kid"))
    journal = (smoke_study / "optuna.journal").read_bytes()
    assert main(["sweep", str(edited), "--trials", "3"]) == 2
    assert "different study file" in one_error_line(capsys.readouterr().err)
    assert (smoke_study / "optuna.journal").read_bytes() == journal


def test_missing_data_is_refused_before_the_study_exists(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = tmp_path / "fm.yaml"
    study.write_text(SMOKE.read_text().replace(
        "data: {name: grid25, n_points: 2048}", f"data: {{name: fashion_mnist, root: "
                                                f"{tmp_path / 'nothing'}}}"))
    assert main(["sweep", str(study), "--no-progress"]) == 2
    assert "fashion_mnist: missing" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()


def test_two_settings_that_clash_are_refused_before_the_study_exists(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each value is valid beside the base config; together they are not."""
    study = tmp_path / "clash.yaml"
    study.write_text(SMOKE.read_text() + "  train.epochs: {type: int, low: 2, high: 6}\n"
                                         "  eval.every_n_epochs: {type: int, low: 1, high: 3}\n")
    load_study_file(study)  # a reader of the file parses it at once
    assert main(["sweep", str(study), "--no-progress"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "train.epochs=2 with eval.every_n_epochs=3" in line, line
    assert not (tmp_path / "runs").exists()


def test_every_shipped_study_passes_the_pair_check() -> None:
    from pipeline.study.space import check_pairs

    for path in sorted((PROJECT_ROOT / "studies").glob("*.yaml")):
        defn = load_study_file(path)
        check_pairs(defn.space, defn.base.to_dict())


@pytest.mark.slow
def test_a_worker_process_that_hits_a_fault_reports_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spawned workers: the fault travels to the sweep command, printed once (not a
    traceback per worker)."""
    code = (
        "import errno, sys\n"
        "from pipeline.run_log import RunLogger\n"
        "def full(*a, **k):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device', 'x.png')\n"
        "RunLogger.log_image = full\n"
        "from pipeline.__main__ import main\n"
        f"sys.exit(main(['sweep', {str(SMOKE)!r}, '--workers', '2', '--no-progress']))\n")
    # the patch must reach the spawned workers too: they import it from a startup file
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(code.split("from pipeline.__main__")[0])
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{PROJECT_ROOT}"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    line = one_error_line(done.stderr)
    assert "no space left on the device (x.png)" in line, line
