"""ImageNet 64x64 as the official downsampled ``.npz`` batches (Chrabaszcz et al. 2017)."""

from __future__ import annotations

import math
import os
import re
import warnings
import zipfile

import numpy as np
import torch

from gcg.data.archive import npz_member, read_npz_array
from gcg.data.base import IMAGE_EXTENSIONS, AugmentedDataset, check_index
from gcg.data.errors import DataError, DataUnavailable
from gcg.images import downsample, to_unit_range

IMAGENET64_URL = "https://image-net.org/download-images"


def _imagenet_missing_message(data_dir: str, split: str) -> str:
    expected = ("train_data_batch_1.npz ... train_data_batch_10.npz" if split == "train"
                else "val_data.npz")
    msg = (f"ImageNet 64x64 .npz batches not found in {data_dir}: expected {expected} "
           f"(split {split!r}) from {IMAGENET64_URL} (Downsampled ImageNet 64x64, the npz "
           f"format: Imagenet64_train_part1_npz.zip, Imagenet64_train_part2_npz.zip, "
           f"Imagenet64_val_npz.zip); unzip them into {data_dir}.")
    if os.path.isdir(data_dir) and any(
            e.is_dir() or e.name.lower().endswith(IMAGE_EXTENSIONS) for e in os.scandir(data_dir)):
        msg += " The directory holds images or sub-directories: for an image folder use 'imagenet64-folder'."
    return msg


def _find_batches(data_dir: str, split: str) -> list[str]:
    """Paths of the split's .npz batches in ``data_dir``, in batch order (warns when training
    batches are missing)."""
    if not os.path.isdir(data_dir):
        raise DataUnavailable(f"data directory {data_dir} does not exist. "
                              + _imagenet_missing_message(data_dir, split))
    if split == "train":
        pattern = re.compile(r"train_data_batch_(\d+)\.npz$")
        found = sorted((int(m.group(1)), m.group(0)) for m in map(pattern.match, os.listdir(data_dir)) if m)
        files = [os.path.join(data_dir, name) for _, name in found]
        if files and len(files) != 10:
            warnings.warn(f"found {len(files)} of the 10 ImageNet 64x64 training batches in "
                          f"{data_dir} (batches {[k for k, _ in found]}); training on those only")
    else:
        files = [p for p in [os.path.join(data_dir, "val_data.npz")] if os.path.exists(p)]
    if not files:
        raise DataUnavailable(_imagenet_missing_message(data_dir, split))
    return files


def _read_labels(path: str) -> np.ndarray:
    """The 1-based labels int64 [N] of one batch, checked; the images are not read."""
    try:
        with np.load(path) as z:
            if "labels" not in z.files or "data" not in z.files:
                raise DataError(f"{path} is not an ImageNet 64x64 batch: expected arrays "
                                f"'data' and 'labels', found {sorted(z.files)}")
            y = np.asarray(z["labels"]).astype(np.int64).reshape(-1)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataUnavailable(f"{path} is not a readable .npz file ({e}); download it again "
                              f"from {IMAGENET64_URL}") from None
    if y.size and (y.min() < 1 or y.max() > 1000):
        raise DataError(f"{path}: labels must lie in 1..1000 (the official batches are "
                        f"1-based), found {y.min()}..{y.max()}")
    return y


def _row_length(path: str, num_labels: int) -> int:
    """Values per image (3*S*S) of one batch's ``data`` [N, 3*S*S], read from its header."""
    shape, _, dtype, _ = npz_member(path, "data")
    if dtype != np.uint8 or len(shape) != 2 or shape[0] != num_labels:
        raise DataError(f"{path}: expected 'data' uint8 [N, 3*S*S] with N = {num_labels} labels, "
                        f"found {dtype} {list(shape)}")
    return shape[1]


def _image_side(files: list[str], row_lengths: list[int]) -> int:
    """S, the side of the images that rows of 3*S*S values hold (the same in every batch)."""
    side = math.isqrt(row_lengths[0] // 3)
    if 3 * side * side != row_lengths[0]:
        raise DataError(f"{files[0]}: rows of {row_lengths[0]} values are not 3*S*S images")
    for path, length in zip(files, row_lengths):
        if length != row_lengths[0]:
            raise DataError(f"{path} holds images of a different size than {files[0]}")
    return side


class ImageNet64Npz(AugmentedDataset):
    """The official downsampled ImageNet (Chrabaszcz et al. 2017) as ``.npz`` batches.

    ``data_dir`` holds ``train_data_batch_1..10.npz`` (split "train") or ``val_data.npz``
    (split "val"). Each has ``data`` uint8 [N, 3*S*S], rows in CHW order (all red, then green,
    then blue, each S x S row-major), and ``labels`` 1..1000, mapped here to 0..999. The image
    arrays are memory-mapped (or read lazily), labels are read at construction.

    Item: (float [3, S, S] in [-1, 1], label). ``image_size`` smaller than S box-averages.
    """

    def __init__(self, data_dir: str, split: str = "train", image_size: int | None = None,
                 random_flip: bool = False, cache_dir: str | None = None):
        if split not in ("train", "val"):
            raise DataError(f"ImageNet64Npz split must be 'train' or 'val', got {split!r}")
        files = _find_batches(os.path.expanduser(str(data_dir)), split)
        labels, row_lengths = [], []
        for path in files:  # headers and labels only, one batch at a time
            labels.append(_read_labels(path))
            row_lengths.append(_row_length(path, len(labels[-1])))
        side = _image_side(files, row_lengths)
        image_size = image_size or side
        if image_size > side or side % image_size:
            raise DataError(f"the .npz batches hold {side}x{side} images; image_size "
                            f"{image_size} must divide {side} (use the matching downsampled "
                            f"ImageNet batches otherwise)")
        self.files, self.split, self.random_flip = files, split, random_flip
        self.native_size, self.image_size, self.num_classes = side, image_size, 1000
        self.labels = torch.from_numpy(np.concatenate(labels) - 1)
        self._offsets = np.cumsum([0] + [len(y) for y in labels])
        self._cache_dir = cache_dir
        self._data = [None] * len(files)  # each batch's images, opened on first use

    def _array(self, k: int):
        if self._data[k] is None:
            self._data[k] = read_npz_array(self.files[k], "data", self._cache_dir)
        return self._data[k]

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int):
        index = check_index(index, len(self))
        k = int(np.searchsorted(self._offsets, index, side="right")) - 1
        row = np.array(self._array(k)[index - self._offsets[k]])
        s = self.native_size
        x = to_unit_range(torch.from_numpy(row).view(3, s, s))
        if self.image_size != s:
            x = downsample(x, self.image_size)
        x = self._maybe_flip(x, self._item_rng(index))
        return x, self.labels[index]
