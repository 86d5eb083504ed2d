"""Where a command writes, checked before any work: every bad --out, --figure, experiment name
or taken --port is one line on stderr and exit code 2, nothing is written, and no study is read,
no model registered and no seed trained (no study exists here: a check that came after reading
one would answer "no study storage" instead)."""

from __future__ import annotations

import shutil
import socket
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from slow_helpers import SMOKE

import pipeline.reeval  # noqa: F401  # imported here: no test's timing counts torch's import
from pipeline.__main__ import main
from pipeline.cli import servers as cli
from pipeline.config import MAX_EXPERIMENT_NAME, ConfigError
from pipeline.config_load import load_config
from pipeline.exported import write_samples
from pipeline.outputs import NAME_MAX, check_output_file, check_output_folder, check_port_free
from pipeline.study.spec import MAX_STUDY_NAME

needs_proc = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc")
TOO_SLOW = 1.0  # seconds: a check, not a training


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def place(tmp_path: Path) -> Iterator[Path]:
    """A folder holding a file, a folder and a link (each a wrong place to write) whose listing
    must be the same after the command as before."""
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "outdir").mkdir()
    (tmp_path / "victim.json").write_text("precious")
    (tmp_path / "link.json").symlink_to(tmp_path / "victim.json")
    before = listing(tmp_path)
    yield tmp_path
    assert listing(tmp_path) == before
    assert (tmp_path / "victim.json").read_text() == "precious"


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    """Run the command: exit code 2, one line starting ``error: ``, holding every fragment,
    in well under a second."""
    start = time.perf_counter()
    assert main(argv) == 2
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert seconds < TOO_SLOW, f"{seconds:.2f} s: more than a check ran"
    return err


UNDER_A_FILE = ("notes.txt/sub/x", "notes.txt is a file, so the folder cannot be made")


# --- export --out -----------------------------------------------------------------------------


