"""Data sets and a resumable, sharded loader (chapter 08: training at scale).

Every image data set yields ``(image, label)``: ``image`` a float tensor [C, H, W] in [-1, 1],
``label`` an int64 class index. Batches from :func:`make_loader` are ``(images [B, C, H, W],
labels [B])``. Toy data sets yield ``(x [D], label)``.

Data sets (see :func:`make_dataset` for the names):

- ImageNet 64x64 as the official downsampled ``.npz`` batches (:class:`ImageNet64Npz`) or as an
  image folder (:class:`ImageFolderDataset`, both the class sub-directory layout and the ADM
  reference's flat ``<label>_<name>.png`` layout, cropped as ADM does);
- MNIST / Fashion-MNIST / CIFAR-10 through torchvision (download needs internet);
- offline sets that ship inside installed packages: scikit-learn's 8x8 digits
  (:func:`load_digits_dataset`) and class-conditional patches of scikit-image's photographs
  (:class:`PhotoPatches`, split by image region), digits drawn with the fonts matplotlib ships
  (:func:`load_glyphs`, split by typeface), plus samples of the analytic toys
  (:class:`ToyDataset`).

Random augmentation (flip, crop position) is drawn from a generator seeded by
(loader seed, epoch, example index), never from the global RNG. So an epoch is the same however
many workers or ranks read it, and a run resumed at step k sees exactly the batches it would
have seen (:func:`make_loader` with ``start_step``).
"""

from __future__ import annotations

import copy
import math
import os
import random
import re
import struct
import warnings
import zipfile
import zlib
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from gcg.images import downsample, to_unit_range  # noqa: F401  (downsample: re-exported)

__all__ = [
    "DataError",
    "downsample",
    "center_crop_arr",
    "random_crop_arr",
    "TensorImageDataset",
    "ImageNet64Npz",
    "ImageFolderDataset",
    "load_torchvision_dataset",
    "load_digits_dataset",
    "PhotoPatches",
    "load_glyphs",
    "glyph_fonts",
    "ToyDataset",
    "DATASETS",
    "make_dataset",
    "InfiniteLoader",
    "make_loader",
]

IMAGENET64_URL = "https://image-net.org/download-images"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
DEFAULT_DATA_ROOT = os.path.join("~", ".cache", "gcg", "data")


class DataError(ValueError):
    """Data missing, malformed or misconfigured. The message says what was expected and the fix."""


# --------------------------------------------------------------------------------------------
# seeding and small tensor helpers


