"""Usability: make targets that print only data, PORT/STORAGE/STORE, the GPU install path, ui on
another store, relocating a copied store, evaluate's file formats and sample-size warning, and
KID's stated scale."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fit_helper import fit

from pipeline.__main__ import main
from pipeline.config import PROJECT_ROOT
from pipeline.errors import ConfigError
from pipeline.readers.mixtures import ring8

# --- make: the recipes run against a stand-in python in a venv whose stamps are up to date ---

MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="GNU make is not installed")
DEFAULT_TORCH = "torch==2.13.0"
MAKE_VARS = ("TORCH_SPEC", "TORCH_INDEX", "PORT", "DASHBOARD_PORT", "STORAGE", "STORE", "STUDY",
             "DATA", "FORMAT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VENV", "PYTHON")


def fake_venv(folder: Path, torch_line: str = DEFAULT_TORCH) -> Path:
    """A venv whose python prints its arguments as JSON on stdout (and a line on stderr), with
    the stamps of an install of ``torch_line`` newer than pyproject.toml."""
    (folder / "bin").mkdir(parents=True)
    python = folder / "bin" / "python"
    python.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      "print('a message', file=sys.stderr)\nprint(json.dumps(sys.argv[1:]))\n")
    python.chmod(0o755)
    (folder / ".torch").write_text(torch_line + "\n")
    base = (PROJECT_ROOT / "pyproject.toml").stat().st_mtime
    os.utime(folder / ".torch", (base - 10, base - 10))
    (folder / ".installed").touch()
    os.utime(folder / ".installed", (base + 1, base + 1))
    return folder


def make(*args: str, venv: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in MAKE_VARS}
    assert MAKE is not None
    return subprocess.run([MAKE, "--no-print-directory", "-C", str(PROJECT_ROOT),
                           f"VENV={venv}", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def make_args(*args: str, venv: Path) -> list[str]:
    """The arguments the target gave `python`: stdout must be that one JSON line and nothing
    else (no echoed recipe)."""
    done = make(*args, venv=venv)
    assert done.returncode == 0, done.stderr
    assert "a message" in done.stderr  # stderr stays stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    return list(json.loads(lines[0]))


@needs_make
@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_make_compare_prints_only_the_data(tmp_path: Path, fmt: str) -> None:
    got = make_args("compare", f"FORMAT={fmt}", "STUDY=ring8", "TOP=3", venv=fake_venv(tmp_path))
    assert got == ["-m", "pipeline", "compare", "--study", "ring8", "--top", "3", "--format", fmt]


@needs_make
def test_make_leaves_the_commands_defaults_to_the_commands(tmp_path: Path) -> None:
    """One default per setting: a target passes --top, --format or --seeds only when told."""
    venv = fake_venv(tmp_path)
    assert make_args("compare", venv=venv) == ["-m", "pipeline", "compare", "--study", "grid25"]
    reeval = make_args("reeval", venv=venv)
    assert "--seeds" not in reeval
    reeval = make_args("reeval", "SEEDS=3", venv=venv)
    assert reeval[reeval.index("--seeds") + 1] == "3"


@needs_make
@pytest.mark.parametrize("target, command", [("export", "export"), ("reeval", "reeval"),
                                             ("train", "train"), ("sweep", "sweep")])
def test_make_data_targets_do_not_echo(tmp_path: Path, target: str, command: str) -> None:
    assert make_args(target, venv=fake_venv(tmp_path))[:3] == ["-m", "pipeline", command]


@needs_make
def test_make_storage_reaches_every_command_that_takes_it(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    url = "sqlite:///studies.db?timeout=5&x=1"  # & and ? must survive the shell
    for target in ("compare", "export", "reeval", "sweep", "dashboard"):
        got = make_args(target, f"STORAGE={url}", venv=venv)
        assert got[got.index("--storage") + 1] == url, target
    assert "--storage" not in make_args("compare", venv=venv)


@needs_make
def test_make_port_for_ui_and_dashboard(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)

    def port(*args: str) -> str:
        got = make_args(*args, venv=venv)
        return got[got.index("--port") + 1]

    assert (port("ui"), port("dashboard")) == ("5000", "8080")
    assert (port("ui", "PORT=5123"), port("dashboard", "PORT=8123")) == ("5123", "8123")
    assert port("dashboard", "DASHBOARD_PORT=8124") == "8124"  # the old name still works
    got = make_args("ui", "STORE=my runs", venv=venv)
    assert got[got.index("--store") + 1] == "my runs"


def pip_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if " -m pip " in line]


@needs_make
def test_make_install_default_is_the_cpu_torch_first(tmp_path: Path) -> None:
    lines = pip_lines(make("-n", "install", venv=tmp_path / "new"))
    torch_line = next(i for i, line in enumerate(lines) if "torch==" in line)
    assert lines[torch_line].endswith(f"pip install -q '{DEFAULT_TORCH}' >&2")
    assert torch_line < next(i for i, line in enumerate(lines) if '-e ".[dev]"' in line)
    assert not any("--index-url" in line or "uninstall" in line for line in lines)


@needs_make
def test_make_install_gpu_index(tmp_path: Path) -> None:
    index = "https://download.pytorch.org/whl/cu124"
    lines = pip_lines(make("-n", "install", f"TORCH_INDEX={index}", "TORCH_SPEC=torch==2.5.1",
                           venv=tmp_path / "new"))
    assert any(line.endswith(f"pip install -q --index-url '{index}' 'torch==2.5.1' >&2")
               for line in lines), lines
    # only torch comes from that index
    assert [line for line in lines if "--index-url" in line] == [
        line for line in lines if "torch==2.5.1" in line]


@needs_make
def test_make_install_reinstalls_torch_only_when_its_spec_changes(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    assert pip_lines(make("-n", "install", venv=venv)) == []  # same spec: nothing to do
    changed = pip_lines(make("-n", "install", "TORCH_SPEC=torch==2.5.1", venv=venv))
    assert any("pip uninstall -q -y torch" in line for line in changed)
    assert any(line.endswith("'torch==2.5.1' >&2") for line in changed)
    assert any('-e ".[dev]"' in line for line in changed)  # the project after it
    index = pip_lines(make("-n", "install", "TORCH_INDEX=https://example.org/whl", venv=venv))
    assert any("--index-url 'https://example.org/whl'" in line for line in index)


@needs_make
def test_make_keeps_a_gpu_torch_when_no_spec_is_given(tmp_path: Path) -> None:
    gpu = "torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"
    venv = fake_venv(tmp_path, torch_line=gpu)
    assert pip_lines(make("-n", "install", venv=venv)) == []
    assert pip_lines(make("-n", "test", venv=venv)) == []
    back = pip_lines(make("-n", "install", f"TORCH_SPEC={DEFAULT_TORCH}", venv=venv))
    assert any(line.endswith(f"pip install -q '{DEFAULT_TORCH}' >&2") for line in back)


# --- ui --store ------------------------------------------------------------------------------


def tiny_store(folder: Path) -> tuple[str, str]:
    """A store in ``folder`` (mlflow.db and artifacts/) holding one run with one text
    artifact, made the pipeline's way: (the store's URI, the run's id)."""
    from pipeline.run_log import start_run
    from pipeline.tracking import get_client

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = get_client(uri)
    run_id = start_run(client, "tiny")
    client.log_text(run_id, "known text", "notes/a.txt")
    return uri, run_id


