"""Hostile inputs: each test first builds the attack (a checkpoint that runs code, a README given
as --storage, a password in the tracking URI, an --out that is a link, an alias bomb), then
checks that it is refused in one line and that nothing was run, written or changed."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import optuna
import pytest
import torch
from slow_helpers import SMOKE

from pipeline.__main__ import main
from pipeline.checkpoint import (
    CHECKPOINT_DIR,
    EpochCheckpoint,
    check_run_id,
    checkpoint_path,
    resume_config,
)
from pipeline.config import PROJECT_ROOT, Config, ConfigError
from pipeline.config_load import (
    MAX_YAML_BYTES,
    load_config,
    mask_secrets,
    parse_overrides,
    read_yaml,
)
from pipeline.export import check_out_dir, write_replacing
from pipeline.study.spec import load_study_file
from pipeline.study.storage import check_journal, open_storage
from pipeline.study.store import RUN_ATTR, SPEC_ATTR, find_study
from pipeline.tracking import QUICK_HTTP, check_reachable, open_store_for_reading

RUN_ID = "0123456789abcdef0123456789abcdef"
README = PROJECT_ROOT / "README.md"


def one_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def one_line_error(exc: pytest.ExceptionInfo[BaseException], *fragments: str) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- 1. train --resume: ids that are paths, checkpoints that run code --------------------------


class WritesMarker:
    """Unpickled by a full torch.load, this calls Path.write_text(marker, ...): any code could
    run in its place."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.write_text, (self.marker, "code from the checkpoint ran"))


@pytest.mark.parametrize("run_id", ["../x", "/abs/path", "../../" + "a" * 26, "a" * 32 + "/x",
                                    "A" * 32, "0123abcd", "a" * 31 + "\n", ""])
