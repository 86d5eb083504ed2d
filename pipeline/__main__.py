"""``python -m pipeline <command>``: argument parsing only; the work lives in the modules."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.data import DataError
from pipeline.logs import quiet_libraries


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train one configuration, tracked as one MLflow run")
    p.add_argument("--config", help="YAML file merged over conf/defaults.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.epochs=2")
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("sweep", help="run or resume an Optuna study (studies/<name>.yaml)")
    p.add_argument("study_file", help="e.g. studies/grid25.yaml")
    p.add_argument("--trials", type=int, help="finished trials the study should hold")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--storage", help="Optuna storage URL or journal file ($OPTUNA_STORAGE)")
    p.add_argument("--no-progress", action="store_true", help="no study progress line")
    p.set_defaults(func=cmd_sweep)

    p = commands.add_parser("evaluate", help="score an (N, D) .npy of samples; prints JSON")
    p.add_argument("--data", required=True, help="dataset name, e.g. grid25 or fashion_mnist")
    p.add_argument("--samples", required=True, help=".npy file of samples in the data's scale")
    p.add_argument("--root", help="folder of IDX files (fashion_mnist, mnist)")
    p.add_argument("--metrics", help="comma-separated subset of metrics (default: all)")
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("compare", help="top-K trials of a study and a comparison figure")
    p.add_argument("--study", required=True, help="study name (a studies/*.yaml stem)")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.add_argument("--storage", help="Optuna storage URL or journal file ($OPTUNA_STORAGE)")
    p.add_argument("--figure", help="where to write the figure (default runs/compare/NAME.png)")
    p.set_defaults(func=cmd_compare)

    p = commands.add_parser("export", help="export the best trial's generator")
    p.add_argument("--study", required=True)
    p.add_argument("--out", help="folder (default exports/<study>/)")
    p.add_argument("--storage", help="Optuna storage URL or journal file ($OPTUNA_STORAGE)")
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("sample", help="draw samples from an export folder")
    p.add_argument("export_dir")
    p.add_argument("-n", type=int, default=1000, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help=".npy, .csv or .png")
    p.set_defaults(func=cmd_sample)

    p = commands.add_parser("ui", help="MLflow UI on the project's store, bound to 127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.set_defaults(func=cmd_ui)

    p = commands.add_parser("dashboard", help="optuna-dashboard on the study storage (127.0.0.1)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--storage", help="Optuna storage URL or journal file ($OPTUNA_STORAGE)")
    p.set_defaults(func=cmd_dashboard)

    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError) as exc:  # ExportError is a ConfigError too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from pipeline.study.sweep import SweepError

        if not isinstance(exc, SweepError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.config import load_config

    cfg = load_config(args.config, args.overrides)
    from pipeline.train import fit  # heavy imports only once the config is known to be valid

    result = fit(cfg)
    print(f"MLflow run: {result.run_id}")
    print(json.dumps(result.metrics, indent=2, sort_keys=True))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipeline.study.spec import load_study_file

    defn = load_study_file(args.study_file)  # fail fast, before the heavy imports
    if args.workers < 1 or (args.trials is not None and args.trials < 1):
        raise ConfigError("--workers and --trials: expected numbers >= 1")
    from pipeline.study.sweep import run_sweep, summary_lines

    summary = run_sweep(defn, n_trials=args.trials, workers=args.workers,
                        storage=args.storage, progress=not args.no_progress)
    print("\n".join(summary_lines(summary)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.compare import compare

    text, figure = compare(args.study, top=args.top, fmt=args.format, storage=args.storage,
                           figure_path=args.figure)
    print(text)
    print(f"figure: {figure} (also logged to the study's MLflow run)", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.export import export_best

    out = export_best(args.study, args.out, storage=args.storage)
    print(f"exported to {out} and registered as {args.study}-generator@champion")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from pipeline.export import sample_export, write_samples

    samples, config = sample_export(args.export_dir, args.n, args.seed)
    print(write_samples(samples, config, args.out))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from pipeline.tracking import artifact_location, tracking_uri

    uri = tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(args.port),
           # one worker starts in ~20 s on 2 cores; the default 4 take ~40 s for one user
           "--workers", str(args.workers)]
    artifacts = artifact_location(uri)
    if artifacts:
        cmd += ["--default-artifact-root", artifacts]
    print(f"MLflow UI on http://127.0.0.1:{args.port} (store {uri})", file=sys.stderr)
    return subprocess.call(cmd)


def cmd_dashboard(args: argparse.Namespace) -> int:
    import subprocess

    from pipeline.study.store import storage_url

    url = storage_url(args.storage)
    cmd = [str(Path(sys.executable).parent / "optuna-dashboard"), url, "--host", "127.0.0.1",
           "--port", str(args.port)]
    if "://" not in url:
        cmd += ["--storage-class", "JournalFileStorage"]
    print(f"optuna-dashboard on http://127.0.0.1:{args.port} (storage {url})", file=sys.stderr)
    return subprocess.call(cmd)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluate import evaluate_file

    metrics = args.metrics.split(",") if args.metrics else None
    print(json.dumps(evaluate_file(args.data, args.samples, root=args.root, metrics=metrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
