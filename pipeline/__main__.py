"""Search for fully connected GANs that do not collapse, and keep every result in MLflow.

Train one configuration, run an Optuna study of many (with pruning), compare its best trials,
export the winner, and browse everything in the MLflow UI or optuna-dashboard. Every run lands
in MLflow (runs/mlflow.db unless MLFLOW_TRACKING_URI says otherwise), every study in Optuna
storage (runs/optuna.journal unless --storage or OPTUNA_STORAGE says otherwise).
"""

# The docstring above is the --help text. This file holds one job, the command line: per command
# an add_* function (its parser) and a cmd_* function (which imports the module doing the work
# only when run, so --help and a bad option answer at once); over 400 lines for 12 commands.

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from pipeline.config import ConfigError
from pipeline.errors import DataError
from pipeline.logs import quiet_libraries
from pipeline.outputs import check_port_free

EXAMPLES = """examples:
  python -m pipeline train data.name=ring8 train.epochs=5
  python -m pipeline sweep studies/grid25.yaml --workers 2
  python -m pipeline compare --study grid25 --top 5 --format markdown
  python -m pipeline export --study grid25
  python -m pipeline export --study grid25_size --pick "smallest cost/g_params with \
      val/pacgan_score >= 0.9"
  python -m pipeline reeval --study grid25 --seeds 10
  python -m pipeline ui
"""


class Parser(argparse.ArgumentParser):
    """A bad option is one line on stderr and exit code 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


# what main's add_* functions add their command to (argparse's own name is private)
Commands = argparse._SubParsersAction


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


# sample's bounds: 10 million rows of a 784-D image are 31 GB of float32; torch's seeds are
# 64-bit
MAX_SAMPLES = 10_000_000
MAX_SEED = 2**63 - 1


def bounded(kind: Callable[[str], int], most: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = kind(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"expected at most {most:,}, got {value:,}")
        return value

    return parse


port = bounded(positive_int, 65535)


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m pipeline", description=__doc__, epilog=EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=Parser)
    for add in (add_train, add_sweep, add_evaluate, add_compare, add_export, add_reeval,
                add_sample, add_tables, add_report, add_ui, add_dashboard, add_relocate,
                add_recover):
        add(commands)
    return dispatch(parser.parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """The command's exit code: 2 for a bad input (one line on stderr), 1 for a failed sweep,
    128 + the signal's number when stopped."""
    quiet_libraries()
    # MLflow draws progress bars for artifact downloads; a command's output is its own.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError) as exc:  # ExportError is a ConfigError too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a failed sweep, a full disk: one line, exit 1; else the traceback
        from pipeline.faults import StorageFault, fault_message, storage_fault
        from pipeline.study.sweep import SweepError

        reason = None if isinstance(exc, (SweepError, StorageFault)) else storage_fault(exc)
        if reason is None and not isinstance(exc, (SweepError, StorageFault)):
            raise
        message = fault_message(f"python -m pipeline {args.command}", reason) if reason else exc
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        what = str(exc) or "Ctrl-C"
        print(f"stopped ({what}); runs in progress ended KILLED. Run the same command to "
              f"resume.", file=sys.stderr)
        return 128 + (signal.SIGINT if what in ("Ctrl-C", "SIGINT") else signal.SIGTERM)


def add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="Optuna storage (default $OPTUNA_STORAGE, else "
                                     "runs/optuna.journal)")


