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

Errors: :class:`DataError` (a ``ValueError``) for a bad name, split or size, and its subclass
:class:`DataUnavailable` when files are missing or unreadable or a download fails; the message
names the problem and the fix.

The modules: ``errors``; ``base`` (seeding, in-memory images); ``transforms`` (resize, crop,
channels); ``archive`` (.npz headers, memory-mapping); ``imagenet``; ``datasets`` (image folders,
torchvision, digits, photo patches, toys); ``glyphs``; ``registry`` (:func:`make_dataset`);
``loader`` (:func:`make_loader`).
"""

from gcg.data.base import IMAGE_EXTENSIONS, TensorImageDataset
from gcg.data.datasets import (DEFAULT_DATA_ROOT, DEFAULT_PHOTOS, ImageFolderDataset, PhotoPatches, ToyDataset,
                               load_digits_dataset, load_torchvision_dataset)
from gcg.data.errors import DataError, DataUnavailable
from gcg.data.glyphs import (GLYPH_CACHE_VERSION, GLYPH_CLASSES, GLYPH_TEST_FONTS, _matplotlib_font_dir,
                             font_has_digits, glyph_fonts, load_glyphs, render_glyphs)
from gcg.data.imagenet import IMAGENET64_URL, ImageNet64Npz
from gcg.data.loader import InfiniteLoader, make_loader
from gcg.data.registry import DATASETS, make_dataset
from gcg.data.transforms import center_crop_arr, random_crop_arr
from gcg.images import downsample, to_unit_range  # noqa: F401  (re-exported: gcg.data.downsample in chapter 06)

__all__ = [
    "DataError",
    "DataUnavailable",
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
