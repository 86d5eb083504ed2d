"""FLOPs of one GAN step, counted from the layer sizes, and the machine's matmul ceilings."""

from __future__ import annotations

import itertools
import time

import torch

from pipeline.config import Config
from pipeline.dataset import Dataset


def step_matmuls(cfg: Config, dataset: Dataset) -> list[tuple[int, int, int]]:
    """The (m, k, n) of every matmul in one GAN step (D step + G step), from the layer sizes.

    Per linear layer a->b on r rows: forward (r, a) x (a, b), weight gradient (b, r) x (r, a),
    input gradient (r, b) x (b, a) (not for a first layer whose input needs no gradient). D step:
    G forward (no grad), D forward and backward on real and fake in one pass. G step: G and D
    forward, D's input gradients only (its weights are frozen), G's backward. D sees rows of
    ``pack`` samples.
    """
    m = cfg.model
    n = cfg.train.batch_size
    g = list(itertools.pairwise([m.latent_dim, *m.g_hidden, dataset.dim]))
    d = list(itertools.pairwise([dataset.dim * m.pack, *m.d_hidden, 1]))
    d_rows = n // m.pack
    return [
        *[(n, a, b) for a, b in g],  # D step: G forward
        *[(2 * d_rows, a, b) for a, b in d],  # D forward, real and fake
        *[(b, 2 * d_rows, a) for a, b in d],  # D weight gradients
        *[(2 * d_rows, b, a) for a, b in d[1:]],  # D input gradients
        *[(n, a, b) for a, b in g], *[(d_rows, a, b) for a, b in d],  # G step: forwards
        *[(d_rows, b, a) for a, b in d],  # D input gradients, down to G's output
        *[(b, n, a) for a, b in g],  # G weight gradients
        *[(n, b, a) for a, b in g[1:]],  # G input gradients
    ]


def step_flops(cfg: Config, dataset: Dataset) -> float:
    """Matmul FLOPs of one GAN step: 2mkn for each of step_matmuls."""
    return float(sum(2 * m * k * n for m, k, n in step_matmuls(cfg, dataset)))


def matmuls_only(cfg: Config, dataset: Dataset, seconds: float) -> float:
    """GFLOP/s of a step's matmuls alone (contiguous operands, nothing between them): the
    ceiling of the step's own figure, since everything else in it (Adam, activations, autograd's
    bookkeeping) adds time and no counted FLOPs."""
    shapes = step_matmuls(cfg, dataset)
    operands = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for a, b in operands:
            torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return step_flops(cfg, dataset) / best / 1e9


def matmul_peak(seconds: float = 3.0) -> float:
    """GFLOP/s of large float32 matmuls on all threads: the best of several."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = 0.0
    deadline = time.perf_counter() + seconds
    a @ b
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best