def test_store_paths_and_uris(tmp_path: Path) -> None:
    from pipeline.relocate import store_uri

    tiny_store(tmp_path / "runs")
    want = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}?timeout=60"
    assert store_uri(str(tmp_path / "runs")) == want
    assert store_uri(str(tmp_path / "runs" / "mlflow.db")) == want
    assert store_uri("runs") == want  # relative to where the user stands (tmp_path here)
    assert store_uri("postgresql://u@h/db") == "postgresql://u@h/db"
    before = set(tmp_path.rglob("*"))
    for missing in ("gone", "gone/mlflow.db", f"sqlite:///{tmp_path}/gone.db"):
        with pytest.raises(ConfigError, match=r"does not exist|no such file"):
            store_uri(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no mlflow\.db in this folder"):
        store_uri(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="--store"):
        store_uri("ftp://host/x")
    assert set(tmp_path.rglob("*")) == before | {tmp_path / "empty"}  # nothing created


def test_ui_store_opens_the_chosen_store(tmp_path: Path, monkeypatch, capsys) -> None:
    import pipeline.cli.servers as cli

    tiny_store(tmp_path / "elsewhere")
    served: list[tuple[list[str], dict[str, str]]] = []

    def serve(cmd: list[str], env: dict[str, str]) -> int:
        served.append((cmd, env))
        return 0

    monkeypatch.setattr(cli, "serve", serve)
    assert main(["ui", "--store", str(tmp_path / "elsewhere"), "--port", "5123"]) == 0
    cmd, env = served[0]
    assert env["MLFLOW_BACKEND_STORE_URI"] == (
        f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}?timeout=60")
    assert env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] == (tmp_path / "elsewhere" / "artifacts").as_uri()
    assert cmd[cmd.index("--port") + 1] == "5123"
    assert "warning" not in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # the default store was not touched


