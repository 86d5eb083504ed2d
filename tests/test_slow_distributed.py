"""The distributed setup: PostgreSQL as Optuna storage, a real MLflow tracking server (PostgreSQL
backend, proxied artifacts), and two "machines" (two `pipeline sweep` commands started at the
same moment, one worker each) sharing a new study, all on 127.0.0.1, driven through the CLI."""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from slow_helpers import (
    PYTHON,
    SMOKE,
    Service,
    child_env,
    free_port,
    in_ci,
    no_telemetry,
    port_open,
    ran_concurrently,
    run_commands,
    wait_until,
)

from pipeline.study.store import PARENT_ATTR, RUN_ATTR, finished_trials

PG_PORT = 5432
ROLE = "fcgan"  # password = role name
TRIALS = 4
MACHINES = 2  # sweep commands started together, one worker each


class Postgres:
    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{ROLE}:{ROLE}@127.0.0.1:{PG_PORT}/{database}"

    def psql(self, sql: str) -> None:
        """Run SQL as the postgres superuser over the local socket (peer authentication)."""
        cmd = shlex.join(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        out = subprocess.run(["su", "postgres", "-c", cmd], cwd="/", capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, f"psql {sql!r} failed: {out.stderr}"


def postgres_version() -> str | None:
    """The newest installed PostgreSQL major version (Debian's /usr/lib/postgresql/<v>/)."""
    root = Path("/usr/lib/postgresql")
    versions = [p.name for p in root.glob("*") if (p / "bin" / "postgres").exists()]
    return max(versions, key=float) if versions else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """PostgreSQL on 127.0.0.1:5432 with a password role fcgan: found running, else started
    (and then stopped again at the end)."""
    version = postgres_version()
    if version is None:
        message = "PostgreSQL is not installed (apt-get install postgresql)"
        if in_ci():
            pytest.fail(f"{message}; CI=true, so this is an error, not a skip")
        pytest.skip(message)
    if os.geteuid() != 0:
        pytest.fail("the PostgreSQL fixture manages the server as root (su postgres); "
                    "run the slow suite as root")
    started = False
    if not port_open(PG_PORT):
        out = subprocess.run(["pg_ctlcluster", version, "main", "start"], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, f"pg_ctlcluster {version} main start: {out.stderr}"
        started = True
        wait_until(lambda: port_open(PG_PORT), 60, f"PostgreSQL {version} on port {PG_PORT}")
    pg = Postgres()
    pg.psql(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
            f"CREATE ROLE {ROLE} LOGIN; END IF; END $$;")
    pg.psql(f"ALTER ROLE {ROLE} LOGIN PASSWORD '{ROLE}'")
    yield pg
    if started:
        subprocess.run(["pg_ctlcluster", version, "main", "stop"], timeout=120, check=False)


@pytest.fixture
def databases(postgres: Postgres) -> Iterator[tuple[str, str]]:
    """Fresh databases fcgan_optuna_<random> and fcgan_mlflow_<random>, dropped afterwards."""
    suffix = uuid.uuid4().hex[:10]
    names = (f"fcgan_optuna_{suffix}", f"fcgan_mlflow_{suffix}")
    created = []
    try:
        for name in names:
            postgres.psql(f"CREATE DATABASE {name} OWNER {ROLE}")
            created.append(name)
        yield postgres.url(names[0]), postgres.url(names[1])
    finally:
        for name in created:  # FORCE: a server that did not stop cleanly may hold connections
            postgres.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def mlflow_server(databases: tuple[str, str], tmp_path: Path) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1:<free port>, PostgreSQL backend, proxied artifacts."""
    port = free_port()
    artifacts = tmp_path / "server-artifacts"
    artifacts.mkdir()
    server = Service("mlflow server", [
        PYTHON, "-m", "mlflow", "server", "--backend-store-uri", databases[1],
        "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ], log=tmp_path / "mlflow-server.log", cwd=tmp_path, env=child_env())
    try:
        url = f"http://127.0.0.1:{port}"
        server.wait_http(f"{url}/health", timeout=180)  # migrations: ~20 s on 2 cores
        yield url
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_postgres_storage_and_mlflow_server(databases: tuple[str, str], mlflow_server: str,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    no_telemetry(monkeypatch)
    optuna_url = databases[0]
    workdir = tmp_path / "work"
    workdir.mkdir()
    results = run_commands(
        [[PYTHON, "-m", "pipeline", "sweep", str(SMOKE), "--workers", "1", "--trials",
          str(TRIALS), "--storage", optuna_url, "--no-progress"]] * MACHINES,
        cwd=workdir, env=child_env(MLFLOW_TRACKING_URI=mlflow_server), timeout=900,
        logs=[tmp_path / f"sweep-{i}.log" for i in range(MACHINES)])
    for code, output in results:
        assert code == 0, output[-4000:]

    study = optuna.load_study(study_name="smoke", storage=optuna_url)
    trials = study.trials
    done = finished_trials(study)
    # As in test_slow_workers: at least TRIALS, at most MACHINES-1 more (both may start a last
    # trial at once), and every started trial finished.
    assert TRIALS <= len(done) <= TRIALS + MACHINES - 1
    assert len(done) == len(trials), {t.number: t.state.name for t in trials}
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert ran_concurrently(trials)
    # Each machine prints the count when it stops. One may stop while the other still runs the
    # last trials: it does not start more (the budget counts them) and says they are running.
    counts = [(int(m.group(1)), int(m.group(2) or 0)) for _, out in results
              for m in [re.search(r"study smoke: (\d+) finished trials \([^)]*\)(?: \((\d+) "
                                  r"still running in other processes\))? in", out)] if m]
    assert len(counts) == MACHINES, [out[-2000:] for _, out in results]
    assert all(n <= len(done) and n + running >= TRIALS for n, running in counts), counts
    assert max(n for n, _ in counts) == len(done), counts

    client = MlflowClient(tracking_uri=mlflow_server)
    parent_id = study.user_attrs[PARENT_ATTR]
    # Both machines found the one parent run: whichever created the study made it, the other
    # waited for it (two parents would split the study in the MLflow UI).
    assert all(f"MLflow parent run {parent_id}" in out for _, out in results)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    # The storage URL is recorded without its password.
    assert parent.data.tags["optuna_storage"] == optuna_url.replace(f":{ROLE}@", ":***@")

    runs = client.search_runs([parent.info.experiment_id], max_results=1000)
    assert [r.info.run_id for r in runs
            if r.data.tags.get("mlflow.runName", "").endswith("study smoke")] == [parent_id]
    children = {r.info.run_id: r for r in runs if r.info.run_id != parent_id}
    assert len(children) == len(trials)
    assert {t.user_attrs[RUN_ATTR] for t in trials} == set(children)
    for trial in trials:
        run = children[trial.user_attrs[RUN_ATTR]]
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["optuna_trial"] == str(trial.number)
        for key, value in trial.params.items():
            assert run.data.params[f"sampled.{key}"] == str(value)
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert run.info.status == "FINISHED"
            assert run.data.tags["optuna_state"] == "PRUNED"
        else:
            assert run.info.status == "FINISHED"
            assert run.data.tags["optuna_state"] == "COMPLETE"
            assert run.data.metrics["objective"] == pytest.approx(trial.value)
            # Artifacts went through the server's proxy into --artifacts-destination.
            assert "samples/final.png" in {a.path for a in client.list_artifacts(
                run.info.run_id, "samples")}

    # The parent run: trials.csv (one row per trial) and Optuna's plots.
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"trials.csv", "study.yaml", "plots"} <= artifacts, artifacts
    plots = {a.path for a in client.list_artifacts(parent_id, "plots")}
    assert "plots/optimization_history.png" in plots, plots
    local = client.download_artifacts(parent_id, "trials.csv", str(tmp_path))
    with open(local, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["number"]) for r in rows) == [t.number for t in trials]
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    best = study.best_trial
    assert parent.data.tags["best_run_id"] == best.user_attrs[RUN_ATTR]
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
