"""What every data set shares: seeds drawn from (loader seed, epoch, index), the base of
randomly augmented sets, and images held in memory (`TensorImageDataset`)."""

from __future__ import annotations

import random

import torch
from torch.utils.data import Dataset

from gcg.data.errors import DataError
from gcg.images import to_unit_range

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")


def mix_seed(*ints: int) -> int:
    """A 64-bit seed from integers: SplitMix64 finalisers chained over the inputs (cheap,
    and nearby inputs give unrelated seeds)."""
    h = 0x9E3779B97F4A7C15
    for i in ints:
        h = (h ^ (int(i) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h


def torch_generator(*ints: int) -> torch.Generator:
    """torch generator for whole-tensor draws (the loader's epoch permutation)."""
    return torch.Generator().manual_seed(mix_seed(*ints))


def item_rng(*ints: int) -> random.Random:
    """Python RNG for per-example draws (a flip, a crop position): far cheaper than a torch
    generator per example."""
    return random.Random(mix_seed(*ints))


class AugmentedDataset(Dataset):
    """Base for data sets whose examples depend on (seed, epoch, index) through random
    augmentation. :func:`make_loader` calls ``set_epoch`` on a shallow copy per epoch."""

    seed = 0
    epoch = 0

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        self.epoch, self.seed = int(epoch), int(seed)

    def _item_rng(self, index: int) -> random.Random:
        return item_rng(1, self.seed, self.epoch, index)

    def _maybe_flip(self, x: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """Random horizontal flip with probability 1/2 (Ho et al. 2020, Sec. 4; ADM)."""
        if self.random_flip and rng.random() < 0.5:
            return x.flip(-1)
        return x


def check_index(index: int, n: int) -> int:
    if index < 0:
        index += n
    if not 0 <= index < n:
        raise IndexError(f"index {index} out of range for a data set of {n} examples")
    return index


class TensorImageDataset(AugmentedDataset):
    """Images held in memory: ``images`` uint8 [N, C, H, W] (0..255) or float [N, C, H, W]
    already in [-1, 1]; ``labels`` int64 [N]. Item: (float [C, H, W] in [-1, 1], label)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, random_flip: bool = False,
                 class_names=None):
        if images.dim() != 4 or len(images) != len(labels):
            raise DataError(f"expected images [N, C, H, W] and labels [N], got "
                            f"{tuple(images.shape)} and {tuple(labels.shape)}")
        self.images, self.labels = images, labels.to(torch.int64)
        self.random_flip = random_flip
        self.class_names = class_names
        self.num_classes = len(class_names) if class_names else int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.labels)

    def as_tensors(self):
        """All images as float [N, C, H, W] in [-1, 1] (no augmentation) and labels [N]."""
        x = self.images
        return (to_unit_range(x) if x.dtype == torch.uint8 else x.to(torch.float32)), self.labels

    def __getitem__(self, index: int):
        index = check_index(index, len(self))
        x = self.images[index]
        x = to_unit_range(x) if x.dtype == torch.uint8 else x.to(torch.float32)
        if self.random_flip:
            x = self._maybe_flip(x, self._item_rng(index))
        return x, self.labels[index]