def test_ui_store_errors_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    import pipeline.cli.servers as cli

    monkeypatch.setattr(cli, "serve", lambda cmd, env: pytest.fail("the server started"))
    (tmp_path / "notmlflow.db").write_bytes(b"")
    for store in ("missing", "notmlflow.db", "http://127.0.0.1:1"):
        assert main(["ui", "--store", store]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notmlflow.db"]


def test_ui_warns_about_a_copied_store(tmp_path: Path, monkeypatch, capsys) -> None:
    import pipeline.cli.servers as cli

    tiny_store(tmp_path / "runs")
    shutil.copytree(tmp_path / "runs", tmp_path / "copy")
    monkeypatch.setattr(cli, "serve", lambda cmd, env: 0)
    assert main(["ui", "--store", str(tmp_path / "copy")]) == 0
    err = capsys.readouterr().err
    assert f"under {tmp_path / 'runs' / 'artifacts'}" in err
    assert f"relocate --store {tmp_path / 'copy'} --apply" in err
    assert main(["ui", "--store", str(tmp_path / "runs")]) == 0  # the original: no warning
    assert "warning" not in capsys.readouterr().err
    (tmp_path / "moved project").mkdir()
    shutil.move(tmp_path / "copy", tmp_path / "moved project" / "runs")
    monkeypatch.chdir(tmp_path / "moved project")  # the default store, runs/, moved here
    assert main(["ui"]) == 0
    assert "relocate --store" in capsys.readouterr().err


# --- relocate --------------------------------------------------------------------------------


def test_rewrite_known_answers() -> None:
    from pipeline.relocate import rewrite

    old, new = Path("/old/runs/artifacts"), Path("/new place/runs/artifacts")
    assert rewrite("file:///old/runs/artifacts/r1/artifacts", old, new) == (
        "file:///new%20place/runs/artifacts/r1/artifacts")
    assert rewrite("/old/runs/artifacts/r1", old, new) == "/new place/runs/artifacts/r1"
    assert rewrite("file:///old/runs/artifacts", old, new) == (
        "file:///new%20place/runs/artifacts")
    for untouched in ("file:///old/runs/artifacts2/r1", "/old/mlruns/0", "runs:/abc/generator",
                      "models:/m-1", "s3://old/runs/artifacts/r1"):
        assert rewrite(untouched, old, new) is None, untouched


def test_relocate_refuses_what_it_cannot_do(tmp_path: Path, capsys) -> None:
    assert main(["relocate", "--store", str(tmp_path / "nothere")]) == 2
    assert main(["relocate", "--store", "postgresql://u@h/db"]) == 2
    assert "SQLite" in capsys.readouterr().err
    tiny_store(tmp_path / "runs")
    (tmp_path / "moved").mkdir()
    shutil.copy(tmp_path / "runs" / "mlflow.db", tmp_path / "moved")  # the db without artifacts/
    assert main(["relocate", "--store", str(tmp_path / "moved"), "--apply"]) == 2
    assert "no artifacts/ folder" in capsys.readouterr().err


def test_relocate_asks_which_of_several_roots(tmp_path: Path, capsys) -> None:
    tiny_store(tmp_path / "runs")
    with sqlite3.connect(tmp_path / "runs" / "mlflow.db") as conn:
        conn.execute("INSERT INTO experiments (name, artifact_location, lifecycle_stage) "
                     "VALUES ('other', 'file:///elsewhere/artifacts', 'active')")
    shutil.copytree(tmp_path / "runs", tmp_path / "copy")
    assert main(["relocate", "--store", str(tmp_path / "copy")]) == 2
    assert "--from" in capsys.readouterr().err
    assert main(["relocate", "--store", str(tmp_path / "copy"), "--from",
                 str(tmp_path / "runs" / "artifacts")]) == 0
    assert "runs.artifact_uri: 1" in capsys.readouterr().out


def test_relocated_copy_reads_its_own_artifacts(tmp_path: Path, tiny_config, capsys) -> None:
    """A trained run, a registered version and a logged model in runs/; the folder copied, the
    original moved away: the copy reads nothing until relocated, then everything."""
    import mlflow
    from mlflow.tracking import MlflowClient

    original = tmp_path / "runs"
    result = fit(tiny_config(f"tracking.tracking_uri=sqlite:///{original / 'mlflow.db'}"))
    client = MlflowClient(f"sqlite:///{original / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    client.log_text(run.info.run_id, "known text", "notes/a.txt")
    client.create_registered_model("gen")
    version = client.create_model_version("gen", f"{run.info.artifact_uri}/notes",
                                          run_id=run.info.run_id)
    model = client.create_logged_model(experiment_id=run.info.experiment_id, name="g")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.txt").write_text("weights")
    client.log_model_artifacts(model.model_id, str(tmp_path / "weights"))

    copy = tmp_path / "copy of runs"
    shutil.copytree(original, copy)
    original.rename(tmp_path / "gone")
    db = copy / "mlflow.db"
    out = tmp_path / "out"
    on_copy = MlflowClient(f"sqlite:///{db}")
    with pytest.raises(Exception):  # noqa: B017 - whatever MLflow raises for a missing folder
        on_copy.download_artifacts(run.info.run_id, "notes/a.txt", str(out))

    before = db.read_bytes()
    assert main(["relocate", "--store", str(copy)]) == 0
    dry = capsys.readouterr().out
    assert db.read_bytes() == before  # a dry run writes nothing
    assert "dry run" in dry and "runs.artifact_uri: 1" in dry
    assert main(["relocate", "--store", str(copy), "--apply"]) == 0
    applied = capsys.readouterr().out
    for where in ("experiments.artifact_location: 1", "runs.artifact_uri: 1",
                  "model_versions.source: 1", "model_versions.storage_location: 1",
                  # the one made here, and the trained run's own generator
                  "logged_models.artifact_location: 2"):
        assert where in applied, applied

    on_copy = MlflowClient(f"sqlite:///{db}")
    got = Path(on_copy.download_artifacts(run.info.run_id, "", str(out)))  # every file
    assert (got / "notes" / "a.txt").read_text() == "known text"
    assert len([f for f in got.rglob("*") if f.is_file()]) > 1  # training's files too
    new_root = (copy / "artifacts").as_uri()
    assert str(on_copy.get_model_version("gen", version.version).source).startswith(new_root)
    moved_model = on_copy.get_logged_model(model.model_id)
    assert moved_model.artifact_location.startswith(new_root)
    weights = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{moved_model.artifact_location}/w.txt", dst_path=str(tmp_path / "w"))
    assert Path(weights).read_text() == "weights"

    assert main(["relocate", "--store", str(copy)]) == 0
    assert "nothing to relocate" in capsys.readouterr().out  # idempotent


# --- evaluate ----------------------------------------------------------------------------------


def evaluate_json(capsys, *args: str) -> dict[str, float]:
    assert main(["evaluate", *args]) == 0, capsys.readouterr().err
    return dict(json.loads(capsys.readouterr().out))


def test_evaluate_reads_the_csv_sample_writes(tmp_path: Path, capsys) -> None:
    from pipeline.exported import write_samples

    samples = ring8(n=2500, seed=5).train.numpy()
    write_samples(samples, {}, tmp_path / "s.csv")
    write_samples(samples, {}, tmp_path / "s.npy")
    metrics = ["--metrics", "modes_covered,high_quality,fid"]
    from_csv = evaluate_json(capsys, "--data", "ring8", "--samples", str(tmp_path / "s.csv"),
                             *metrics)
    from_npy = evaluate_json(capsys, "--data", "ring8", "--samples", str(tmp_path / "s.npy"),
                             *metrics)
    assert from_csv["modes_covered"] == from_npy["modes_covered"] == 8
    assert from_csv["high_quality"] == from_npy["high_quality"]
    assert from_csv["fid"] == pytest.approx(from_npy["fid"], abs=1e-6)  # 7 significant digits
    header = tmp_path / "h.csv"
    header.write_text("x,y\n" + (tmp_path / "s.csv").read_text())
    assert evaluate_json(capsys, "--data", "ring8", "--samples", str(header),
                         "--metrics", "modes_covered") == {"modes_covered": 8.0}


def test_evaluate_other_files_are_one_line_errors(tmp_path: Path, capsys) -> None:
    (tmp_path / "s.txt").write_text("1,2\n")
    (tmp_path / "words.csv").write_text("a,b\nc,d\ne,f\n")
    (tmp_path / "s.parquet").write_bytes(b"PAR1")
    cases = {"s.txt": "expected a .npy or .csv file", "words.csv": "comma-separated numbers",
             "missing.npy": "no such file", "s.parquet": "ring8 is not a table"}
    for name, message in cases.items():
        assert main(["evaluate", "--data", "ring8", "--samples", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_evaluate_warns_below_the_validated_sample_size(tmp_path: Path, capsys) -> None:
    from pipeline.evaluate import VALIDATED_SAMPLES

    assert VALIDATED_SAMPLES == 2500  # eval.n_samples' default, PacGAN's protocol
    np.save(tmp_path / "few.npy", ring8(n=300, seed=1).train.numpy())
    np.save(tmp_path / "enough.npy", ring8(n=2500, seed=1).train.numpy())
    args = ["evaluate", "--data", "ring8", "--metrics", "modes_covered", "--samples"]
    assert main([*args, str(tmp_path / "few.npy")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"modes_covered": 8.0}  # it still scores
    warning = captured.err.strip().splitlines()
    assert len(warning) == 1 and "300 samples, fewer than the 2500" in warning[0]
    assert main([*args, str(tmp_path / "enough.npy")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_evaluate_a_tables_rows(tmp_path: Path, capsys) -> None:
    """A table's decoded rows (.csv) score exactly as the same rows encoded (.npy)."""
    import pandas as pd

    from pipeline.data import load_dataset
    from pipeline.evaluate import data_config
    from pipeline.tables.shipped import write_shipped

    real = write_shipped("penguins", str(tmp_path / "penguins.csv"))
    rows = pd.read_csv(real).sample(frac=1.0, random_state=0)  # every category, shuffled
    rows.to_csv(tmp_path / "rows.csv", index=False)
    dataset = load_dataset(data_config("table", path=str(real)))
    assert dataset.table is not None
    np.save(tmp_path / "rows.npy", dataset.table.transformer.transform(rows))
    common = ["--data", "table", "--path", str(real), "--metrics",
              "category_coverage,quality,precision"]
    from_rows = evaluate_json(capsys, *common, "--samples", str(tmp_path / "rows.csv"))
    from_npy = evaluate_json(capsys, *common, "--samples", str(tmp_path / "rows.npy"))
    assert from_rows == pytest.approx(from_npy, abs=1e-6)
    assert from_rows["category_coverage"] == 1.0
    rows.rename(columns={"species": "kind"}).to_csv(tmp_path / "bad.csv", index=False)
    assert main(["evaluate", *common, "--samples", str(tmp_path / "bad.csv")]) == 2
    assert "species" in capsys.readouterr().err


# --- KID's scale ---------------------------------------------------------------------------------


def test_kid_is_raw_and_can_be_negative(tmp_path: Path, capsys) -> None:
    """Real points against real points: the unbiased estimate comes out just below 0 (raw,
    ~-0.001 here, where a x1000 scale would read ~-1); a collapsed generator reads ~2, not
    thousands."""
    values = []
    for seed in range(1, 4):
        np.save(tmp_path / "s.npy", ring8(n=2500, seed=seed).train.numpy())
        values.append(evaluate_json(capsys, "--data", "ring8", "--samples",
                                    str(tmp_path / "s.npy"), "--metrics", "kid")["kid"])
    assert all(abs(v) < 0.01 for v in values), values
    assert min(values) < 0, values
    collapsed = np.tile([[1.0, 0.0]], (2500, 1)).astype(np.float32)
    np.save(tmp_path / "c.npy", collapsed)
    kid = evaluate_json(capsys, "--data", "ring8", "--samples", str(tmp_path / "c.npy"),
                        "--metrics", "kid")["kid"]
    assert 0.01 < kid < 10, kid
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert "not ×1000" in readme and "negative" in readme
