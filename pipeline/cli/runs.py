"""The commands that train: train (one run), sweep (an Optuna study) and reeval (fresh seeds of
a study's best configuration)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from pipeline.cli.args import Commands, add_choice, add_storage, positive_int
from pipeline.errors import ConfigError


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


REEVAL_SEEDS = 10  # a results row's seeds: PacGAN reports 10 runs


def add_reeval(commands: Commands) -> None:
    p = commands.add_parser("reeval", help="retrain a study's best configuration on fresh "
                                           "seeds; mean and standard error of every metric")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--study", help="the study whose best trial to retrain")
    source.add_argument("--config", help="a config file to retrain instead (e.g. a baseline)")
    p.add_argument("--seeds", type=positive_int, default=REEVAL_SEEDS,
                   help=f"fresh seeds (default {REEVAL_SEEDS})")
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
