"""A resumable, sharded, reproducibly shuffled loader of batches (`make_loader`)."""

from __future__ import annotations

import copy
import math

import torch
from torch.utils.data import DataLoader

from gcg.data.base import torch_generator
from gcg.data.errors import DataError


class InfiniteLoader:
    """Endless batches of a map-style data set, sharded over ranks, resumable at any step.

    Epoch e shuffles all indices with a generator seeded by (seed, e), truncates to a multiple
    of ``world_size`` and gives rank r the positions r, r + world_size, ... (as PyTorch's
    DistributedSampler does). Rank r's batch k is therefore the r-th interleaved share of the
    single-process batch k of size ``world_size * batch_size``: a DDP run sees the same global
    batches as one process. ``batch_size`` is per rank. ``step`` counts batches served,
    starting at ``start_step``; saving it and passing it back as ``start_step`` resumes exactly.
    """

    def __init__(self, dataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, num_workers: int = 0, start_step: int = 0,
                 shuffle: bool = True, pin_memory: bool = False):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank must lie in [0, world_size), got rank {rank}, world_size {world_size}")
        if seed < 0 or start_step < 0:
            raise DataError(f"seed and start_step must be >= 0, got {seed} and {start_step}")
        n = len(dataset)
        per_rank = n // world_size
        self.batches_per_epoch = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
        if self.batches_per_epoch == 0:
            raise DataError(f"a data set of {n} examples over {world_size} rank(s) gives {per_rank} per "
                             f"rank, fewer than batch_size {batch_size}: lower the batch size or use "
                             f"drop_last=False")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.step = start_step
        self._batches = None

    @property
    def epoch(self) -> int:
        return self.step // self.batches_per_epoch

    def epoch_indices(self, epoch: int) -> list[list[int]]:
        """The index lists of this rank's batches in ``epoch``."""
        n = len(self.dataset)
        order = (torch.randperm(n, generator=torch_generator(0, self.seed, epoch)) if self.shuffle
                 else torch.arange(n))
        mine = order[: n - n % self.world_size][self.rank::self.world_size].tolist()
        b = self.batch_size
        return [mine[i * b:(i + 1) * b] for i in range(self.batches_per_epoch)]

    def _start_epoch(self):
        epoch, offset = divmod(self.step, self.batches_per_epoch)
        view = self.dataset
        if hasattr(view, "set_epoch"):
            view = copy.copy(view)  # shallow: shares the data, owns its epoch
            view.set_epoch(epoch, self.seed)
        # generator: the DataLoader draws its workers' base seed from it, not from the global RNG
        # (which the training stream uses); seeded by (seed, epoch), a resumed run draws the same
        loader = DataLoader(view, batch_sampler=self.epoch_indices(epoch)[offset:],
                            num_workers=self.num_workers, pin_memory=self.pin_memory,
                            generator=torch_generator(1, self.seed, epoch))
        self._batches = iter(loader)

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self._batches is None:
                self._start_epoch()
            try:
                batch = next(self._batches)
            except StopIteration:
                self._batches = None
                continue
            self.step += 1
            return tuple(batch)

    def __len__(self) -> int:
        """Batches per epoch (the iterator itself never ends)."""
        return self.batches_per_epoch


def make_loader(dataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                drop_last: bool = True, num_workers: int = 0, start_step: int = 0,
                shuffle: bool = True, pin_memory: bool = False) -> InfiniteLoader:
    """An endless, per-rank sharded, reproducibly shuffled iterator of batches
    ``(images [B, ...], labels [B])``; see :class:`InfiniteLoader`. ``batch_size`` is per rank."""
    return InfiniteLoader(dataset, batch_size, seed, rank, world_size, drop_last, num_workers,
                          start_step, shuffle, pin_memory)
