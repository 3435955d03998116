"""Image operations of the data sets: fit to a size (pad or resize), grey <-> colour, and the ADM
reference's resize-and-crop of PIL images (centre crop, random crop). Value ranges and box
downsampling live in `gcg.images`."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gcg.data.errors import DataError


def fit_size(images: torch.Tensor, size: int, mode: str, fill: float) -> torch.Tensor:
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


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
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


def _resize_short_side(pil_image, short: int):
    """ADM's resize: halve with BOX filtering while the short side is >= 2 * short, then
    BICUBIC so the short side is ``short``. -> uint8 array [H, W, C]."""
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
