"""The commands that read results: compare, export, sample, evaluate, report, tables, and the
stores' repairs (recover, relocate)."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.cli.args import (
    MAX_SAMPLES,
    MAX_SEED,
    Commands,
    add_choice,
    add_storage,
    bounded,
    non_negative_int,
    positive_int,
)
from pipeline.errors import ConfigError


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
    p.add_argument("--drs", action="store_true",
                   help="also export D calibrated for Discriminator Rejection Sampling (needs "
                        "the trial's data), for `sample --drs`")
    add_choice(p)
    add_storage(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.export import export_best

    out, version = export_best(args.study, args.out, storage=args.storage, force=args.force,
                               trial=args.trial, pick=args.pick, drs=args.drs)
    print(f"exported to {out}; registered as models:/{args.study}-generator@champion "
          f"(version {version})")
    return 0


def add_sample(commands: Commands) -> None:
    p = commands.add_parser("sample", help="draw samples from an export folder")
    p.add_argument("export_dir", help="a folder written by export")
    p.add_argument("-n", type=bounded(positive_int, MAX_SAMPLES), default=1000,
                   help=f"number of samples (default 1000, at most {MAX_SAMPLES:,})")
    p.add_argument("--seed", type=bounded(non_negative_int, MAX_SEED), default=0,
                   help="seed of the latent vectors (default 0)")
    p.add_argument("--out", required=True, help="where to write them: .npy, .csv or .png")
    p.add_argument("--drs", action="store_true",
                   help="keep only samples that Discriminator Rejection Sampling accepts (an "
                        "export made with --drs); a filter on G, not G")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    from pipeline.exported import check_samples_out, drs_sample_export, sample_export, write_samples

    check_samples_out(args.out)  # before the export is read and the samples drawn
    if args.drs:
        samples, config, accepted = drs_sample_export(args.export_dir, args.n, args.seed)
        print(f"DRS accepted {accepted:.1%} of the generator's samples", file=sys.stderr)
    else:
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
