"""The benchmark beside the package (bench/): its plain loop, the reference of every ratio,
computes what the module computes; the FLOPs it credits a step with are torch's count; its table
is the mix it says it is; ``--only`` merges into earlier results without losing any; and (slow)
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
from bench.table import synthetic_table, write_table
from pipeline.batches import TensorBatches
from pipeline.config import Config
from pipeline.config_load import load_config
from pipeline.prepare import build_module
from pipeline.readers.mixtures import grid25
from pipeline.tables.read import read_table
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
        assert set(results[key]) == {"grid25", "images", "table"}, key
        assert all(value > 0 for value in results[key].values()), key
    assert set(results["trial_cpu_ratio"]) == {"grid25", "images", "table"}
    assert all(value > 0 for value in results["trial_cpu_ratio"].values())
    # a share of the trial: its logging and evaluation windows lie inside its wall time
    assert all(value < 1 for value in results["eval_fraction"].values())
    assert results["startup_seconds"] > 0 and results["workers_speedup"] > 0
    assert set(results["pruning"]) >= {"epoch_fraction", "best_ratio"}
    assert set(results["gflops"]) == {"images_b64", "images_b256", "peak", "images_b64_matmuls",
                                      "images_b256_matmuls"}
    # the table's evaluations: the trials' width and the wide one, with the evaluator's pair
    # rule (8 columns: every one of their 28 pairs; 24: 190 of the 276)
    narrow, wide = bench.QUICK.table_columns, bench.QUICK.table_wide_columns
    assert narrow == 8 and wide == 24
    assert set(results["table_eval_seconds"]) == {"8_columns", "24_columns"}
    assert results["table_quality_pairs"] == {
        "8_columns": "all 28 column pairs",
        "24_columns": "190 of 276 column pairs, drawn uniformly with seed 0"}
    assert {"full", "light", "quality", "detection"} <= set(
        results["table_eval_breakdown"]["24_columns"])
    assert set(results["targets"]) == set(bench.TARGETS)
    assert results["quick"] is True
    [record] = results["measured"]
    assert record["run"] == "full" and "trial_ratio.table" in record["keys"]
    summary = (tmp_path / "bench" / "results.md").read_text()
    assert "quick mode" in summary and "`train_ratio`" in summary

    # --only table: the table's keys measured again, every other key as it was
    assert bench.main(["--quick", "--only", "table", "--out", str(tmp_path / "bench")]) == 0
    again = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert again["trial_ratio"]["grid25"] == results["trial_ratio"]["grid25"]
    assert again["gflops"] == results["gflops"]
    assert again["trial_seconds"]["table"] != results["trial_seconds"]["table"]
    assert [r["run"] for r in again["measured"]] == ["full", "--only table"]
    assert "trial_ratio.table" not in again["measured"][0]["keys"]
    assert set(again["targets"]) == set(bench.TARGETS)


def test_synthetic_table_is_the_mix_its_docstring_says(tmp_path: Path) -> None:
    """20 columns through the project's reader: 12 numbers (mixtures, skewed, integer counts)
    and 8 categories of 3 to 10 values, with the dependencies it draws; seeded; 100 columns are
    5 such groups."""
    table = read_table(write_table(tmp_path, rows=3000))
    frame = table.frame
    assert frame.shape == (3000, 20)
    assert set(table.categorical) == {"segment", "region", "plan", "device", "channel", "grade",
                                      "colour", "tier"}
    assert {frame[c].nunique() for c in table.categorical} == {3, 4, 5, 6, 7, 8, 10}
    counts = ("visits", "items", "age")
    assert all(frame[c].dtype.kind == "i" and frame[c].nunique() > 10 for c in counts)
    assert frame["income"].skew() > 1 and frame["wait"].skew() > 1  # skewed
    assert frame["height"].corr(frame["weight"]) > 0.5  # a linear pair
    assert frame.groupby("segment")["height"].mean().is_monotonic_increasing  # mode per segment
    assert (frame.groupby("plan")["income"].median().sort_values().index.tolist()
            == ["basic", "plus", "pro"])  # plan follows income's terciles
    assert frame.equals(synthetic_table(3000, seed=0))
    assert not frame.equals(synthetic_table(3000, seed=1))
    wide = synthetic_table(50, columns=100)
    assert wide.shape == (50, 100) and wide.columns[20] == "height_1"
    assert list(synthetic_table(50, columns=5).columns) == ["height", "segment", "income",
                                                             "visits", "region"]
    with pytest.raises(ValueError, match="columns=0"):
        synthetic_table(50, columns=0)


EARLIER = {  # a full run's results.json from before the benchmark recorded when it measured
    "quick": False,
    "train_ratio": {"grid25": 0.96, "images": 1.01},
    "trial_ratio": {"grid25": 1.02, "images": 0.93},
    "eval_fraction": {"grid25": 0.02, "images": 0.06},
    "startup_seconds": 0.24,
    "targets": {"startup_seconds": {"target": "<= 0.5", "met": True}},
}


def table_run() -> dict[str, Any]:
    return {"quick": False, "train_ratio": {"table": 0.97}, "trial_ratio": {"table": 0.8},
            "eval_fraction": {"table": 0.4}, "table_eval_seconds": {"20_columns": 2.5},
            "measured": [{"when": "2026-01-02 03:04 UTC", "run": "--only table",
                          "load_average": {"start": [2.5, 2, 2], "end": [3.0, 3, 2]},
                          "keys": ["train_ratio.table", "trial_ratio.table",
                                   "eval_fraction.table", "table_eval_seconds"]}]}


def test_only_table_merges_size_by_size_and_says_what_was_measured_when() -> None:
    merged = bench.merge(EARLIER, table_run())
    assert merged["train_ratio"] == {"grid25": 0.96, "images": 1.01, "table": 0.97}
    assert merged["trial_ratio"] == {"grid25": 1.02, "images": 0.93, "table": 0.8}
    assert merged["startup_seconds"] == 0.24 and merged["table_eval_seconds"] == {
        "20_columns": 2.5}
    assert "targets" not in merged  # recomputed by the run, over every key
    earlier, now = merged["measured"]
    assert earlier["when"] is None and earlier["keys"] == [
        "train_ratio.grid25", "train_ratio.images", "trial_ratio.grid25", "trial_ratio.images",
        "eval_fraction.grid25", "eval_fraction.images", "startup_seconds"]
    assert now["run"] == "--only table"
    # measured once more: the second table run takes its keys from the first's record
    twice = bench.merge(merged, table_run())
    assert [r["run"] for r in twice["measured"]] == [earlier["run"], "--only table"]

    merged["targets"] = {key: {"target": text, "met": bool(check(merged[key]))}
                         for key, (text, check) in bench.TARGETS.items() if key in merged}
    assert merged["targets"]["trial_ratio"]["met"] is False  # the table's 0.8: every size counts
    summary = bench.summary(merged)
    assert ("| `trial_ratio` | grid25 1.02, images 0.93, table 0.8 | >= 0.90 at every size "
            "| **no** |") in summary
    assert ("- 2026-01-02 03:04 UTC (--only table, load average 2.5 at the start, 3.0 at the "
            "end): `train_ratio` (table), `trial_ratio` (table), `eval_fraction` (table), "
            "`table_eval_seconds`") in summary
    assert ("- time not recorded (an earlier run): `train_ratio` (grid25, images), "
            "`trial_ratio` (grid25, images)") in summary


def test_only_refuses_to_mix_quick_and_full_results(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Before any measuring: one line, exit status 2, the results left as they were."""
    out = tmp_path / "bench"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({**EARLIER, "quick": True}))
    assert bench.main(["--only", "table", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        "error: results.json holds a quick run: merging a full one into it would mix toy and "
        "real numbers (use another --out)\n")
    assert json.loads((out / "results.json").read_text())["quick"] is True
    (out / "results.json").write_text("[1, 2]")
    assert bench.main(["--only", "table", "--out", str(out)]) == 2
    assert "not a benchmark's results" in capsys.readouterr().err


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
        torch.testing.assert_close(floats(gan.ema_g), floats(module.evaluated_generator))


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
