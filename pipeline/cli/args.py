"""What the commands' options share: the parser that fails in one line, number types with
bounds, and the options several commands take (--storage, --trial/--pick)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn


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


def add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="Optuna storage (default $OPTUNA_STORAGE, else "
                                     "runs/optuna.journal)")


def add_choice(p: argparse.ArgumentParser) -> None:
    """Which trial: the best by default; a multi-objective study has none and needs one."""
    p.add_argument("--trial", type=non_negative_int, help="a trial by number (any study)")
    p.add_argument("--pick", metavar="RULE",
                   help="a trial by rule: 'smallest|largest METRIC [with METRIC >= NUMBER "
                        "[and ...]]', e.g. 'smallest cost/g_params with val/pacgan_score >= "
                        "0.95'")
