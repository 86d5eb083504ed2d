"""``python -m pipeline <command>``: argument parsing only; the work lives in the modules."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pipeline.config import ConfigError
from pipeline.data import DataError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train one configuration, tracked as one MLflow run")
    p.add_argument("--config", help="YAML file merged over conf/defaults.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.epochs=2")
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("evaluate", help="score an (N, D) .npy of samples; prints JSON")
    p.add_argument("--data", required=True, help="dataset name, e.g. grid25 or fashion_mnist")
    p.add_argument("--samples", required=True, help=".npy file of samples in the data's scale")
    p.add_argument("--root", help="folder of IDX files (fashion_mnist, mnist)")
    p.add_argument("--metrics", help="comma-separated subset of metrics (default: all)")
    p.set_defaults(func=cmd_evaluate)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.config import load_config

    cfg = load_config(args.config, args.overrides)
    from pipeline.train import fit  # heavy imports only once the config is known to be valid

    result = fit(cfg)
    print(f"MLflow run: {result.run_id}")
    print(json.dumps(result.metrics, indent=2, sort_keys=True))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.evaluate import evaluate_file

    metrics = args.metrics.split(",") if args.metrics else None
    print(json.dumps(evaluate_file(args.data, args.samples, root=args.root, metrics=metrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