def add_train(commands: Commands) -> None:
    p = commands.add_parser("train", help="train one configuration, tracked as one MLflow run")
    p.add_argument("--config", help="YAML file merged over conf/defaults.yaml")
    p.add_argument("--resume", metavar="RUN_ID",
                   help="continue a killed training from its last checkpoint, in the same run")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, values in YAML: train.epochs=2 model.g_hidden=[64,64]")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.config_load import load_config

    if args.resume is not None:
        if args.config or args.overrides:
            raise ConfigError("--resume: continues a run with the config it was started with; "
                              "give no --config or key=value with it")
        from pipeline.checkpoint import resume_config

        cfg = resume_config(args.resume)
    else:
        cfg = load_config(args.config, args.overrides)
    from pipeline.interrupt import stop_on_signals
    from pipeline.prepare import prepare  # heavy imports once the config is known to be valid
    from pipeline.train import check_resumable, train

    if args.resume is not None:
        check_resumable(args.resume, cfg)
    prepared = prepare(cfg)
    with stop_on_signals(), prepared.run(run_id=args.resume) as run:
        # SIGTERM too ends the run KILLED, its checkpoint kept for --resume
        result = train(prepared, run, checkpoint=True, resume=args.resume is not None)
    print(f"MLflow run: {result.run_id}")
    print(json.dumps(result.metrics, indent=2, sort_keys=True))
    return 0


def add_sweep(commands: Commands) -> None:
    p = commands.add_parser("sweep", help="run or resume an Optuna study (studies/<name>.yaml)")
    p.add_argument("study_file", help="the study file, e.g. studies/grid25.yaml")
    p.add_argument("--trials", type=positive_int,
                   help="finished (complete or pruned) trials the study should hold "
                        "(default: the file's budget.n_trials)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="worker processes on this machine (at most the CPU count)")
    p.add_argument("--storage", help="Optuna storage: a journal file or a database URL "
                                     "(default $OPTUNA_STORAGE, else runs/optuna.journal)")
    p.add_argument("--allow-changes", action="store_true",
                   help="resume although the study file's objective, search space or base "
                        "config changed since the study was created")
    p.add_argument("--no-progress", action="store_true", help="no study progress line")
    p.add_argument("--data", metavar="PATH",
                   help="your table file or image folder for the study's data.path; the study "
                        "is then named <study file>-<data file stem>")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipeline.study.spec import load_study_file

    defn = load_study_file(args.study_file, data=args.data)  # fail fast, before heavy imports
    check_data(defn.base)
    workers = capped_workers(args.workers, defn.base.train.accelerator)
    from pipeline.study.summary import summary_lines
    from pipeline.study.sweep import run_sweep

    summary = run_sweep(defn, n_trials=args.trials, workers=workers, storage=args.storage,
                        progress=not args.no_progress, allow_changes=args.allow_changes)
    print("\n".join(summary_lines(summary)))
    return 0


def check_data(base: Any) -> None:
    """A user's file or folder is read once before the study starts: a missing or bad one is
    one line here, not a failed trial after the study and its MLflow run were created."""
    from pipeline.data import DATASETS

    if DATASETS[base.data.name].reads_path:
        from pipeline.prepare import cached_dataset

        cached_dataset(base.data, base.train.seed)


# A worker holds ~110 MB and its own torch threads: more than one per core (or a few per GPU)
# only adds contention, and hundreds exhaust memory.
WORKERS_PER_GPU = 4


def capped_workers(requested: int, accelerator: str) -> int:
    from pipeline.devices import gpu_count

    gpus = gpu_count(accelerator)
    cap, what = ((gpus * WORKERS_PER_GPU, f"{WORKERS_PER_GPU} per GPU x {gpus} GPUs") if gpus
                 else (os.cpu_count() or 1, "the CPU count"))
    if requested > cap:
        print(f"--workers {requested}: capped at {cap} ({what})", file=sys.stderr)
        return cap
    return requested


def add_compare(commands: Commands) -> None:
    p = commands.add_parser("compare", help="top trials of a study: a table and a figure")
    p.add_argument("--study", required=True, action="append",
                   help="the study's name (a studies/*.yaml stem); twice or more to compare "
                        "studies side by side")
    p.add_argument("--top", type=positive_int, default=5, help="how many trials (default 5)")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table",
                   help="table (fits 120 columns), markdown, csv or json (all columns)")
    add_storage(p)
    p.add_argument("--figure", help="where to write the figure (default runs/compare/NAME.png)")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.compare import compare, compare_studies

    if len(args.study) > 1:
        if args.figure:
            raise ConfigError("--figure: one study's figure; with several studies each goes "
                              "to runs/compare/<study>.png")
        text, figures = compare_studies(args.study, top=args.top, fmt=args.format,
                                        storage=args.storage)
    else:
        text, figure = compare(args.study[0], top=args.top, fmt=args.format,
                               storage=args.storage, figure_path=args.figure)
        figures = [figure]
    print(text)
    for figure in figures:
        print(f"figure: {figure} (also logged to the study's MLflow run)", file=sys.stderr)
    return 0


