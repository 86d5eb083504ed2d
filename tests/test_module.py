"""GANModule on its own: what its training steps do under manual optimization."""

from __future__ import annotations

import pytest
import torch

from pipeline.batches import TensorBatches
from pipeline.module import GANModule
from pipeline.prepare import build_module, cached_dataset
from pipeline.train import make_trainer


def train(cfg, *, chunk: int, steps: int = 6) -> GANModule:
    dataset = cached_dataset(cfg.data, cfg.train.seed)
    module = build_module(cfg, dataset, evaluator=None, steps_per_epoch=steps)
    trainer = make_trainer(cfg, "cpu", callbacks=[])
    batches = TensorBatches(dataset.train, cfg.train.batch_size, steps=steps, chunk=chunk)
    trainer.fit(module, train_dataloaders=batches)
    module.trainer_global_step = trainer.global_step  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize("n_critic", [1, 2])
def test_optimizer_steps(tiny_config, n_critic: int) -> None:
    """Every GAN step is one D step, plus one G step every n_critic D steps, also when a batch
    is a chunk of 4 steps (6 steps an epoch: chunks of 4 and 2). The module counts them (it
    steps the torch optimizers itself, so Lightning's global_step stays 0)."""
    module = train(tiny_config(f"train.n_critic={n_critic}", "train.epochs=2"), chunk=4)
    d_steps, g_steps = 12, 12 // n_critic
    assert module.steps == d_steps and module.g_steps == g_steps
    assert module.trainer_global_step == 0  # type: ignore[attr-defined]
    opt_g, opt_d = (opt.optimizer for opt in module.optimizers())  # type: ignore[union-attr]
    assert _adam_steps(opt_d) == d_steps
    assert _adam_steps(opt_g) == g_steps


# n_critic 2 with a decaying rate: torch's LambdaLR warned "lr_scheduler.step() before
# optimizer.step()" on the GAN steps without a G step; the module sets the rates itself.
@pytest.mark.filterwarnings("error:Detected call of:UserWarning")
def test_results_do_not_depend_on_the_chunk_size(tiny_config) -> None:
    cfg = tiny_config("train.epochs=2", "train.n_critic=2", "train.log_every_n_steps=5",
                      "train.ema_decay=0.9", "train.lr_decay_start=0.5")
    one, five = train(cfg, chunk=1), train(cfg, chunk=5)
    for a, b in zip(one.state_dict().values(), five.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # The same averaged losses at the same steps: every 5 steps, then the last partial one.
    one.close_last_interval()
    five.close_last_interval()
    assert [s for s, _ in one.pending_logs] == [s for s, _ in five.pending_logs] == [5, 10, 12]
    for (_, a), (_, b) in zip(one.pending_logs, five.pending_logs, strict=True):
        assert a.keys() == b.keys() == {"train/d_loss", "train/d_real", "train/d_fake",
                                        "train/g_loss"}
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_learning_rates_decay_linearly_to_zero(tiny_config) -> None:
    """lr_decay_start 0.5 over 12 steps: full rate for 6 steps, then down by a sixth a step."""
    module = train(tiny_config("train.epochs=2", "train.lr_decay_start=0.5", "train.g_lr=6e-3",
                               "train.d_lr=3e-3"), chunk=4)
    assert [module._lr_factor(step) for step in (0, 6, 7, 9, 12)] == [1, 1, 5 / 6, 0.5, 0]
    opt_g, opt_d = (opt.optimizer for opt in module.optimizers())  # type: ignore[union-attr]
    assert opt_g.param_groups[0]["lr"] == opt_d.param_groups[0]["lr"] == 0.0


def test_ema_generator_is_the_one_evaluated(tiny_config) -> None:
    plain = train(tiny_config("train.epochs=2"), chunk=4)
    assert plain.evaluated_generator is plain.generator and plain.g_ema is None
    # A decay near 0 follows G exactly; 0.99 over 12 steps stays near the early weights.
    follows = train(tiny_config("train.epochs=2", "train.ema_decay=1e-12"), chunk=4)
    assert follows.evaluated_generator is not follows.generator
    for a, b in zip(follows.evaluated_generator.parameters(), follows.generator.parameters(),
                    strict=True):
        torch.testing.assert_close(a, b)
    lags = train(tiny_config("train.epochs=2", "train.ema_decay=0.99"), chunk=4)
    gap = max(float((a - b).detach().abs().max()) for a, b in zip(
        lags.evaluated_generator.parameters(), lags.generator.parameters(), strict=True))
    assert gap > 1e-4
    z = lags.fixed_z[:8]
    torch.testing.assert_close(lags(z), lags.evaluated_generator(z))


def test_ema_updates_as_torch_averaged_model_does(tiny_config) -> None:
    """The module's own EMA update (lists made once) against AveragedModel.update_parameters,
    on a G with BatchNorm (float running stats are averaged; the step counter is copied)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    cfg = tiny_config("train.ema_decay=0.7", "model.g_norm=batch")
    module = build_module(cfg, cached_dataset(cfg.data, cfg.train.seed), evaluator=None,
                          steps_per_epoch=4)
    reference = AveragedModel(module.generator, multi_avg_fn=get_ema_multi_avg_fn(0.7),
                              use_buffers=True)
    g = module.generator
    for step in range(1, 5):
        with torch.no_grad():  # a new G: weights and running statistics move
            for t in [*g.parameters(), *g.buffers()]:
                t.add_(torch.randn_like(t.float()).to(t.dtype) if t.is_floating_point() else 1)
        module.g_steps = step
        module._update_ema()
        reference.update_parameters(g)
        assert module.g_ema is not None
        for a, b in zip(module.g_ema.state_dict().values(), reference.state_dict().values(),
                        strict=True):
            if a.is_floating_point():
                torch.testing.assert_close(a, b)
        assert module.g_ema.n_averaged == reference.n_averaged == step
    counters = [b for b in module.evaluated_generator.buffers() if not b.is_floating_point()]
    assert counters and all(torch.equal(c, torch.tensor(4)) for c in counters)


def _adam_steps(opt: torch.optim.Optimizer) -> int:
    steps = {int(state["step"]) for state in opt.state.values()}
    assert len(steps) == 1, steps
    return steps.pop()
