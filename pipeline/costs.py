"""What a trained generator costs: its size, its FLOPs per sample and its sampling latency.

Logged as ``cost/...`` metrics on every run (any of them can be a study's objective):
``cost/g_params`` and ``cost/d_params``, ``cost/g_mflops`` (multiply-adds x 2 of one sample's
forward pass, counted by torch's FlopCounterMode), ``cost/sample_ms`` (milliseconds to generate
1,000 samples on the device trained on: warmed up, median of repeats) and
``cost/train_seconds`` (the fit loop's wall time).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from pipeline.networks import Generator, count_parameters

COST_PREFIX = "cost/"
LATENCY_ROWS = 1000  # cost/sample_ms is per 1,000 samples: one batch, as sample/serving draw
LATENCY_WARMUP = 3  # first calls pay allocator and kernel selection, not the network
LATENCY_REPEATS = 7  # odd, for a plain median; a few ms each on CPU for these MLPs


def generator_mflops(generator: Generator) -> float:
    """Forward FLOPs of one sample (torch counts 2 per multiply-add), in millions."""
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.zeros(1, generator.latent_dim, device=next(generator.parameters()).device)
    was_training = generator.training
    generator.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        generator(z)
    generator.train(was_training)
    return counter.get_total_flops() / 1e6


@torch.no_grad()
def sample_ms(generator: Generator, rows: int = LATENCY_ROWS) -> float:
    """Median wall milliseconds to generate ``rows`` samples, after a warm-up."""
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    z = torch.randn(rows, generator.latent_dim, device=device)
    times = []
    for i in range(LATENCY_WARMUP + LATENCY_REPEATS):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        generator(z)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= LATENCY_WARMUP:
            times.append(time.perf_counter() - start)
    generator.train(was_training)
    return 1000.0 * statistics.median(times)


def costs(generator: Generator, discriminator: nn.Module, train_seconds: float) -> dict[str, float]:
    values = {
        "g_params": float(count_parameters(generator)),
        "d_params": float(count_parameters(discriminator)),
        "g_mflops": generator_mflops(generator),
        "sample_ms": sample_ms(generator),
        "train_seconds": train_seconds,
    }
    return {f"{COST_PREFIX}{name}": values[name] for name in COST_METRICS}


COST_METRICS = ("g_params", "d_params", "g_mflops", "sample_ms", "train_seconds")
COST_KEYS = tuple(f"{COST_PREFIX}{name}" for name in COST_METRICS)  # what studies may name
