"""The batch iterator that feeds the Trainer: batches sliced from a tensor held in memory.

Every dataset is small enough to live in memory (Fashion-MNIST is 60,000 x 784 float32 = 188 MB),
so batches are slices of a shuffled index rather than per-sample DataLoader collation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor


class _Epoch:
    """The epoch number that seeds a permutation. Lightning calls ``set_epoch`` on a loader's
    ``sampler`` at the start of every epoch (as for a DistributedSampler), also after resuming
    from a checkpoint, so an epoch's order depends on its number alone."""

    def __init__(self) -> None:
        self.value = 0

    def set_epoch(self, epoch: int) -> None:
        self.value = epoch


class TensorBatches:
    """Batches sliced from a tensor held in memory (on the training device).

    A fresh permutation per epoch, drawn from ``seed + epoch``, so that a run is reproducible and
    the order does not depend on how many batches an earlier epoch consumed. Much faster than a
    DataLoader collating rows one by one for samples this small.

    With ``chunk`` set, each item is a (k, batch, D) stack of k <= chunk consecutive batches
    gathered in one indexing operation: a training step of the module runs k GAN steps on it.
    ``steps`` always counts batches (GAN steps), ``len()`` the items yielded per epoch.
    """

    def __init__(
        self,
        data: Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        steps: int | None = None,
        drop_last: bool = True,
        chunk: int | None = None,
    ) -> None:
        self.data = data
        self.batch_size = min(batch_size, len(data))
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        full = len(data) // self.batch_size if drop_last else math.ceil(len(data) / self.batch_size)
        self.steps = steps if steps is not None else full
        if chunk is not None and not drop_last:
            raise ValueError("chunks stack full batches: chunk needs drop_last=True")
        self.chunk = chunk
        self.sampler = _Epoch()
        self.batch_sampler = None  # read by Lightning beside `sampler`, as on a DataLoader

    def __len__(self) -> int:
        return self.steps if self.chunk is None else math.ceil(self.steps / self.chunk)

    def __iter__(self) -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(self.seed + self.sampler.value)
        self.sampler.value += 1  # used alone (no Lightning), the next pass is the next epoch
        if self.chunk is None:
            yield from self._batches(gen)
            return
        pending: list[Tensor] = []
        for idx in self._indices(gen):
            pending.append(idx)
            if len(pending) == self.chunk:
                yield self.data[torch.stack(pending)]  # one gather for k batches
                pending = []
        if pending:
            yield self.data[torch.stack(pending)]

    def _batches(self, gen: torch.Generator) -> Iterator[Tensor]:
        for idx in self._indices(gen):
            yield self.data[idx]

    def _indices(self, gen: torch.Generator) -> Iterator[Tensor]:
        n = len(self.data)
        taken = 0
        while taken < self.steps:
            order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
            order = order.to(self.data.device)
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                if self.drop_last and len(idx) < self.batch_size:
                    break
                yield idx
                taken += 1
                if taken == self.steps:
                    return
