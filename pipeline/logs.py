"""Process-wide logging and warning settings, applied by the entry points (CLI, study workers,
re-evaluation workers, the benchmark).

Kept out of the library modules: importing pipeline.train must not change a caller's logging.
Lightning and MLflow set their loggers' levels when they are imported, so the settings are made
after importing them (MLflow reads its level from the environment at import).
"""

from __future__ import annotations

import logging
import os
import re
import warnings

from pipeline.faults import fault_words, storage_fault


def quiet_libraries() -> None:
    # MLflow announces every store it opens ("Creating initial MLflow database tables...").
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import lightning.pytorch  # noqa: F401  (sets its logger's level on import)

    # MLflow's pytorch flavour (which logs each trial's model) imports the standalone
    # pytorch_lightning package, which sets its logger to INFO on import and then owns the
    # banner logger that lightning_utilities shares between both namespaces. Import it first
    # (0.2 s once lightning.pytorch is loaded) so that the level below sticks.
    import pytorch_lightning  # noqa: F401  (a dependency of lightning)

    # Lightning prints device and model banners for every fit; a study runs hundreds of fits.
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                 "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # Lightning 2.6 trips over its own deprecation on every fit; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    import mlflow  # noqa: F401  (its handler exists once it is imported)
    import optuna

    optuna.logging.get_logger("optuna")  # makes Optuna's handler
    for name in ("mlflow", "optuna"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, FaultTracebacks) for f in handler.filters):
                handler.addFilter(FaultTracebacks())


_FAILED = re.compile(r"Trial (\d+) failed")


class FaultTracebacks(logging.Filter):
    """A full disk or a read-only store is said once, in one line, by the command (see
    pipeline.faults); MLflow would log it at every write it tries (with a traceback, or in
    words: its system-metrics thread), Optuna for the trial it failed (a traceback, then "Trial
    N failed with value None"). Other errors keep their tracebacks: those are for debugging."""

    def __init__(self) -> None:
        super().__init__()
        self.trials: set[str] = set()  # trials whose failure was a fault

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        failed = _FAILED.match(record.getMessage())
        fault = storage_fault(exc) if exc is not None else fault_words(record.getMessage())
        if fault is not None:
            if failed:
                self.trials.add(failed.group(1))
            return False
        return not (failed and failed.group(1) in self.trials)