@pytest.mark.parametrize(("out", "fragment"), [
    pytest.param("/proc/nope/x", "cannot write in /proc", marks=needs_proc),
    UNDER_A_FILE,
    ("notes.txt", "an existing file, not a folder"),
    ("link.json", "a symbolic link"),
])
def test_export_out_is_checked_before_the_study_is_read(
        out: str, fragment: str, place: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = out if out.startswith("/") else str(place / out)
    refused(["export", "--study", "smoke", "--out", target], capsys, f"--out {target}: ",
            fragment)


# --- sample --out -----------------------------------------------------------------------------


@pytest.mark.parametrize(("out", "fragment"), [
    pytest.param("/proc/nope/x.npy", "cannot write in /proc", marks=needs_proc),
    (UNDER_A_FILE[0] + ".npy", UNDER_A_FILE[1]),
    ("folder.png", "a folder; give a file path ending .npy, .csv, .png, .tsv or .parquet"),
    ("link.json.csv", "a symbolic link"),
    ("x.txt", "samples go to a file by its suffix; give a path ending .npy"),
    ("a" * (NAME_MAX + 1) + ".npy", f"a file name holds at most {NAME_MAX}"),
])
def test_sample_out_is_checked_before_the_export_is_read(
        out: str, fragment: str, place: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if out.startswith("link"):  # a link to an existing file: np.save would write through it
        (place / out).symlink_to(place / "victim.json")
    target = out if out.startswith("/") else str(place / out)
    try:
        refused(["sample", str(place / "no-export"), "-n", "10", "--out", target], capsys,
                f"--out {target}: ", fragment)
    finally:
        if out.startswith("link"):
            (place / out).unlink()


def test_samples_keep_the_suffix_as_given(tmp_path: Path) -> None:
    """np.save(path) adds .npy to a name that ends .NPY; the file written is the one named."""
    samples = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = write_samples(samples, {}, tmp_path / "new" / "s.NPY")
    assert out == tmp_path / "new" / "s.NPY" and listing(tmp_path) == ["new", "new/s.NPY"]
    np.testing.assert_array_equal(np.load(out), samples)
    with pytest.raises(ConfigError, match=r"array, not a table's rows; give a path ending \.npy"):
        write_samples(samples, {}, tmp_path / "rows.parquet")


# --- reeval --out -----------------------------------------------------------------------------


@pytest.mark.parametrize(("out", "fragment"), [
    ("folder.json", "a folder; give a file path ending .json"),
    ("out.txt", "the results are JSON; give a path ending .json"),
    ("link.json", "a symbolic link"),
    (UNDER_A_FILE[0] + ".json", UNDER_A_FILE[1]),
    pytest.param("/proc/nope/x.json", "cannot write in /proc", marks=needs_proc),
    ("outdir", "a folder; give a file path ending .json"),
    ("folder.x", "give a path ending .json"),
])
def test_reeval_out_is_checked_before_anything_trains(
        out: str, fragment: str, place: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = out if out.startswith("/") else str(place / out)
    refused(["reeval", "--study", "smoke", "--seeds", "1", "--out", target], capsys,
            f"--out {target}", fragment)
    refused(["reeval", "--config", str(place / "no.yaml"), "--out", target], capsys, fragment)


def test_reeval_picture_beside_the_results_is_checked_too(
        place: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = place / "folder.json"
    shutil.rmtree(target)  # the results file is new; its picture folder.png is a folder
    try:
        refused(["reeval", "--study", "smoke", "--out", str(target)], capsys,
                f"--out {target}: its picture {place / 'folder.png'}: a folder")
    finally:
        target.mkdir()


def test_reeval_default_results_folder_is_checked(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "results").write_text("not a folder")
    refused(["reeval", "--study", "smoke"], capsys,
            "reeval's results folder results: an existing file, not a folder")
    assert listing(tmp_path) == ["results"]


# --- compare --figure (the same checker) ------------------------------------------------------


@pytest.mark.parametrize(("figure", "fragment"), [
    pytest.param("/proc/nope/x.png", "cannot write in /proc", marks=needs_proc),
    (UNDER_A_FILE[0] + ".png", UNDER_A_FILE[1]),
    ("link.json.png", None),
])
def test_compare_figure_uses_the_same_checks(figure: str, fragment: str | None, place: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    target = figure if figure.startswith("/") else str(place / figure)
    if fragment is None:  # a link to an existing file: savefig would have written through it
        Path(target).symlink_to(place / "victim.json")
        fragment = "a symbolic link"
    try:
        refused(["compare", "--study", "nosuch", "--figure", target], capsys,
                f"--figure {target}: ", fragment)
    finally:
        if Path(target).is_symlink():
            Path(target).unlink()


# --- the checker itself -----------------------------------------------------------------------


def test_good_places_pass_and_the_check_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text("{}")
    assert check_output_file(tmp_path / "old.json", (".json",)) == tmp_path / "old.json"
    assert check_output_file("new/deeper/x.PNG", (".png",)) == Path("new/deeper/x.PNG")
    assert check_output_folder(tmp_path / "exports" / "new") == tmp_path / "exports" / "new"
    assert check_output_folder(tmp_path) == tmp_path
    assert listing(tmp_path) == ["old.json"]  # no folder made, no probe file left behind
    assert (tmp_path / "old.json").read_text() == "{}"


# --- tracking.experiment and study names: MLflow's limit ---------------------------------------


def test_an_experiment_name_longer_than_mlflow_takes_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["train", "tracking.experiment=" + "x" * 10_000], capsys,
                  "tracking.experiment: got a name of 10,000 characters, expected at most 500")
    assert len(err) < 200  # the name is not echoed back
    assert listing(tmp_path) == []  # no runs/, no MLflow store
    assert load_config(None, ["tracking.experiment=" + "x" * MAX_EXPERIMENT_NAME]) \
        .tracking.experiment == "x" * MAX_EXPERIMENT_NAME


def test_a_study_named_by_a_long_file_name_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert MAX_STUDY_NAME <= MAX_EXPERIMENT_NAME  # a study's name is its experiment's name
    study = tmp_path / ("s" * (MAX_STUDY_NAME + 1) + ".yaml")
    shutil.copy(SMOKE, study)
    refused(["sweep", str(study)], capsys, "(its file name)", f"up to {MAX_STUDY_NAME}")
    assert listing(tmp_path) == [study.name]


# --- ui and dashboard --port ------------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def never(*args: object, **kwargs: object) -> int:
    raise AssertionError("the server was started")


def test_ui_on_a_taken_port_is_one_line(taken_port: int, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "serve", never)
    refused(["ui", "--port", str(taken_port)], capsys,
            f"--port {taken_port}: port {taken_port} on 127.0.0.1 is in use",
            "--port N (make ui PORT=N)")
    assert listing(tmp_path) == []  # no store opened or made


def test_dashboard_on_a_taken_port_is_one_line(taken_port: int, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "optuna_dashboard",
                        types.SimpleNamespace(run_server=never))
    refused(["dashboard", "--port", str(taken_port)], capsys,
            f"--port {taken_port}: port {taken_port} on 127.0.0.1 is in use",
            "(make dashboard PORT=N)")
    assert listing(tmp_path) == []


def test_a_free_port_passes_and_is_left_free() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_port_free(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", port))  # the check let it go again