def add_recover(commands: Commands) -> None:
    p = commands.add_parser("recover", help="rebuild a study whose journal is damaged or lost "
                                            "from its MLflow runs")
    p.add_argument("--study", required=True, help="the study's name (a studies/*.yaml stem)")
    p.add_argument("--storage", help="the journal file (default $OPTUNA_STORAGE, else "
                                     "runs/optuna.journal); a damaged one is renamed aside")
    p.add_argument("--force", action="store_true",
                   help="rebuild the study even though the journal is readable and holds it")
    p.set_defaults(func=cmd_recover)


def cmd_recover(args: argparse.Namespace) -> int:
    from pipeline.study.recover import recover, summary_line

    print(summary_line(recover(args.study, args.storage, force=args.force), args.storage))
    return 0


def add_export(commands: Commands) -> None:
    p = commands.add_parser("export", help="register and export the best trial's generator")
    p.add_argument("--study", required=True, help="the study's name (a studies/*.yaml stem)")
    p.add_argument("--out", help="folder (default exports/<study>/): new, empty or an earlier "
                                 "export of the same run")
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty --out folder (or through a link) anyway")
    add_choice(p)
    add_storage(p)
    p.set_defaults(func=cmd_export)


def add_choice(p: argparse.ArgumentParser) -> None:
    """Which trial: the best by default; a multi-objective study has none and needs one."""
    p.add_argument("--trial", type=non_negative_int, help="a trial by number (any study)")
    p.add_argument("--pick", metavar="RULE",
                   help="a trial by rule: 'smallest|largest METRIC [with METRIC >= NUMBER "
                        "[and ...]]', e.g. 'smallest cost/g_params with val/pacgan_score >= "
                        "0.95'")


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.export import export_best

    out, version = export_best(args.study, args.out, storage=args.storage, force=args.force,
                               trial=args.trial, pick=args.pick)
    print(f"exported to {out}; registered as models:/{args.study}-generator@champion "
          f"(version {version})")
    return 0


