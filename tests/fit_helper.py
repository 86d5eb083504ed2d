"""The three lines every caller of the training writes (prepare, open the run, train), for tests
that only need a trained run: ``fit(cfg)``."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as L

from pipeline.config import Config
from pipeline.prepare import prepare
from pipeline.train import FitResult, train


def fit(cfg: Config, *, callbacks: Sequence[L.Callback] = (), checkpoint: bool = False,
        resume: str | None = None) -> FitResult:
    prepared = prepare(cfg)
    with prepared.run(run_id=resume) as run:
        return train(prepared, run, callbacks=callbacks, checkpoint=checkpoint,
                     resume=resume is not None)
