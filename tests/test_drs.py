"""Discriminator Rejection Sampling against known answers on 1-D Gaussians, and in a run."""

from __future__ import annotations

import math

import pytest
import torch
from fit_helper import fit
from mlflow.tracking import MlflowClient
from torch import Tensor, nn

from pipeline.config import ConfigError
from pipeline.config_load import load_config
from pipeline.drs import acceptance, calibrate, log_odds, rejection_sample


class Shift(nn.Module):
    """A 'generator' z -> z + mean: N(mean, 1)."""

    latent_dim = 1

    def __init__(self, mean: float) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.tensor(mean))

    def forward(self, z: Tensor) -> Tensor:
        return z + self.mean


class Logit(nn.Module):
    """A linear discriminator: one logit a sample."""

    def __init__(self, slope: float = 0.0, bias: float = 0.0) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)
        with torch.no_grad():
            self.lin.weight.fill_(slope)
            self.lin.bias.fill_(bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x).squeeze(-1)


def test_unshifted_acceptance_is_the_density_ratio_over_its_bound() -> None:
    logits = torch.tensor([-3.0, -1.0, 0.0, 1.5])
    d_max = 2.0
    assert torch.sigmoid(log_odds(logits, d_max)).tolist() == pytest.approx(
        torch.exp(logits - d_max).tolist(), rel=1e-4)
    p = acceptance(logits, d_max)
    assert p.argsort().tolist() == [0, 1, 2, 3]  # the shift keeps the order of the logits
    assert ((p > 0) & (p < 1)).all()


def test_calibration_learns_the_log_density_ratio() -> None:
    # data N(1, 1) against G = N(0, 1): log p_data / p_g = x - 1/2, what a BCE-optimal D outputs
    torch.manual_seed(0)
    real = torch.randn(20_000, 1) + 1.0
    start = Logit(slope=-3.0, bias=2.0)  # a D trained by another loss: far from the ratio
    d = calibrate(start, Shift(0.0), real, batch_size=512, lr=0.02, seed=1, steps=600)
    assert d.lin.weight.item() == pytest.approx(1.0, abs=0.1)
    assert d.lin.bias.item() == pytest.approx(-0.5, abs=0.1)
    assert start.lin.weight.item() == -3.0  # the run's own D is untouched


def test_rejection_moves_the_generator_onto_the_data() -> None:
    # G = N(0, 1), data N(1, 1), the exact ratio as D: accepted samples' mean moves from 0 to
    # near 1 (the gamma shift accepts more than the exact sampler would, so not all the way)
    samples, accepted = rejection_sample(Shift(0.0), Logit(slope=1.0, bias=-0.5), 4000,
                                         seed=0, batch=1024)
    assert samples.shape == (4000, 1)
    assert 0.6 < samples.mean().item() < 1.1
    assert 0.05 < accepted < 0.9
    # and a D that is the same everywhere accepts alike: the mean stays at G's
    flat, _ = rejection_sample(Shift(0.0), Logit(), 4000, seed=0, batch=1024)
    assert abs(flat.mean().item()) < 0.1


def test_a_failed_sampling_leaves_the_generator_in_its_own_mode() -> None:
    class Broken(Logit):
        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("D failed")

    g = Shift(0.0).train()
    with pytest.raises(RuntimeError, match="D failed"):
        rejection_sample(g, Broken(), 10, seed=0, batch=8)
    assert g.training
    with pytest.raises(RuntimeError, match="D failed"):
        calibrate(Broken(), g, torch.zeros(8, 1), batch_size=4, lr=0.1, seed=0, steps=1)
    assert g.training

def test_a_run_logs_the_drs_metrics_beside_the_raw_ones(tiny_config, store_uri: str) -> None:
    result = fit(tiny_config("eval.drs=true"))
    assert 0 < result.drs["acceptance"] <= 1
    raw = {k.removeprefix("val/") for k in result.metrics} - {"eval_seconds"}
    assert raw <= set(result.drs)
    logged = MlflowClient(tracking_uri=store_uri).get_run(result.run_id).data.metrics
    assert logged["drs/acceptance"] == pytest.approx(result.drs["acceptance"])
    assert math.isclose(logged["drs/modes_covered"], result.drs["modes_covered"])
    assert not fit(tiny_config()).drs  # off by default


def test_drs_refuses_a_packed_discriminator() -> None:
    with pytest.raises(ConfigError, match=r"eval\.drs: needs model\.pack 1"):
        load_config(None, ["eval.drs=true", "model.pack=2"]).validate()
