"""Offline: digits 0-9 drawn with the TrueType fonts that matplotlib ships (`load_glyphs`)."""

from __future__ import annotations

import math
import os
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from gcg.data.base import TensorImageDataset, torch_generator
from gcg.data.errors import DataError, DataUnavailable
from gcg.images import downsample, to_unit_range


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
        raise DataUnavailable(f"font folder {font_dir!r} does not exist; glyphs are drawn with matplotlib's "
                              "fonts (pip install matplotlib)")
    names = sorted(f[:-4] for f in os.listdir(font_dir) if f.lower().endswith(".ttf"))
    return [n for n in names if font_has_digits(os.path.join(font_dir, n + ".ttf"))]


def _render_clean_glyphs(font_path: str, canvas: int = 64, box: int = 44) -> torch.Tensor:
    """The ten digits of one font, each scaled to fit a ``box`` x ``box`` square (aspect kept)
    and centred on a black ``canvas``: float [10, canvas, canvas] in [0, 1] (ink = 1)."""
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
        g = torch_generator(3, seed, zlib.crc32(name.encode()))
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
