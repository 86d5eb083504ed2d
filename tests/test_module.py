"""GANModule on its own: what one training step does under manual optimization."""

from __future__ import annotations

import pytest
import torch

from pipeline.data import TensorBatches
from pipeline.train import build_module, cached_dataset, make_trainer


@pytest.mark.parametrize("n_critic", [1, 2])
def test_optimizer_steps_per_batch(tiny_config, n_critic: int) -> None:
    """Each batch is one D step, plus one G step every n_critic batches; Lightning counts both
    optimizers' steps in global_step (so 2 per batch when n_critic = 1)."""
    cfg = tiny_config(f"train.n_critic={n_critic}", "train.epochs=2",
                      "train.steps_per_epoch=6")
    dataset = cached_dataset(cfg.data, cfg.train.seed)
    module = build_module(cfg, dataset, evaluator=None)
    trainer = make_trainer(cfg, "cpu", callbacks=[])
    batches = TensorBatches(dataset.train, cfg.train.batch_size, steps=6)
    trainer.fit(module, train_dataloaders=batches)
    d_steps, g_steps = 12, 12 // n_critic
    assert trainer.global_step == d_steps + g_steps
    opt_g, opt_d = (opt.optimizer for opt in module.optimizers())  # type: ignore[union-attr]
    assert _adam_steps(opt_d) == d_steps
    assert _adam_steps(opt_g) == g_steps


def _adam_steps(opt: torch.optim.Optimizer) -> int:
    steps = {int(state["step"]) for state in opt.state.values()}
    assert len(steps) == 1, steps
    return steps.pop()
