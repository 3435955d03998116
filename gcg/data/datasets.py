"""The data sets besides ImageNet's batches: image folders, torchvision's MNIST / Fashion-MNIST /
CIFAR-10, and the offline sets (scikit-learn digits, scikit-image photo patches, analytic toys).
Digits drawn with fonts are in `gcg.data.glyphs`."""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import Dataset

from gcg.data.base import IMAGE_EXTENSIONS, AugmentedDataset, TensorImageDataset, check_index, item_rng
from gcg.data.errors import DataError, DataUnavailable
from gcg.data.transforms import center_crop_arr, fit_size, random_crop_arr, to_channels
from gcg.images import downsample, to_unit_range
from gcg.toy import GaussianMixture

DEFAULT_DATA_ROOT = os.path.join("~", ".cache", "gcg", "data")


# --------------------------------------------------------------------------------------------
# image folders (ADM layout and class sub-directories)


def _list_images(folder: str) -> list[str]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
    return found


class ImageFolderDataset(AugmentedDataset):
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
            raise DataUnavailable(f"image folder {data_dir} does not exist: {how}")
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
            raise DataUnavailable(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {data_dir}: {how}")
        self.files, self.layout = files, layout
        self.class_names = sorted(set(names)) if class_cond else [""]
        index = {c: i for i, c in enumerate(self.class_names)}
        self.labels = torch.tensor([index[c] if class_cond else 0 for c in names], dtype=torch.int64)
        self.num_classes = len(self.class_names)
        self.image_size, self.random_flip, self.random_crop = image_size, random_flip, random_crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        index = check_index(index, len(self))
        g = self._item_rng(index)
        try:
            with Image.open(self.files[index]) as im:
                im.load()
                im = im.convert("RGB")
        except OSError as e:
            raise DataUnavailable(f"cannot read image {self.files[index]}: {e}") from None
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
    :class:`DataUnavailable` says where to put them.
    """
    if name not in _TORCHVISION:
        raise DataError(f"unknown torchvision data set {name!r}; choose from {sorted(_TORCHVISION)}")
    if split not in ("train", "test"):
        raise DataError(f"{name} split must be 'train' or 'test', got {split!r}")
    cls_name, native, native_channels, default_mode = _TORCHVISION[name]
    root = os.path.expanduser(data_dir or os.environ.get("GCG_DATA_DIR") or DEFAULT_DATA_ROOT)
    cls = getattr(torchvision.datasets, cls_name)
    try:
        ds = cls(root, train=(split == "train"), download=False)
    except RuntimeError:
        if not download:
            raise DataUnavailable(f"{name} not found in {root} and download=False: download it once with "
                            f"download=True (needs internet), or copy torchvision's {cls_name} files "
                            f"into {root}") from None
        try:
            ds = cls(root, train=(split == "train"), download=True)
        except Exception as e:  # no internet: URLError, socket errors, torchvision's RuntimeError
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataUnavailable(f"could not download {name} into {root} ({type(e).__name__}: {reason}). "
                            f"This needs internet once; otherwise copy torchvision's {cls_name} files "
                            f"into {root}, or use an offline set: 'digits' or 'photo-patches'.") from None
    images = torch.as_tensor(np.asarray(ds.data))
    images = images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)  # -> NCHW
    images = to_channels(images.contiguous(), channels or native_channels)
    images = fit_size(images, image_size or native, resize_mode or default_mode, fill=0)
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
        images = fit_size(images, image_size, "resize", fill=-1.0).clamp(-1, 1)
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
        raise DataUnavailable(f"skimage.data.{name}() is not available offline ({type(e).__name__}); "
                        f"use photos that ship with scikit-image, e.g. {list(DEFAULT_PHOTOS)}") from None
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise DataError(f"skimage.data.{name}() is not a uint8 photograph (dtype {arr.dtype}, shape {arr.shape})")
    arr = arr[..., :3] if arr.ndim == 3 else arr[..., None]
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


class PhotoPatches(AugmentedDataset):
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
            img = to_channels(_load_photo(name)[None], channels)[0]
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
        index = check_index(index, len(self))
        label = index // self.patches_per_class
        g = self._item_rng(index) if self.split == "train" else item_rng(2, index)
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
        index = check_index(index, len(self))
        return self.x[index], self.labels[index]


def default_toy_mixture():
    """The book's class-labelled 2-D mixture, ``gcg.toy.GaussianMixture.ring()``."""
    return GaussianMixture.ring()
