"""The commands that start a server on 127.0.0.1: ui (MLflow) and dashboard (optuna-dashboard),
each stopped with its whole process group."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from pipeline.cli.args import Commands, add_storage, port, positive_int
from pipeline.errors import ConfigError
from pipeline.outputs import check_port_free


def add_ui(commands: Commands) -> None:
    p = commands.add_parser("ui", help="MLflow UI on the project's store, bound to 127.0.0.1")
    p.add_argument("--port", type=port, default=5000, help="port (default 5000)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="server worker processes (default 1)")
    p.add_argument("--store", metavar="URI_OR_PATH",
                   help="the MLflow store: a runs/ folder, an mlflow.db file or a URI (default "
                        "$MLFLOW_TRACKING_URI, else runs/mlflow.db)")
    p.set_defaults(func=cmd_ui)


def cmd_ui(args: argparse.Namespace) -> int:
    check_port_free(args.port, make="ui")  # before the store is opened or the server started
    from pipeline.config_load import mask_secrets
    from pipeline.relocate import moved_warning
    from pipeline.tracking import artifact_location, tracking_uri

    uri = tracking_uri() if args.store is None else ui_store(args.store)
    warning = moved_warning(uri)
    if warning:
        print(warning, file=sys.stderr)
    # The store URI goes in the environment, not on a command line that `ps` shows.
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri}
    artifacts = artifact_location(uri)
    if artifacts:
        env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] = artifacts
    # one worker starts in ~20 s on 2 cores; the default 4 take ~40 s for one user
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1", "--port",
           str(args.port), "--workers", str(args.workers)]
    # MLflow 3 opens in its GenAI mode; this address switches it to training runs
    print(f"MLflow UI on http://127.0.0.1:{args.port}/#/?workflowType=machine_learning "
          f"(store {mask_secrets(uri)})", file=sys.stderr)
    return serve(cmd, env)


def ui_store(text: str) -> str:
    """A store the UI can open (a database or a folder, not a server), checked before the
    server starts: a missing one is one line, and no empty store is created in its place."""
    from pipeline.relocate import store_uri
    from pipeline.tracking import open_store_for_reading

    uri = store_uri(text)
    if uri.startswith(("http://", "https://", "databricks")):
        raise ConfigError(f"--store {text}: a tracking server has its own UI; open it in a "
                          f"browser (the UI here reads a database or a folder)")
    open_store_for_reading(uri)
    return uri


def serve(cmd: list[str], env: dict[str, str]) -> int:
    """Run a server in its own process group until it exits or this process is asked to stop;
    then stop the whole group (the server's own workers included): nothing keeps listening."""
    import subprocess

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=grace)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        print("server stopped", file=sys.stderr)
        return 0


def add_dashboard(commands: Commands) -> None:
    p = commands.add_parser("dashboard", help="optuna-dashboard on the study storage (127.0.0.1)")
    p.add_argument("--port", type=port, default=8080, help="port (default 8080)")
    add_storage(p)
    p.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace) -> int:
    check_port_free(args.port, make="dashboard")  # before the storage is opened
    from optuna_dashboard import run_server

    from pipeline.study.storage import mask_url, open_storage, storage_url

    url = storage_url(args.storage)
    storage = open_storage(url)  # in this process: the URL never reaches a command line
    print(f"optuna-dashboard on http://127.0.0.1:{args.port} (storage {mask_url(url)})",
          file=sys.stderr)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        run_server(storage, host="127.0.0.1", port=args.port)
    except KeyboardInterrupt:
        print("server stopped", file=sys.stderr)
    return 0