def _mix_seed(*ints: int) -> int:
    """A 64-bit seed from integers: SplitMix64 finalisers chained over the inputs (cheap,
    and nearby inputs give unrelated seeds)."""
    h = 0x9E3779B97F4A7C15
    for i in ints:
        h = (h ^ (int(i) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h


def _generator(*ints: int) -> torch.Generator:
    """torch generator for whole-tensor draws (the loader's epoch permutation)."""
    return torch.Generator().manual_seed(_mix_seed(*ints))


def _item_rng(*ints: int) -> random.Random:
    """Python RNG for per-example draws (a flip, a crop position): far cheaper than a torch
    generator per example."""
    return random.Random(_mix_seed(*ints))


def _fit_size(images: torch.Tensor, size: int, mode: str, fill: float) -> torch.Tensor:
    """images [N, C, H, W] -> [N, C, size, size] by centred padding with ``fill`` ("pad") or
    antialiased bilinear resizing ("resize"). Keeps the dtype (uint8 is rounded)."""
    H, W = images.shape[-2:]
    if (H, W) == (size, size):
        return images
    if mode == "pad":
        if size < H or size < W:
            raise DataError(f"cannot pad {H}x{W} images to {size}x{size}; use resize_mode='resize'")
        top, left = (size - H) // 2, (size - W) // 2
        return F.pad(images, (left, size - W - left, top, size - H - top), value=fill)
    if mode != "resize":
        raise DataError(f"resize_mode must be 'pad' or 'resize', got {mode!r}")
    out = []
    for chunk in images.split(4096):
        y = F.interpolate(chunk.to(torch.float32), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        out.append(y.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else y)
    return torch.cat(out)


def _to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """[N, C, H, W] with C in {1, 3} -> [N, channels, H, W]: grey is repeated, colour becomes
    ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B)."""
    C = images.shape[1]
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if C == channels:
        return images
    if C == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = (images.to(torch.float32) * weights).sum(1, keepdim=True)
    return grey.round().to(torch.uint8) if images.dtype == torch.uint8 else grey


class _Augmented(Dataset):
    """Base for data sets whose examples depend on (seed, epoch, index) through random
    augmentation. :func:`make_loader` calls ``set_epoch`` on a shallow copy per epoch."""

    seed = 0
    epoch = 0

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        self.epoch, self.seed = int(epoch), int(seed)

    def _item_rng(self, index: int) -> random.Random:
        return _item_rng(1, self.seed, self.epoch, index)

    def _maybe_flip(self, x: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """Random horizontal flip with probability 1/2 (Ho et al. 2020, Sec. 4; ADM)."""
        if self.random_flip and rng.random() < 0.5:
            return x.flip(-1)
        return x


def _check_index(index: int, n: int) -> int:
    if index < 0:
        index += n
    if not 0 <= index < n:
        raise IndexError(f"index {index} out of range for a data set of {n} examples")
    return index


# --------------------------------------------------------------------------------------------
# in-memory images (torchvision sets, digits)


class TensorImageDataset(_Augmented):
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
        index = _check_index(index, len(self))
        x = self.images[index]
        x = to_unit_range(x) if x.dtype == torch.uint8 else x.to(torch.float32)
        if self.random_flip:
            x = self._maybe_flip(x, self._item_rng(index))
        return x, self.labels[index]


# --------------------------------------------------------------------------------------------
# ImageNet 64x64: official downsampled .npz batches


def _npy_header(f):
    """(shape, fortran_order, dtype) from an open .npy stream positioned at its magic string."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _npz_member(path: str, key: str):
    """Where array ``key`` of the .npz at ``path`` lives, read from headers only:
    (shape, fortran_order, dtype, offset of the raw bytes in the file, or None if compressed)."""
    with zipfile.ZipFile(path) as zf:
        try:
            info = zf.getinfo(key + ".npy")
        except KeyError:
            raise DataError(f"{path} is not an ImageNet 64x64 batch: it has no '{key}' array "
                            f"(found {sorted(n[:-4] for n in zf.namelist())})") from None
        if info.compress_type != zipfile.ZIP_STORED:
            with zf.open(info) as f:
                return (*_npy_header(f), None)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the zip local file header; its name/extra lengths locate the data
        if local[:4] != b"PK\x03\x04":
            raise DataError(f"{path}: corrupt zip member '{key}.npy'; download the batch again")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        shape, fortran, dtype = _npy_header(f)
        return shape, fortran, dtype, f.tell()


def _read_npz_array(path: str, key: str, cache_dir: str | None):
    """Array ``key`` of the .npz at ``path``, without reading it whole when possible.

    ``np.savez`` stores members uncompressed, so the .npy bytes lie contiguous in the zip file
    and are memory-mapped in place. A compressed member (``np.savez_compressed``) is
    decompressed once into ``cache_dir`` and memory-mapped from there, or, without a
    ``cache_dir``, read into RAM.
    """
    shape, fortran, dtype, offset = _npz_member(path, key)
    if offset is not None:
        if math.prod(shape) == 0:
            return np.zeros(shape, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                         order="F" if fortran else "C")
    cached = None if cache_dir is None else os.path.join(cache_dir, f"{os.path.basename(path)[:-4]}.{key}.npy")
    if cached is not None and os.path.exists(cached):
        return np.load(cached, mmap_mode="r")
    with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as f:
        arr = np.lib.format.read_array(f)
    if cached is None:
        return arr
    os.makedirs(cache_dir, exist_ok=True)
    np.save(cached + ".tmp.npy", arr)
    os.replace(cached + ".tmp.npy", cached)
    return np.load(cached, mmap_mode="r")


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


class ImageNet64Npz(_Augmented):
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
        data_dir = os.path.expanduser(str(data_dir))
        if not os.path.isdir(data_dir):
            raise DataError(f"data directory {data_dir} does not exist. "
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
            raise DataError(_imagenet_missing_message(data_dir, split))
        self.files, self.split, self.random_flip = files, split, random_flip
        self._cache_dir = cache_dir
        self._data = [None] * len(files)
        labels, sizes, row_lengths = [], [], []
        for path in files:
            try:
                with np.load(path) as z:
                    if "labels" not in z.files or "data" not in z.files:
                        raise DataError(f"{path} is not an ImageNet 64x64 batch: expected arrays "
                                        f"'data' and 'labels', found {sorted(z.files)}")
                    y = np.asarray(z["labels"]).astype(np.int64).reshape(-1)
            except (zipfile.BadZipFile, OSError, ValueError) as e:
                if isinstance(e, DataError):
                    raise
                raise DataError(f"{path} is not a readable .npz file ({e}); download it again "
                                f"from {IMAGENET64_URL}") from None
            if y.size and (y.min() < 1 or y.max() > 1000):
                raise DataError(f"{path}: labels must lie in 1..1000 (the official batches are "
                                f"1-based), found {y.min()}..{y.max()}")
            shape, _, dtype, _ = _npz_member(path, "data")
            if dtype != np.uint8 or len(shape) != 2 or shape[0] != len(y):
                raise DataError(f"{path}: expected 'data' uint8 [N, 3*S*S] with N = {len(y)} labels, "
                                f"found {dtype} {list(shape)}")
            labels.append(torch.from_numpy(y - 1))
            sizes.append(len(y))
            row_lengths.append(shape[1])
        side = math.isqrt(row_lengths[0] // 3)
        if 3 * side * side != row_lengths[0]:
            raise DataError(f"{files[0]}: rows of {row_lengths[0]} values are not 3*S*S images")
        for path, length in zip(files, row_lengths):
            if length != row_lengths[0]:
                raise DataError(f"{path} holds images of a different size than {files[0]}")
        self.native_size = side
        self.image_size = image_size or side
        if self.image_size > side or side % self.image_size:
            raise DataError(f"the .npz batches hold {side}x{side} images; image_size "
                            f"{self.image_size} must divide {side} (use the matching downsampled "
                            f"ImageNet batches otherwise)")
        self.labels = torch.cat(labels)
        self.num_classes = 1000
        self._offsets = np.cumsum([0] + sizes)

    def _array(self, k: int):
        if self._data[k] is None:
            self._data[k] = _read_npz_array(self.files[k], "data", self._cache_dir)
        return self._data[k]

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, index: int):
        index = _check_index(index, len(self))
        k = int(np.searchsorted(self._offsets, index, side="right")) - 1
        row = np.array(self._array(k)[index - self._offsets[k]])
        s = self.native_size
        x = to_unit_range(torch.from_numpy(row).view(3, s, s))
        if self.image_size != s:
            x = downsample(x, self.image_size)
        x = self._maybe_flip(x, self._item_rng(index))
        return x, self.labels[index]


# --------------------------------------------------------------------------------------------
# image folders (ADM layout and class sub-directories)


def _resize_short_side(pil_image, short: int):
    """ADM's resize: halve with BOX filtering while the short side is >= 2 * short, then
    BICUBIC so the short side is ``short``. -> uint8 array [H, W, C]."""
    from PIL import Image

    while min(pil_image.size) >= 2 * short:
        pil_image = pil_image.resize(tuple(v // 2 for v in pil_image.size), resample=Image.BOX)
    scale = short / min(pil_image.size)
    pil_image = pil_image.resize(tuple(round(v * scale) for v in pil_image.size), resample=Image.BICUBIC)
    return np.asarray(pil_image)


def center_crop_arr(pil_image, image_size: int) -> np.ndarray:
    """ADM's preprocessing: resize so the short side is image_size (BOX halvings, then
    BICUBIC), crop the centre. -> uint8 [S, S, C]."""
    arr = _resize_short_side(pil_image, image_size)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[top:top + image_size, left:left + image_size]


def random_crop_arr(pil_image, image_size: int, rng: random.Random,
                    min_crop_frac: float = 0.8, max_crop_frac: float = 1.0) -> np.ndarray:
    """Random-crop augmentation of the guided-diffusion code: resize so the short side is a
    random length in [image_size / max_crop_frac, image_size / min_crop_frac], then crop an
    image_size square at a random position. -> uint8 [S, S, C]."""
    lo = math.ceil(image_size / max_crop_frac)
    hi = math.ceil(image_size / min_crop_frac)
    arr = _resize_short_side(pil_image, rng.randint(lo, hi))
    top = rng.randint(0, arr.shape[0] - image_size)
    left = rng.randint(0, arr.shape[1] - image_size)
    return arr[top:top + image_size, left:left + image_size]


def _list_images(folder: str) -> list[str]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
    return found


class ImageFolderDataset(_Augmented):
    """Images on disk, read lazily with PIL and cropped to ``image_size`` as ADM does.

    Layouts (``layout="auto"`` picks by what it finds):
      - "subdirs": ``data_dir/<class>/**/*.png`` (torchvision's ImageFolder), classes sorted;
      - "flat": the ADM reference's ``data_dir/**/<class>_<anything>.png``; the class is the
        file name before the first underscore, classes sorted.
    With ``class_cond=False`` every label is 0 (unconditional training on any folder).
    Item: (float [3, S, S] in [-1, 1], label).
    """

    def __init__(self, data_dir: str, image_size: int, layout: str = "auto", class_cond: bool = True,
                 random_flip: bool = False, random_crop: bool = False):
        data_dir = os.path.expanduser(str(data_dir))
        how = (f"expected class sub-directories ({data_dir}/<class>/<image>.png) or the ADM "
               f"flat layout ({data_dir}/<class>_<name>.png)")
        if not os.path.isdir(data_dir):
            raise DataError(f"image folder {data_dir} does not exist: {how}")
        if layout == "auto":
            top_images = [e for e in os.scandir(data_dir) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
            layout = "flat" if top_images or not any(e.is_dir() for e in os.scandir(data_dir)) else "subdirs"
        if layout == "subdirs":
            classes = sorted(e.name for e in os.scandir(data_dir) if e.is_dir())
            files, names = [], []
            for c in classes:
                imgs = _list_images(os.path.join(data_dir, c))
                files += imgs
                names += [c] * len(imgs)
        elif layout == "flat":
            files = _list_images(data_dir)
            names = [os.path.basename(p).split("_")[0] for p in files]
            if class_cond:
                bad = [p for p in files if "_" not in os.path.basename(p)]
                if bad:
                    raise DataError(f"{bad[0]} has no '<class>_' prefix; in the flat layout each file "
                                    f"is named <class>_<name>.png (or pass class_cond=False)")
        else:
            raise DataError(f"layout must be 'auto', 'subdirs' or 'flat', got {layout!r}")
        if not files:
            raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {data_dir}: {how}")
        self.files, self.layout = files, layout
        self.class_names = sorted(set(names)) if class_cond else [""]
        index = {c: i for i, c in enumerate(self.class_names)}
        self.labels = torch.tensor([index[c] if class_cond else 0 for c in names], dtype=torch.int64)
        self.num_classes = len(self.class_names)
        self.image_size, self.random_flip, self.random_crop = image_size, random_flip, random_crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from PIL import Image

        index = _check_index(index, len(self))
        g = self._item_rng(index)
        try:
            with Image.open(self.files[index]) as im:
                im.load()
                im = im.convert("RGB")
        except OSError as e:
            raise DataError(f"cannot read image {self.files[index]}: {e}") from None
        arr = random_crop_arr(im, self.image_size, g) if self.random_crop else center_crop_arr(im, self.image_size)
        x = to_unit_range(torch.from_numpy(np.array(arr)).permute(2, 0, 1))
        return self._maybe_flip(x, g), self.labels[index]


# --------------------------------------------------------------------------------------------
# torchvision sets (need internet once)

_TORCHVISION = {  # name -> (torchvision class, native size, channels, default resize mode)
    "mnist": ("MNIST", 28, 1, "pad"),
    "fashion-mnist": ("FashionMNIST", 28, 1, "pad"),
    "cifar10": ("CIFAR10", 32, 3, "resize"),
}


def load_torchvision_dataset(name: str, data_dir: str | None = None, image_size: int | None = None,
                             split: str = "train", channels: int | None = None, download: bool = True,
                             resize_mode: str | None = None, random_flip: bool = False) -> TensorImageDataset:
    """MNIST, Fashion-MNIST or CIFAR-10 via torchvision, held in memory as uint8.

    ``image_size`` defaults to the native size (28 or 32); MNIST-like sets are zero-padded
    (28 -> 32 with background -1), CIFAR-10 is resized (antialiased bilinear); ``resize_mode``
    ("pad" or "resize") overrides. ``channels`` 1 or 3 converts grey <-> colour. ``data_dir``
    defaults to $GCG_DATA_DIR or ~/.cache/gcg/data. Without internet and without the files, a
    :class:`DataError` says where to put them.
    """
    if name not in _TORCHVISION:
        raise DataError(f"unknown torchvision data set {name!r}; choose from {sorted(_TORCHVISION)}")
    if split not in ("train", "test"):
        raise DataError(f"{name} split must be 'train' or 'test', got {split!r}")
    cls_name, native, native_channels, default_mode = _TORCHVISION[name]
    root = os.path.expanduser(data_dir or os.environ.get("GCG_DATA_DIR") or DEFAULT_DATA_ROOT)
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    try:
        ds = cls(root, train=(split == "train"), download=False)
    except RuntimeError:
        if not download:
            raise DataError(f"{name} not found in {root} and download=False: download it once with "
                            f"download=True (needs internet), or copy torchvision's {cls_name} files "
                            f"into {root}") from None
        try:
            ds = cls(root, train=(split == "train"), download=True)
        except Exception as e:  # no internet: URLError, socket errors, torchvision's RuntimeError
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"could not download {name} into {root} ({type(e).__name__}: {reason}). "
                            f"This needs internet once; otherwise copy torchvision's {cls_name} files "
                            f"into {root}, or use an offline set: 'digits' or 'photo-patches'.") from None
    images = torch.as_tensor(np.asarray(ds.data))
    images = images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)  # -> NCHW
    images = _to_channels(images.contiguous(), channels or native_channels)
    images = _fit_size(images, image_size or native, resize_mode or default_mode, fill=0)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return TensorImageDataset(images, labels, random_flip=random_flip, class_names=list(ds.classes))


# --------------------------------------------------------------------------------------------
# offline: scikit-learn digits


@lru_cache(maxsize=1)
def _sklearn_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def load_digits_dataset(split: str = "train", image_size: int = 8, test_fraction: float = 0.2,
                        random_flip: bool = False) -> TensorImageDataset:
    """scikit-learn's handwritten digits: 1,797 images of 8x8, 10 classes, pixels 0..16 mapped
    to [-1, 1] (x / 8 - 1). ``split`` "train", "test" or "all"; the split is stratified by
    class and fixed (the same for every call). ``image_size`` > 8 resizes bilinearly.
    ``.as_tensors()`` gives all images [N, 1, S, S] and labels [N] at once.
    """
    if split not in ("train", "test", "all"):
        raise DataError(f"digits split must be 'train', 'test' or 'all', got {split!r}")
    digit_images, target = _sklearn_digits()
    images = torch.tensor(digit_images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    labels = torch.tensor(target, dtype=torch.int64)
    if split != "all":
        rng = np.random.RandomState(0)
        is_test = np.zeros(len(labels), dtype=bool)
        for c in range(10):
            members = np.flatnonzero(target == c)
            is_test[rng.permutation(members)[: round(test_fraction * len(members))]] = True
        keep = torch.from_numpy(np.flatnonzero(is_test if split == "test" else ~is_test))
    else:
        keep = torch.arange(len(labels))
    images, labels = images[keep], labels[keep]
    if image_size != 8:
        images = _fit_size(images, image_size, "resize", fill=-1.0).clamp(-1, 1)
    ds = TensorImageDataset(images, labels, random_flip=random_flip, class_names=[str(c) for c in range(10)])
    ds.source_indices = keep  # rows of sklearn's load_digits() in this split
    return ds


# --------------------------------------------------------------------------------------------
# offline: patches of scikit-image's photographs

DEFAULT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "brick", "grass")


@lru_cache(maxsize=None)
def _load_photo(name: str) -> torch.Tensor:
    """skimage.data.<name>() as uint8 [C, H, W] (C = 1 or 3)."""
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise DataError(f"skimage.data has no photograph {name!r}; try one of {list(DEFAULT_PHOTOS)}")
    try:
        arr = np.asarray(loader())
    except Exception as e:  # e.g. photos that need pooch and a download
        raise DataError(f"skimage.data.{name}() is not available offline ({type(e).__name__}); "
                        f"use photos that ship with scikit-image, e.g. {list(DEFAULT_PHOTOS)}") from None
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise DataError(f"skimage.data.{name}() is not a uint8 photograph (dtype {arr.dtype}, shape {arr.shape})")
    arr = arr[..., :3] if arr.ndim == 3 else arr[..., None]
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


class PhotoPatches(_Augmented):
    """Class-conditional square patches of photographs that ship with scikit-image.

    The class is the source photograph (``photos``, default 8 of them). Each photograph is split
    by region: columns [0, floor(train_fraction * W)) are the training region, the rest the
    test region; a patch lies entirely inside one region, so no test pixel is ever seen in
    training. Training patches are cut at random positions that change every epoch (and are
    flipped when ``random_flip``); test patches sit at fixed positions.

    ``photo_downsample`` (int) box-averages each photograph first, so a patch covers more of
    the scene. ``low_res_size`` adds a third item, the box-downsampled patch
    [C, low_res_size, low_res_size], for super-resolution pairs (e.g. 32 and 8, 64 and 16).
    Item: (float [C, size, size] in [-1, 1], label[, low_res]).
    """

    def __init__(self, size: int = 32, split: str = "train", photos=DEFAULT_PHOTOS, channels: int = 3,
                 patches_per_class: int | None = None, train_fraction: float = 0.8,
                 photo_downsample: int = 1, low_res_size: int | None = None, random_flip: bool | None = None):
        if split not in ("train", "test"):
            raise DataError(f"PhotoPatches split must be 'train' or 'test', got {split!r}")
        if not 0 < train_fraction < 1:
            raise DataError(f"train_fraction must lie in (0, 1), got {train_fraction}")
        if low_res_size is not None and size % low_res_size:
            raise DataError(f"low_res_size {low_res_size} must divide the patch size {size}")
        self.size, self.split, self.photos = size, split, tuple(photos)
        self.class_names = list(self.photos)
        self.num_classes = len(self.photos)
        self.low_res_size = low_res_size
        self.random_flip = (split == "train") if random_flip is None else random_flip
        self.patches_per_class = patches_per_class or (512 if split == "train" else 64)
        self.images, self.regions = [], []  # regions: (col_start, col_stop) per photograph
        for name in self.photos:
            img = _to_channels(_load_photo(name)[None], channels)[0]
            if photo_downsample > 1:
                H, W = img.shape[-2:]
                img = img[:, : H - H % photo_downsample, : W - W % photo_downsample]
                img = downsample(img, (H // photo_downsample, W // photo_downsample)).round().to(torch.uint8)
            H, W = img.shape[-2:]
            cut = int(train_fraction * W)
            cols = (0, cut) if split == "train" else (cut, W)
            if size > H or size > cols[1] - cols[0]:
                raise DataError(f"a {size}x{size} patch does not fit in the {split} region of {name!r} "
                                f"({H}x{cols[1] - cols[0]} px); use a smaller size or photo_downsample")
            self.images.append(img)
            self.regions.append(cols)

    def __len__(self) -> int:
        return len(self.photos) * self.patches_per_class

    def patch_position(self, index: int):
        """(class, top, left) of patch ``index`` in this epoch (train) or always (test)."""
        return self._locate(index)[:3]

    def _locate(self, index: int):
        index = _check_index(index, len(self))
        label = index // self.patches_per_class
        g = self._item_rng(index) if self.split == "train" else _item_rng(2, index)
        H = self.images[label].shape[-2]
        c0, c1 = self.regions[label]
        top = g.randint(0, H - self.size)
        left = g.randint(c0, c1 - self.size)
        return label, top, left, g

    def __getitem__(self, index: int):
        label, top, left, g = self._locate(index)
        patch = self.images[label][:, top:top + self.size, left:left + self.size]
        x = self._maybe_flip(to_unit_range(patch), g)
        label = torch.tensor(label, dtype=torch.int64)
        if self.low_res_size is None:
            return x, label
        return x, label, downsample(x, self.low_res_size)


# --------------------------------------------------------------------------------------------
# offline: digits rendered with the TrueType fonts that matplotlib ships

GLYPH_CLASSES = "0123456789"
_GLYPH_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# typefaces held out for the test split: one from each family (unseen shapes, not just unseen
# distortions); every other usable font is a training font
GLYPH_TEST_FONTS = ("DejaVuSansMono-BoldOblique", "DejaVuSerif-Italic", "STIXGeneralBol", "cmss10", "cmti10")
GLYPH_CACHE_VERSION = 2


def _matplotlib_font_dir() -> str:
    import matplotlib

    return os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")


def font_has_digits(path: str) -> bool:
    """True when the font maps each of "0".."9" to a glyph named zero .. nine.

    A missing character maps to glyph 0 (the font would draw a blank or a "tofu" box), and
    symbol fonts (cmsy10, cmex10, STIX size variants) or fallback fonts (LastResort) map the
    ASCII codes to other glyphs: all are rejected. Old-style figures (cmmi10) are rejected too.
    """
    from matplotlib.ft2font import FT2Font

    font = FT2Font(path)
    for char, name in zip(GLYPH_CLASSES, _GLYPH_NAMES):
        index = font.get_char_index(ord(char))
        if index == 0 or font.get_glyph_name(index) != name:
            return False
    return True


def glyph_fonts(font_dir: str | None = None) -> list[str]:
    """Sorted font names (file stems) in ``font_dir`` (default: matplotlib's ttf folder) that
    draw all ten digits (:func:`font_has_digits`)."""
    font_dir = font_dir or _matplotlib_font_dir()
    if not os.path.isdir(font_dir):
        raise DataError(f"font folder {font_dir!r} does not exist; glyphs are drawn with matplotlib's "
                        "fonts (pip install matplotlib)")
    names = sorted(f[:-4] for f in os.listdir(font_dir) if f.lower().endswith(".ttf"))
    return [n for n in names if font_has_digits(os.path.join(font_dir, n + ".ttf"))]


def _render_clean_glyphs(font_path: str, canvas: int = 64, box: int = 44) -> torch.Tensor:
    """The ten digits of one font, each scaled to fit a ``box`` x ``box`` square (aspect kept)
    and centred on a black ``canvas``: float [10, canvas, canvas] in [0, 1] (ink = 1)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(font_path, 4 * box // 2)
    out = torch.zeros(len(GLYPH_CLASSES), canvas, canvas)
    for k, char in enumerate(GLYPH_CLASSES):
        big = Image.new("L", (4 * box, 4 * box), 0)
        ImageDraw.Draw(big).text((box // 2, box // 2), char, fill=255, font=font)
        bbox = big.getbbox()
        if bbox is None:
            raise DataError(f"font {os.path.basename(font_path)!r} draws a blank for {char!r}; "
                            "exclude it (glyph_fonts() does)")
        glyph = big.crop(bbox)
        scale = box / max(glyph.size)
        w, h = max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))
        glyph = glyph.resize((w, h), Image.LANCZOS)
        tile = Image.new("L", (canvas, canvas), 0)
        tile.paste(glyph, ((canvas - w) // 2, (canvas - h) // 2))
        out[k] = torch.from_numpy(np.asarray(tile, dtype=np.float32) / 255.0)
    return out


def _distort(clean: torch.Tensor, g: torch.Generator, rotate: float = 12.0, shear: float = 0.2,
             scale: tuple = (0.8, 1.05), shift: float = 0.08, elastic: float = 0.03) -> torch.Tensor:
    """Random affine + elastic warp and stroke-width change of glyphs [N, S, S] in [0, 1].

    One ``grid_sample`` applies x -> A x + b + d(x): A a rotation (+-``rotate`` degrees), shear
    (+-``shear``) and isotropic ``scale``, b a shift (+-``shift`` of the half-width), d a smooth
    random displacement (a 4x4 grid of N(0, ``elastic``^2) offsets, bicubically upsampled).
    Then strokes are thinned (3x3 erosion), kept, or thickened (3x3 dilation) with
    probabilities 0.15, 0.45, 0.4 (thin fonts would fade at 16x16 if thinned more often; a
    glyph whose erosion would leave no pixel above 0.75 is kept as it is, and one whose 2x2
    box average stays below 0.75, a hairline, is thickened). Returns [N, S, S] in [0, 1].
    """
    n, size = clean.shape[0], clean.shape[-1]
    u = lambda *shape: torch.rand(shape, generator=g) * 2 - 1  # noqa: E731  U(-1, 1)
    angle = u(n) * math.radians(rotate)
    zoom = scale[0] + (scale[1] - scale[0]) * torch.rand(n, generator=g)
    cos, sin, sh = angle.cos(), angle.sin(), u(n) * shear
    # output -> input coordinates: inverse zoom, rotation and shear (theta of affine_grid)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos / zoom, (-sin + sh * cos) / zoom
    theta[:, 1, 0], theta[:, 1, 1] = sin / zoom, cos / zoom
    theta[:, :, 2] = u(n, 2) * shift
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    offsets = torch.randn(n, 2, 4, 4, generator=g) * elastic
    grid = grid + F.interpolate(offsets, size=(size, size), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    warped = F.grid_sample(clean[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    stroke = torch.multinomial(torch.tensor([0.15, 0.45, 0.4]), n, replacement=True, generator=g)
    thick = F.max_pool2d(warped, 3, stride=1, padding=1)
    thin = -F.max_pool2d(-warped, 3, stride=1, padding=1)
    thin_ok = thin.amax(dim=(1, 2, 3)) > 0.75  # never erode a hairline glyph into a faint one
    out = torch.where(((stroke == 0) & thin_ok).view(n, 1, 1, 1), thin, warped)
    out = torch.where((stroke == 2).view(n, 1, 1, 1), thick, out)
    faint = F.avg_pool2d(out, 2).amax(dim=(1, 2, 3)) < 0.75  # hairlines would fade at 32x32
    out = torch.where(faint.view(n, 1, 1, 1), thick, out)
    return out[:, 0].clamp(0, 1)


def _cache_root() -> str:
    """$GCG_CACHE, else ~/.cache/gcg."""
    return os.path.expanduser(os.environ.get("GCG_CACHE") or os.path.join("~", ".cache", "gcg"))


def render_glyphs(fonts, per_font: int, seed: int = 0, size: int = 32, font_dir: str | None = None):
    """Render ``per_font`` distorted copies of each digit in each font, at 64 px, then box-average
    down to ``size`` (antialiasing). Deterministic in (seed, font name, digit).

    :return: (uint8 images [N, 1, size, size], labels int64 [N], font index int64 [N] into ``fonts``),
        N = len(fonts) * 10 * per_font, ordered by font, then digit, then copy.
    """
    font_dir = font_dir or _matplotlib_font_dir()
    canvas = 64
    if canvas % size:
        raise DataError(f"glyph size must divide {canvas}, got {size}")
    images, labels, font_ids = [], [], []
    for f, name in enumerate(fonts):
        clean = _render_clean_glyphs(os.path.join(font_dir, name + ".ttf"), canvas)
        g = _generator(3, seed, zlib.crc32(name.encode()))
        warped = _distort(clean.repeat_interleave(per_font, dim=0), g)
        small = downsample(warped[:, None], size)
        images.append((small * 255).round().to(torch.uint8))
        labels.append(torch.arange(10).repeat_interleave(per_font))
        font_ids.append(torch.full((10 * per_font,), f))
    return torch.cat(images), torch.cat(labels), torch.cat(font_ids)


def _glyph_split(split: str, seed: int, per_font: int):
    """(uint8 [N, 1, 32, 32], labels [N], font ids [N], font names) of one split, cached on disk."""
    usable = glyph_fonts()
    missing = [f for f in GLYPH_TEST_FONTS if f not in usable]
    if missing:
        raise DataError(f"test fonts {missing} are not among matplotlib's usable fonts {usable}; "
                        "is matplotlib's mpl-data/fonts/ttf folder complete?")
    fonts = [f for f in usable if (f in GLYPH_TEST_FONTS) == (split == "test")]
    path = os.path.join(_cache_root(), f"glyphs-v{GLYPH_CACHE_VERSION}-{split}-seed{seed}-{per_font}.pt")
    if os.path.exists(path):
        cached = torch.load(path, weights_only=True)
        if cached["fonts"] == fonts:
            return cached["images"], cached["labels"], cached["font_ids"], fonts
    images, labels, font_ids = render_glyphs(fonts, per_font, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"  # atomic: readers see the old file or the whole new one
    torch.save({"images": images, "labels": labels, "font_ids": font_ids, "fonts": fonts}, tmp)
    os.replace(tmp, path)
    return images, labels, font_ids, fonts


def load_glyphs(split: str = "train", image_size: int = 32, seed: int = 0, per_font: int | None = None,
                random_flip: bool = False) -> TensorImageDataset:
    """Digits 0-9 drawn with matplotlib's TrueType fonts, distorted, at 32x32 or 16x16 (1 channel).

    Each usable font (:func:`glyph_fonts`: DejaVu Sans / Sans Mono / Serif in four styles,
    STIXGeneral in four, Computer Modern cmr10, cmb10, cmss10, cmti10, cmtt10) draws every digit
    ``per_font`` times (default 48 train, 24 test) with a random affine and elastic warp and
    stroke-width change (:func:`render_glyphs`), white on black, box-averaged from 64 px.
    The split is by typeface: ``"test"`` holds only the fonts in ``GLYPH_TEST_FONTS``, never
    seen in training. 16x16 images are the box average of the 32x32 ones (``downsample``), so a
    16 -> 32 super-resolution pair is exact. Deterministic in ``seed``; rendered once (a few
    seconds) and cached in $GCG_CACHE or ~/.cache/gcg. Attributes: ``font_ids`` [N],
    ``font_names``; ``.as_tensors()`` gives images [N, 1, S, S] in [-1, 1] and labels [N].
    """
    if split not in ("train", "test"):
        raise DataError(f"glyphs split must be 'train' or 'test', got {split!r}")
    if image_size not in (8, 16, 32):
        raise DataError(f"glyphs come at 32x32 or box-averaged to 16x16 or 8x8, got image_size={image_size}")
    per_font = per_font or (48 if split == "train" else 24)
    if per_font < 1:
        raise DataError(f"per_font must be >= 1, got {per_font}")
    images, labels, font_ids, fonts = _glyph_split(split, seed, per_font)
    x = to_unit_range(images)
    if image_size != 32:
        x = downsample(x, image_size)
    ds = TensorImageDataset(x, labels, random_flip=random_flip, class_names=list(GLYPH_CLASSES))
    ds.font_ids, ds.font_names = font_ids, fonts
    return ds


# --------------------------------------------------------------------------------------------
# offline: analytic toys


class ToyDataset(Dataset):
    """``num_samples`` draws of an analytic toy (``gcg.toy``), fixed by ``seed``: any object
    with ``sample(n, generator) -> (x [n, D], y [n])``. Item: (x [D], label)."""

    def __init__(self, toy, num_samples: int = 10_000, seed: int = 0):
        self.toy = toy
        x, y = toy.sample(num_samples, generator=torch.Generator().manual_seed(seed))
        self.x = x.to(torch.float32)
        self.labels = (torch.zeros(len(x), dtype=torch.int64) if y is None else y.to(torch.int64))
        self.num_classes = getattr(toy, "num_classes", int(self.labels.max()) + 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        index = _check_index(index, len(self))
        return self.x[index], self.labels[index]


def _default_toy_mixture():
    """The book's class-labelled 2-D mixture, ``gcg.toy.GaussianMixture.ring()``."""
    from gcg.toy import GaussianMixture

    return GaussianMixture.ring()


# --------------------------------------------------------------------------------------------
# registry


def _needs_dir(name, data_dir):
    if data_dir is None:
        raise DataError(f"data set {name!r} reads files from disk: pass data_dir (--data-dir)")
    return data_dir


def _imagenet64(data_dir, image_size, split, **kw):
    kw.setdefault("random_flip", split == "train")
    return ImageNet64Npz(_needs_dir("imagenet64", data_dir), split=split, image_size=image_size, **kw)


def _image_folder(name, default_size):
    def build(data_dir, image_size, split, **kw):
        kw.setdefault("random_flip", split == "train")
        return ImageFolderDataset(_needs_dir(name, data_dir), image_size or default_size, **kw)
    return build


def _torchvision(name, flip):
    def build(data_dir, image_size, split, **kw):
        kw.setdefault("random_flip", flip and split == "train")
        return load_torchvision_dataset(name, data_dir, image_size, split, **kw)
    return build


def _digits(data_dir, image_size, split, **kw):
    return load_digits_dataset(split, image_size or 8, **kw)


def _photo_patches(data_dir, image_size, split, **kw):
    return PhotoPatches(image_size or 32, split, **kw)


def _glyphs(data_dir, image_size, split, **kw):
    return load_glyphs(split, image_size or 32, **kw)


def _toy_gmm(data_dir, image_size, split, num_samples=10_000, seed=None, toy=None, **kw):
    if kw:
        raise DataError(f"toy-gmm takes num_samples, seed and toy; got unexpected {sorted(kw)}")
    seed = (0 if split == "train" else 1) if seed is None else seed
    return ToyDataset(toy if toy is not None else _default_toy_mixture(), num_samples, seed)


# name -> (builder(data_dir, image_size, split, **kw), one-line description)
DATASETS = {
    "imagenet64": (_imagenet64, "official downsampled ImageNet 64x64 .npz batches (needs data_dir)"),
    "imagenet64-folder": (_image_folder("imagenet64-folder", 64), "ImageNet as an image folder, ADM crop to 64 (needs data_dir)"),
    "image-folder": (_image_folder("image-folder", None), "any image folder, class sub-directories or <class>_<name>.png"),
    "cifar10": (_torchvision("cifar10", True), "CIFAR-10 via torchvision (downloads once)"),
    "mnist": (_torchvision("mnist", False), "MNIST via torchvision, padded to 32 if asked (downloads once)"),
    "fashion-mnist": (_torchvision("fashion-mnist", False), "Fashion-MNIST via torchvision (downloads once)"),
    "digits": (_digits, "scikit-learn 8x8 digits, 10 classes, offline"),
    "photo-patches": (_photo_patches, "patches of scikit-image photographs, class = photo, offline"),
    "glyphs": (_glyphs, "digits drawn with matplotlib's fonts, 32x32 or 16x16, split by font, offline"),
    "toy-gmm": (_toy_gmm, "samples of the class-labelled 2-D Gaussian mixture, offline"),
}


def make_dataset(name: str, data_dir: str | None = None, image_size: int | None = None,
                 split: str = "train", **kw) -> Dataset:
    """Build data set ``name`` (see ``DATASETS``). Training splits of natural images get random
    horizontal flips by default (pass ``random_flip=False`` to turn them off); digits and
    MNIST-like sets are not flipped. Extra keywords go to the data set's constructor."""
    if name not in DATASETS:
        lines = "\n".join(f"  {k:18s} {desc}" for k, (_, desc) in DATASETS.items())
        raise DataError(f"unknown data set {name!r}; valid names:\n{lines}")
    builder = DATASETS[name][0]
    if name == "image-folder" and image_size is None:
        raise DataError("'image-folder' needs image_size")
    try:
        return builder(data_dir, image_size, split, **kw)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise DataError(f"data set {name!r}: {e}") from None
        raise


# --------------------------------------------------------------------------------------------
# loader


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
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size), got rank {rank}, world_size {world_size}")
        if seed < 0 or start_step < 0:
            raise ValueError(f"seed and start_step must be >= 0, got {seed} and {start_step}")
        n = len(dataset)
        per_rank = n // world_size
        self.batches_per_epoch = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"a data set of {n} examples over {world_size} rank(s) gives {per_rank} per "
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
        order = (torch.randperm(n, generator=_generator(0, self.seed, epoch)) if self.shuffle
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
                            generator=_generator(1, self.seed, epoch))
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