def test_run_ids_that_are_not_run_ids_are_refused(run_id: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "abs" / "path.ckpt"  # what "/abs/path" would aim at, were it joined
    with pytest.raises(ConfigError) as exc:
        checkpoint_path(run_id)
    one_line_error(exc, "not an MLflow run id", "32 lowercase hex digits")
    if run_id:  # (__main__ reads an empty --resume as no --resume)
        assert main(["train", "--resume", run_id]) == 2
        one_line(capsys, "not an MLflow run id")
    assert not target.exists() and not (tmp_path / "runs").exists()
    assert check_run_id(RUN_ID) == RUN_ID


def test_a_checkpoint_that_runs_code_is_refused_unrun(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    live = tmp_path / "live-marker"
    probe = tmp_path / "probe.ckpt"
    torch.save({"fcgan_config": WritesMarker(live)}, probe)
    torch.load(probe, weights_only=False)  # the attack works on a full unpickle ...
    assert live.read_text() == "code from the checkpoint ran"

    marker = tmp_path / "marker"
    path = checkpoint_path(RUN_ID)
    path.parent.mkdir(parents=True)
    torch.save({"fcgan_config": WritesMarker(marker), "state_dict": {}}, path)
    with pytest.raises(ConfigError) as exc:  # ... and not on resume_config's
        resume_config(RUN_ID)
    one_line_error(exc, f"--resume {RUN_ID}: refusing", "could run code")
    assert main(["train", "--resume", RUN_ID]) == 2
    one_line(capsys, "refusing")
    # Lightning's own load, as train.py must call it: trainer.fit(..., weights_only=True)
    import lightning.pytorch as L

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    with pytest.raises(Exception, match="Weights only load failed"):
        trainer.strategy.load_checkpoint(path, weights_only=True)
    assert not marker.exists()


def test_a_checkpoint_linked_from_elsewhere_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.ckpt"
    torch.save({"fcgan_config": Config().to_dict()}, outside)
    path = checkpoint_path(RUN_ID)
    path.parent.mkdir(parents=True)
    path.symlink_to(outside)
    with pytest.raises(ConfigError) as exc:
        resume_config(RUN_ID)
    one_line_error(exc, "a link or not a regular file", str(CHECKPOINT_DIR))


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(2, 1)


def _tiny_fit(extra_state: object | None) -> None:
    import lightning.pytorch as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Tiny()

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            return self.net.w(batch[0]).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

        def on_save_checkpoint(self, checkpoint: dict[str, object]) -> None:
            checkpoint["gan_state"] = {"steps": 3, "rng": torch.get_rng_state(),
                                       **({"extra": extra_state} if extra_state else {})}

    cfg = load_config(None, ["train.epochs=1"])
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[EpochCheckpoint(RUN_ID, cfg)])
    data = torch.utils.data.TensorDataset(torch.randn(4, 2))
    trainer.fit(Module(), train_dataloaders=torch.utils.data.DataLoader(data, batch_size=4))


def test_epoch_checkpoints_load_weights_only_and_refuse_other_state(tmp_path: Path) -> None:
    """A real Lightning checkpoint (optimizer states, loops, callbacks) plus the project's
    state loads with weights_only=True; state that would not is an error at the first epoch,
    not a checkpoint that --resume cannot read after a kill."""
    import numpy as np

    _tiny_fit(None)
    assert resume_config(RUN_ID) == load_config(None, ["train.epochs=1"])
    state = torch.load(checkpoint_path(RUN_ID), weights_only=True)
    assert {"optimizer_states", "loops", "gan_state", "fcgan_config"} <= set(state)
    checkpoint_path(RUN_ID).unlink()
    with pytest.raises(RuntimeError, match=r"it holds numpy\S*scalar.*must be plain"):
        _tiny_fit(np.float64(1.0))
    assert not checkpoint_path(RUN_ID).exists()
    assert list(checkpoint_path(RUN_ID).parent.iterdir()) == []


# --- 2. --storage: files that are not journals, damaged journals, read-only commands ----------


def _journal(path: Path, n_trials: int = 3) -> bytes:
    """A real journal: a study created the way sweep does, with a few finished trials, each
    naming an MLflow run (no MLflow store exists: a command that got that far stops there)."""
    study = optuna.create_study(storage=open_storage(str(path), create=True), study_name="smoke")
    study.set_user_attr(SPEC_ATTR, SMOKE.read_text())

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(RUN_ATTR, RUN_ID)
        return trial.suggest_float("x", 0, 1)

    study.optimize(objective, n_trials=n_trials)
    return path.read_bytes()


@pytest.fixture
def mlflow_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweep asks MLflow first; these tests are about what comes next, the storage (and a
    fresh SQLite store's schema takes seconds to create)."""
    from pipeline.study import sweep

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///never-created.db")
    monkeypatch.setattr(sweep, "check_reachable", lambda uri: None)


@pytest.mark.parametrize("argv", [
    ["compare", "--study", "smoke"], ["export", "--study", "smoke"],
    ["sweep", str(SMOKE)], ["dashboard"],
])
def test_a_file_that_is_not_a_journal_is_refused_and_kept(
        argv: list[str], tmp_path: Path, mlflow_answers: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes.txt"
    shutil.copyfile(README, notes)  # it became 0 bytes (compare, export) or a journal (sweep)
    assert main([*argv, "--storage", str(notes)]) == 2
    one_line(capsys, f"--storage {notes}: not an Optuna journal (line 1 is not a journal record)")
    assert notes.read_bytes() == README.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def _damage(kind: str, data: bytes) -> tuple[bytes, str]:
    lines = data.splitlines(keepends=True)
    if kind == "emptied":
        return b"", "it is empty (0 bytes)"
    if kind == "random bytes":
        return random.Random(0).randbytes(4096), "not an Optuna journal (line 1"
    if kind == "text lines":
        return b"".join([*lines[:2], b"some notes\n", b"more notes\n", *lines[2:]]), (
            f"line 3 of {len(lines) + 2} is not a journal record")
    if kind == "one changed byte":
        third = lines[2].replace(b'"op_code":', b'"op_code";', 1)
        return b"".join([*lines[:2], third, *lines[3:]]), (
            f"line 3 of {len(lines)} is not a journal record")
    if kind == "torn record mid-file":  # what a torn tail became once a record was appended
        return b"".join([*lines[:3], lines[3][:10], *lines[3:]]), (
            f"line 4 of {len(lines)} is not a journal record")
    if kind == "zeros at the end":  # a crash that extended the file with no data
        return data + b"\0" * 512, f"line {len(lines) + 1} of {len(lines) + 1} is not"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["emptied", "random bytes", "text lines", "one changed byte",
                                  "torn record mid-file", "zeros at the end"])
def test_a_damaged_journal_is_refused_never_replaced(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "optuna.journal"
    damaged, fragment = _damage(kind, _journal(path))
    path.write_bytes(damaged)
    for opening in (lambda: open_storage(str(path), create=True),  # sweep
                    lambda: open_storage(str(path)),  # dashboard
                    lambda: find_study("smoke", str(path))):  # compare, export, reeval
        with pytest.raises(ConfigError) as exc:
            opening()
        message = one_line_error(exc, f"--storage {path}", fragment)
        if "not an Optuna journal" not in message:
            assert "damaged journal" in message and f"mv {path} {path}.damaged" in message
        assert path.read_bytes() == damaged
    assert [p.name for p in tmp_path.iterdir()] == ["optuna.journal"]  # no backup, no lock


def test_sweep_on_a_damaged_journal_starts_no_study(tmp_path: Path, mlflow_answers: None,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "optuna.journal"
    damaged, fragment = _damage("one changed byte", _journal(path))
    path.write_bytes(damaged)
    assert main(["sweep", str(SMOKE), "--storage", str(path)]) == 2
    one_line(capsys, "damaged journal", fragment, "run the sweep again to start a new journal")
    assert path.read_bytes() == damaged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.journal"]


def test_a_torn_last_record_is_mended_by_sweep_only_after_a_backup(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A writer killed mid-record: read-only commands leave the file alone (Optuna skips the
    torn line); sweep, which appends, copies it aside and cuts the tail."""
    path = tmp_path / "optuna.journal"
    whole = _journal(path)
    torn = whole + b'{"op_code":6,"worker_id":"w","trial_id":2,"sta'
    path.write_bytes(torn)
    assert len(find_study("smoke", str(path))[0].trials) == 3
    check_journal(path)
    assert path.read_bytes() == torn
    open_storage(str(path), create=True)
    assert path.read_bytes() == whole
    (backup,) = tmp_path.glob("optuna.journal.torn-*")
    assert backup.read_bytes() == torn
    assert "dropped 1 torn record(s)" in caplog.text and backup.name in caplog.text


def test_read_only_commands_create_and_write_no_store(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`: > runs/mlflow.db; compare --study x` gave the empty file MLflow's schema; a missing
    journal or SQLite storage was created empty."""
    for argv in (["compare", "--study", "smoke"], ["export", "--study", "smoke"]):
        assert main(argv) == 2
        one_line(capsys, "no study storage at runs/optuna.journal")
        assert main([*argv, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"]) == 2
        one_line(capsys, "no such database file")
    assert not (tmp_path / "runs" / "optuna.journal").exists()
    assert not (tmp_path / "optuna.db").exists()

    (tmp_path / "optuna.db").touch()  # an empty SQLite file: Optuna would create its tables
    assert main(["compare", "--study", "smoke", "--storage",
                 f"sqlite:///{tmp_path / 'optuna.db'}"]) == 2
    one_line(capsys, "cannot read Optuna's tables there")
    assert (tmp_path / "optuna.db").stat().st_size == 0

    journal = tmp_path / "runs" / "optuna.journal"
    journal.parent.mkdir(exist_ok=True)
    before = _journal(journal)
    store = tmp_path / "runs" / "mlflow.db"
    store.touch()
    for argv in (["compare", "--study", "smoke"], ["export", "--study", "smoke"]):
        assert main(argv) == 2
        one_line(capsys, f"MLflow store {store.resolve()}: ", "is empty (0 bytes)")
        assert store.stat().st_size == 0
    store.write_bytes(b"not a database at all")
    assert main(["compare", "--study", "smoke"]) == 2
    one_line(capsys, "is not an SQLite database")
    assert store.read_bytes() == b"not a database at all"
    import sqlite3

    store.unlink()
    with sqlite3.connect(store) as db:  # someone else's database
        db.execute("CREATE TABLE notes (text)")
    size = store.stat().st_size
    with pytest.raises(ConfigError, match="not an MLflow store"):
        open_store_for_reading(f"sqlite:///{store}")
    assert store.stat().st_size == size
    assert journal.read_bytes() == before


# --- 3. passwords in tracking URIs -----------------------------------------------------------


@pytest.mark.parametrize(("uri", "kept"), [
    ("http://bob:hunter2@127.0.0.1:1", "http://bob:***@127.0.0.1:1"),
    ("https://bob:hun@ter2@mlflow.example:443/x", "https://bob:***@mlflow.example:443/x"),
    ("postgresql+psycopg2://u:hunter2@db:5432/optuna", "postgresql+psycopg2://u:***@db:5432"),
    ("mysql://db/x?user=u&password=hunter2&ssl=1", "?user=u&password=***&ssl=1"),
    ("https://host/api?access_token=hunter2", "https://host/api?access_token=***"),
    ("API request to http://bob:hunter2@h:1/api/2.0/x failed", "to http://bob:***@h:1/api/2.0/x"),
])
def test_every_kind_of_uri_is_masked(uri: str, kept: str) -> None:
    masked = mask_secrets(uri)
    assert "hunter2" not in masked and "ter2" not in masked and kept in masked, masked


def test_a_server_that_is_down_is_one_masked_line_in_seconds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """MLFLOW_TRACKING_URI=http://bob:pw@127.0.0.1:1: train printed a traceback holding the
    password, after minutes of retries; sweep's error line held it too."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:hunter2@127.0.0.1:1")
    tiny = ["data.n_points=512", "train.epochs=1", "train.steps_per_epoch=2",
            "eval.n_samples=100", "train.batch_size=64", "model.g_hidden=[8]",
            "model.d_hidden=[8]", "train.progress_bar=false", "train.accelerator=cpu",
            f"eval.cache_dir={tmp_path / 'cache'}"]
    for argv in (["train", *tiny], ["sweep", str(SMOKE), "--storage", str(tmp_path / "j")]):
        start = time.monotonic()
        assert main(argv) == 2
        err = one_line(capsys, "MLflow at http://bob:***@127.0.0.1:1 does not answer",
                       "Connection refused")
        assert "hunter2" not in err and time.monotonic() - start < 15, err
    assert not (tmp_path / "j").exists()


def test_the_quick_probe_keeps_the_users_http_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    seen: dict[str, str | None] = {}

    def probe(self: MlflowClient, **kwargs: object) -> list[object]:
        seen.update({k: os.environ.get(k) for k in QUICK_HTTP})
        return []

    monkeypatch.setattr(MlflowClient, "search_experiments", probe)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    check_reachable("http://127.0.0.1:2/probe-test")
    assert seen == {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "77"}
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # only while probing
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"


# --- 4. export --out ---------------------------------------------------------------------------


def _exportable_study(tmp_path: Path) -> None:
    """A study whose best trial names an MLflow run; no MLflow store exists, so an export that
    got past the --out checks would stop at the store (nothing registered either way)."""
    journal = tmp_path / "runs" / "optuna.journal"
    journal.parent.mkdir()
    _journal(journal, n_trials=1)


def _folder_with(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for file, text in files.items():
        (folder / file).write_text(text)
    return folder


@pytest.mark.parametrize("case", ["link to a folder", "link to nothing", "foreign folder",
                                  "another run's export", "existing file", "under a file"])
def test_export_out_that_would_overwrite_is_refused_first(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _exportable_study(tmp_path)
    victim = _folder_with(tmp_path, "home", {"config.json": "{\"mine\": 1}", "notes.md": "x"})
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    out = tmp_path / "out"
    fragment = {
        "link to a folder": "a symbolic link",
        "link to nothing": "a symbolic link",
        "foreign folder": "a non-empty folder that is not an export",
        "another run's export": "holds the export of another run",
        "existing file": "an existing file, not a folder",
        "under a file": "is a file, so the folder cannot be made",
    }[case]
    if case == "link to a folder":
        out.symlink_to(victim)
    elif case == "link to nothing":
        out.symlink_to(tmp_path / "nowhere")
    elif case == "foreign folder":
        out = victim
    elif case == "another run's export":
        out = _folder_with(tmp_path, "old", {"config.json": json.dumps({"mlflow_run_id": "f" *
                                                                              32})})
    elif case == "existing file":
        out = victim / "notes.md"
    else:
        out = victim / "notes.md" / "sub"
    assert main(["export", "--study", "smoke", "--out", str(out)]) == 2
    one_line(capsys, f"--out {out}: {fragment}" if case != "under a file" else fragment)
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # nothing registered


def test_export_out_may_be_new_empty_the_same_runs_or_forced(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _exportable_study(tmp_path)
    same = _folder_with(tmp_path, "same", {"config.json": json.dumps({"mlflow_run_id": RUN_ID}),
                                           "extra.txt": "kept"})
    foreign = _folder_with(tmp_path, "foreign", {"notes.md": "x"})
    for argv in (["--out", str(tmp_path / "new" / "folder")], ["--out", str(same)],
                 ["--out", str(foreign), "--force"]):
        assert main(["export", "--study", "smoke", *argv]) == 2  # past the checks: no store
        one_line(capsys, "does not exist (deleted or moved?)")
    check_out_dir(_folder_with(tmp_path, "empty", {}), RUN_ID)


def test_export_files_replace_links_instead_of_following_them(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = _folder_with(tmp_path, "out", {})
    (out / "config.json").symlink_to(victim)
    write_replacing(out / "config.json", lambda p: p.write_text("{}"))
    assert victim.read_text() == "precious"
    assert not (out / "config.json").is_symlink() and (out / "config.json").read_text() == "{}"
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # no temporary left


# --- 5. YAML -----------------------------------------------------------------------------------


def test_a_repeated_key_is_refused_not_merged(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epochs: 2\nmodel:\n  latent_dim: 4\ntrain:\n  seed: 3\n")
    with pytest.raises(ConfigError) as exc:  # PyYAML alone: train.epochs silently back to 20
        load_config(config)
    one_line_error(exc, f"{config}: line 5: duplicate key 'train' (first at line 1)")
    study = tmp_path / "s.yaml"
    study.write_text(SMOKE.read_text().replace("search_space:\n", "search_space:\n"
                                               "  train.g_lr: {type: float, low: 0.1, high: 1}\n"))
    with pytest.raises(ConfigError, match=r"s\.yaml: line \d+: duplicate key 'train\.g_lr'"):
        load_study_file(study)
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        parse_overrides(["train.g_betas={a: 1, a: 2}"])


def test_an_alias_bomb_fails_at_once(tmp_path: Path) -> None:
    rows = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    rows += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]"
             for i in range(9)]  # 9^10 strings once expanded
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(rows) + "\n")
    start = time.monotonic()
    with pytest.raises(ConfigError) as exc:
        read_yaml(bomb)
    one_line_error(exc, f"{bomb}: line 1: anchors and aliases (&name, *name) are not allowed")
    with pytest.raises(ConfigError, match="anchors and aliases"):
        parse_overrides(["model.g_hidden=*a"])
    assert time.monotonic() - start < 1


def test_files_that_are_not_small_yaml_text_are_refused_unread(tmp_path: Path) -> None:
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    big = tmp_path / "big.yaml"
    big.write_text("train:\n  epochs: 2\n" + "# padding\n" * (MAX_YAML_BYTES // 10))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"data:\n  name: caf\xe9\n")
    for path, fragment in [(Path("/dev/zero"), "a binary file"), (png, "a binary file"),
                           (big, f"larger than {MAX_YAML_BYTES:,} bytes"),
                           (latin, "not UTF-8 text (byte 17)")]:
        with pytest.raises(ConfigError) as exc:
            load_config(path)
        one_line_error(exc, f"{path}: {fragment}")
    with pytest.raises(ConfigError, match="a binary file, not a YAML study file"):
        load_study_file(png)


def test_values_echoed_in_errors_are_cut(tmp_path: Path) -> None:
    blob = "[" + "1, " * 5000  # a malformed value of 15,000 characters
    with pytest.raises(ConfigError) as exc:
        parse_overrides([f"train.g_betas={blob}"])
    message = one_line_error(exc, "train.g_betas: value '[1, 1, ", "(15,003 characters)")
    assert len(message) < 500
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 100_000)
    with pytest.raises(ConfigError, match="nested more than 50 levels deep"):
        read_yaml(deep)


@pytest.mark.parametrize(("args", "fragment"), [
    (["-n", "100000000000"], "argument -n: expected at most 10,000,000"),
    (["--seed", "1180591620717411303424"], "argument --seed: expected at most"),
    (["--seed", "-1"], "argument --seed: expected a number >= 0"),
])
def test_sample_bounds_are_one_line(args: list[str], fragment: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A size that would ask for 800 GB, or a seed torch cannot take: refused before reading."""
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(tmp_path / "export"), "--out", str(tmp_path / "x.npy"), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize(("figure", "fragment"), [
    ("out.txt", "the figure is a PNG; give a path ending .png"),
    ("folder.png/", "a folder"),
])
def test_compare_figure_path_is_checked_first(figure: str, fragment: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "folder.png").mkdir()
    target = tmp_path / figure
    assert main(["compare", "--study", "nosuch", "--figure", str(target)]) == 2
    assert fragment in capsys.readouterr().err
    assert not (tmp_path / "out.txt").exists() and not (tmp_path / "runs").exists()
