"""cost/ metrics against known answers: parameter counts and FLOPs from the layer sizes."""

from __future__ import annotations

import pytest
import torch

from pipeline.costs import LATENCY_ROWS, costs, generator_mflops, sample_ms
from pipeline.networks import Generator


def generator(latent: int, hidden: list[int], out: int) -> Generator:
    return Generator(latent, out, hidden, activation="relu", leaky_slope=0.2, norm="none",
                     dropout=0.0, output_activation="none", heads=[], head_temperature=0.2)


def test_flops_and_parameters_from_the_layer_sizes() -> None:
    g = generator(2, [128, 128, 128], 2)
    # torch counts 2 FLOPs per multiply-add of each Linear: 2 x sum(in x out)
    macs = 2 * 128 + 128 * 128 + 128 * 128 + 128 * 2
    assert generator_mflops(g) == pytest.approx(2 * macs / 1e6)
    weights = macs + (128 + 128 + 128 + 2)  # plus the biases
    d = torch.nn.Linear(2, 1)
    cost = costs(g, d, train_seconds=1.5)
    assert cost["cost/g_params"] == weights
    assert cost["cost/d_params"] == 3
    assert cost["cost/train_seconds"] == 1.5
    assert cost["cost/sample_ms"] > 0


def test_latency_grows_with_the_network() -> None:
    torch.set_num_threads(1)
    small, large = generator(2, [8], 2), generator(64, [1024, 1024, 1024], 784)
    assert sample_ms(large) > 5 * sample_ms(small)
    assert LATENCY_ROWS == 1000  # the metric's unit, as documented
