"""When MlflowMetrics writes the buffered training losses."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.entities import Metric

from pipeline import callbacks
from pipeline.callbacks import LOSS_FLUSH_SECONDS, MlflowMetrics


class Writes:
    """A RunLogger's metric writes, recorded instead of made."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def log_metric_points(self, points: Sequence[Metric]) -> None:
        self.batches.append([m.step for m in points])


@pytest.mark.parametrize(("every_epoch", "expected"), [
    # one write once LOSS_FLUSH_SECONDS have passed; epoch 5's evaluation carries its own
    (False, [[1, 2, 3, 4, 5, 6]]),
    # a checkpointed run: every epoch that has no evaluation to carry its points
    (True, [[1], [2], [3], [4], [5, 6], [7], [8]]),
])
def test_losses_are_written_every_few_seconds_or_every_epoch_with_a_checkpoint(
        monkeypatch: pytest.MonkeyPatch, every_epoch: bool, expected: list[list[int]]) -> None:
    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])
    writes = Writes()
    tracker = MlflowMetrics(writes, None, sample_every_n_epochs=10,  # type: ignore[arg-type]
                            flush_every_epoch=every_epoch)
    epoch_seconds = LOSS_FLUSH_SECONDS / 5
    for epoch in range(1, 9):  # evaluated every 5th epoch (on_validation_end writes those)
        clock[0] += epoch_seconds
        tracker._buffer.append(Metric("train/d_loss", 1.0, 0, epoch))
        trainer: Any = SimpleNamespace(check_val_every_n_epoch=5, current_epoch=epoch - 1)
        tracker.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert writes.batches == expected
    tracker.flush()  # as on_train_end does
    assert [step for batch in writes.batches for step in batch] == list(range(1, 9))
