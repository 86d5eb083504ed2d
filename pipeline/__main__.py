"""Search for fully connected GANs that do not collapse, and keep every result in MLflow.

Train one configuration, run an Optuna study of many (with pruning), compare its best trials,
export the winner, and browse everything in the MLflow UI or optuna-dashboard. Every run lands
in MLflow (runs/mlflow.db unless MLFLOW_TRACKING_URI says otherwise), every study in Optuna
storage (runs/optuna.journal unless --storage or OPTUNA_STORAGE says otherwise).
"""

# The docstring above is the --help text. The commands live in pipeline/cli/: per command an add_*
# function (its parser) and a cmd_* function (which imports the module doing the work only when
# run, so --help and a bad option answer at once).

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from pipeline.cli.args import Parser
from pipeline.cli.results import (
    add_compare,
    add_evaluate,
    add_export,
    add_recover,
    add_relocate,
    add_report,
    add_sample,
    add_tables,
)
from pipeline.cli.runs import add_reeval, add_sweep, add_train
from pipeline.cli.servers import add_dashboard, add_ui
from pipeline.config import ConfigError
from pipeline.errors import DataError
from pipeline.logs import quiet_libraries

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


if __name__ == "__main__":
    sys.exit(main())
