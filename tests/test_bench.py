"""The benchmark beside the package (bench/): its plain loop, the reference of every ratio,
computes what the module computes; the FLOPs it credits a step with are torch's count; and (slow)
its quick mode writes every documented key. No timing is checked: the machines are too noisy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import torch

from bench import bench
from bench.flops import step_flops
from bench.plain import PlainGAN
from pipeline.batches import TensorBatches
from pipeline.config import Config, load_config
from pipeline.prepare import build_module
from pipeline.readers.mixtures import grid25
from pipeline.train import make_trainer

TINY = ["model.latent_dim=3", "model.g_hidden=[16, 8]", "model.d_hidden=[12]",
        "train.batch_size=10"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_benchmark_writes_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    assert bench.main(["--quick", "--out", str(tmp_path / "bench")]) == 0
    captured = capfd.readouterr()  # fd level: the workers' output too
    # the benchmark turns Optuna's per-trial lines off, in its spawned sweep workers as well
    assert "finished with value" not in captured.err
    printed = captured.out.split()
    assert printed == [str(tmp_path / "bench" / "results.json"),
                       str(tmp_path / "bench" / "results.md")]
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    for key in ("train_ratio", "trial_ratio", "eval_fraction"):
        assert set(results[key]) == {"grid25", "images"}, key
        assert all(value > 0 for value in results[key].values()), key
    # a share of the trial: its logging and evaluation windows lie inside its wall time
    assert all(value < 1 for value in results["eval_fraction"].values())
    assert results["startup_seconds"] > 0 and results["workers_speedup"] > 0
    assert set(results["pruning"]) >= {"epoch_fraction", "best_ratio"}
    assert set(results["gflops"]) == {"images_b64", "images_b256", "peak", "images_b64_matmuls",
                                      "images_b256_matmuls"}
    assert set(results["targets"]) == set(bench.TARGETS)
    assert results["quick"] is True
    summary = (tmp_path / "bench" / "results.md").read_text()
    assert "quick mode" in summary and "`train_ratio`" in summary


@pytest.mark.parametrize("pack", [1, 2])
def test_step_flops_match_torch_s_own_count(pack: int) -> None:
    """The FLOPs the benchmark credits a step with, from the layer sizes, are what torch counts
    in one step of the plain loop (FlopCounterMode: every matmul of forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = load_config(None, [*TINY, f"model.pack={pack}"])
    dataset = grid25(n=100)
    gan = PlainGAN(cfg, dataset)
    real = dataset.train[:10]
    with FlopCounterMode(display=False) as counter:
        gan.step(real)
    assert step_flops(cfg, dataset) == counter.get_total_flops()


class SameNoise(L.Callback):
    """Reseeds the global RNG before each Lightning batch (one GAN step each here), as the plain
    loop's side of the test does before each step: both draw the same z and the same penalty
    interpolates."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        torch.manual_seed(1000 + batch_idx)


def floats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # BatchNorm's num_batches_tracked, a counter, is read only when momentum is None (never here)
    return {k: v for k, v in module.state_dict().items() if v.is_floating_point()}


STEPS = 6


@pytest.mark.filterwarnings("ignore:.*no `val_dataloader`")
@pytest.mark.parametrize("overrides", [
    [],  # the default BCE, a G step per D step, no EMA, no decay
    # R1 on real samples, a G step every 2nd D step, EMA, decay from step 3, packing
    ["train.loss=hinge-r1", "train.gp_weight=0.5", "train.n_critic=2", "train.ema_decay=0.9",
     "train.lr_decay_start=0.5", "model.pack=2"],
    # BatchNorm: D judges real and fake in separate passes; G's running stats in its EMA
    ["train.loss=wgan-gp", "model.d_norm=batch", "model.g_norm=batch", "train.ema_decay=0.8"],
], ids=["bce", "hinge-r1-ema-decay-pack", "wgan-gp-batchnorm"])
def test_plain_loop_computes_what_the_module_computes(overrides: list[str]) -> None:
    """The module in its Trainer and PlainGAN from the same weights, batches and noise: the same
    D and G losses at every step, and the same networks (and EMA of G) at the end."""
    cfg = load_config(None, [*TINY, "train.epochs=1", f"train.steps_per_epoch={STEPS}",
                             f"train.log_every_n_steps={STEPS + 1}", *overrides])
    dataset = grid25(n=200)
    module = build_module(cfg, dataset, evaluator=None, steps_per_epoch=STEPS)
    gan = PlainGAN(cfg, dataset)
    gan.g.load_state_dict(module.generator.state_dict())
    gan.d.load_state_dict(module.discriminator.state_dict())
    gan.total = STEPS
    plain_d, plain_g = plain_losses(cfg, gan, dataset.train)

    trainer = make_trainer(cfg, "cpu", [SameNoise()])
    trainer.fit(module, train_dataloaders=TensorBatches(
        dataset.train, cfg.train.batch_size, seed=cfg.train.seed, steps=STEPS, chunk=1))

    # the module keeps each step's losses until its logging interval closes (after STEPS + 1)
    assert len(module._d_stats) == STEPS
    assert len(module._g_stats) == len(plain_g) == STEPS // cfg.train.n_critic
    torch.testing.assert_close(torch.stack(module._d_stats), torch.stack(plain_d))
    torch.testing.assert_close(torch.stack(module._g_stats), torch.stack(plain_g))
    torch.testing.assert_close(floats(gan.g), floats(module.generator))
    torch.testing.assert_close(floats(gan.d), floats(module.discriminator))
    if cfg.train.ema_decay > 0:
        assert gan.ema_g is not None
        torch.testing.assert_close(floats(gan.ema_g), floats(module.sampler))


def plain_losses(cfg: Config, gan: PlainGAN, data: torch.Tensor
                 ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    d_losses, g_losses = [], []
    batches = TensorBatches(data, cfg.train.batch_size, seed=cfg.train.seed, steps=STEPS)
    for i, real in enumerate(batches):
        torch.manual_seed(1000 + i)
        d_loss, g_loss = gan.step(real)
        d_losses.append(d_loss)
        if g_loss is not None:
            g_losses.append(g_loss)
    return d_losses, g_losses