def add_reeval(commands: Commands) -> None:
    p = commands.add_parser("reeval", help="retrain a study's best configuration on fresh "
                                           "seeds; mean and standard error of every metric")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--study", help="the study whose best trial to retrain")
    source.add_argument("--config", help="a config file to retrain instead (e.g. a baseline)")
    p.add_argument("--seeds", type=positive_int, default=5, help="fresh seeds (default 5)")
    p.add_argument("--epochs", type=positive_int, help="epochs per seed (default: the trial's)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="seeds trained at once (at most the CPU count)")
    p.add_argument("--out", help="results file (default results/<name>.json)")
    add_choice(p)
    add_storage(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides applied to every seed")
    p.set_defaults(func=cmd_reeval)


def cmd_reeval(args: argparse.Namespace) -> int:
    from pipeline.reeval import reevaluate, summary_table

    report, path = reevaluate(study=args.study, config=args.config, seeds=args.seeds,
                              epochs=args.epochs, workers=args.workers, out=args.out,
                              storage=args.storage, overrides=args.overrides,
                              trial=args.trial, pick=args.pick)
    print(summary_table(report))
    print(f"results: {path}", file=sys.stderr)
    return 0


def add_sample(commands: Commands) -> None:
    p = commands.add_parser("sample", help="draw samples from an export folder")
    p.add_argument("export_dir", help="a folder written by export")
    p.add_argument("-n", type=bounded(positive_int, MAX_SAMPLES), default=1000,
                   help=f"number of samples (default 1000, at most {MAX_SAMPLES:,})")
    p.add_argument("--seed", type=bounded(non_negative_int, MAX_SEED), default=0,
                   help="seed of the latent vectors (default 0)")
    p.add_argument("--out", required=True, help="where to write them: .npy, .csv or .png")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    from pipeline.export import check_samples_out, sample_export, write_samples

    check_samples_out(args.out)  # before the export is read and the samples drawn
    samples, config = sample_export(args.export_dir, args.n, args.seed)
    print(write_samples(samples, config, args.out))
    return 0


def add_tables(commands: Commands) -> None:
    p = commands.add_parser("tables", help="write a table that an installed package ships "
                                           "(offline), to try the table studies on")
    p.add_argument("name", help="penguins, fair, seattle_weather or breast_cancer")
    p.add_argument("--out", help="file to write: .csv, .tsv or .parquet (default "
                                 "runs/data/NAME.csv)")
    p.set_defaults(func=cmd_tables)


def cmd_tables(args: argparse.Namespace) -> int:
    from pipeline.tables.shipped import write_shipped

    print(write_shipped(args.name, args.out or f"runs/data/{args.name}.csv"))
    return 0


def add_report(commands: Commands) -> None:
    p = commands.add_parser("report", help="rewrite the README's results tables from "
                                           "results/*.json")
    p.add_argument("--readme", default="README.md", help="the file to rewrite (README.md)")
    p.add_argument("--results", default="results", help="the results folder (results/)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import write_report

    for name in write_report(args.readme, args.results):
        print(f"{args.readme}: table {name} rewritten", file=sys.stderr)
    return 0


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
    from pipeline.relocate import moved_warning
    from pipeline.tracking import artifact_location, mask_secrets, tracking_uri

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


def add_relocate(commands: Commands) -> None:
    p = commands.add_parser("relocate", help="after copying or moving a runs/ folder: point "
                                             "its runs' artifact locations at the new folder")
    p.add_argument("--store", default="runs",
                   help="the copied or moved store: a folder with mlflow.db, the mlflow.db "
                        "file or a sqlite:/// URI (default runs)")
    p.add_argument("--from", dest="source", metavar="OLD_FOLDER",
                   help="the artifacts folder the locations point at now (default: the one "
                        "the experiments record)")
    p.add_argument("--apply", action="store_true",
                   help="rewrite them (default: a dry run that prints what would change)")
    p.set_defaults(func=cmd_relocate)


def cmd_relocate(args: argparse.Namespace) -> int:
    from pipeline.relocate import relocate, report_lines

    result = relocate(args.store, source=args.source, apply=args.apply)
    print("\n".join(report_lines(result, applied=args.apply)))
    return 0


def add_evaluate(commands: Commands) -> None:
    p = commands.add_parser("evaluate", help="score samples from any model (.npy or .csv); "
                                             "prints one JSON line")
    p.add_argument("--data", required=True,
                   help="dataset name, e.g. grid25, fashion_mnist, or table / images with --path")
    p.add_argument("--samples", required=True,
                   help="(N, D) samples in the data's scale: .npy, or .csv as `sample` writes "
                        "it; a table's decoded rows also .tsv or .parquet")
    p.add_argument("--root", help="folder of IDX files (fashion_mnist, mnist)")
    p.add_argument("--path", help="data.path: the real table file or image folder")
    p.add_argument("--metrics", help="comma-separated subset of metrics (default: all)")
    p.add_argument("overrides", nargs="*", metavar="data.key=value",
                   help="the data settings training used, e.g. data.label=species")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluate import evaluate_file

    metrics = args.metrics.split(",") if args.metrics else None
    print(json.dumps(evaluate_file(args.data, args.samples, root=args.root, path=args.path,
                                   overrides=args.overrides, metrics=metrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
