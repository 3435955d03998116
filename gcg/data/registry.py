"""The data sets by name: `DATASETS` and `make_dataset` (what ``--dataset`` accepts)."""

from __future__ import annotations

from torch.utils.data import Dataset

from gcg.data.datasets import (ImageFolderDataset, PhotoPatches, ToyDataset, default_toy_mixture,
                               load_digits_dataset, load_torchvision_dataset)
from gcg.data.errors import DataError
from gcg.data.glyphs import load_glyphs
from gcg.data.imagenet import ImageNet64Npz


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
    return ToyDataset(toy if toy is not None else default_toy_mixture(), num_samples, seed)


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
