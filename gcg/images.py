"""Image tensors: value ranges, box downsampling, and the sample grids every chapter shows.

Pure torch (+ matplotlib for `plot_image_grid`): the maths modules may import this, it never
reads files. Images are float [N, C, H, W] in [-1, 1] (ADM's convention) unless said otherwise.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

__all__ = ["to_unit_range", "to_uint8", "downsample", "image_grid", "enlarge_for_grid", "plot_image_grid"]


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 in 0..255 -> float32 in [-1, 1] (x / 127.5 - 1, as in ADM)."""
    return x.to(torch.float32) / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (the ADM rounding: (x + 1) * 127.5)."""
    x = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def downsample(x: torch.Tensor, size) -> torch.Tensor:
    """Box (area) average down to ``size``: x [N, C, H, W] or [C, H, W] -> [.., C, h, w].

    Each output pixel is the mean of an (H/h) x (W/w) block, the low-resolution conditioning
    input of a super-resolution stage (Ho et al. 2021, Sec. 3). H and W must be multiples of
    h and w.
    """
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if x.dim() not in (3, 4):
        raise ValueError(f"downsample expects [N, C, H, W] or [C, H, W], got shape {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if h <= 0 or w <= 0 or H % h or W % w:
        raise ValueError(
            f"downsample needs the image size {H}x{W} to be a multiple of the target {h}x{w} "
            "(box averaging over whole blocks); pick a target that divides the image size"
        )
    if not x.is_floating_point():
        x = x.to(torch.float32)
    batched = x if x.dim() == 4 else x[None]
    out = F.avg_pool2d(batched, kernel_size=(H // h, W // w))
    return out if x.dim() == 4 else out[0]


def image_grid(images: torch.Tensor, nrow: int | None = None, *, tile: int | None = None,
               padding: int | None = None, pad_value: float = 1.0) -> np.ndarray:
    """Tile images into one picture with visible separators, small images enlarged.

    images: [N, C, H, W] in [-1, 1] (C = 1 or 3). nrow: images per row (default ~sqrt(N)).
    tile: displayed tile size in pixels; each image is enlarged by nearest-neighbour
    upsampling to the largest integer multiple of H not above it (default: 32 px or more, so
    8x8 digits become 32x32 blocks of visible pixels). padding: separator width in displayed
    pixels (default: tile / 16, at least 2). pad_value: separator colour in [0, 1]
    (1 = white, 0.5 = grey). Returns uint8 [rows, cols, 3] ready for ``plt.imshow`` or PIL.
    """
    x, pad = enlarge_for_grid(images, tile, padding)
    grid = make_grid(x, nrow=nrow or math.ceil(math.sqrt(len(x))), padding=pad, pad_value=pad_value)
    return (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def enlarge_for_grid(images: torch.Tensor, tile: int | None = None,
                     padding: int | None = None) -> tuple[torch.Tensor, int]:
    """The tiles of `image_grid` before tiling: images [N, C, H, W] in [-1, 1] -> ([N, 3, sH, sW]
    in [0, 1], separator width), s = the largest integer with s * H <= tile (default tile:
    max(32, H)), at least 1; nearest-neighbour, so each pixel becomes an s x s block. Feed the
    result to ``torchvision.utils.make_grid`` or ``save_image`` with ``padding`` = the width."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"an image grid needs images [N, C, H, W] with C = 1 or 3, got shape "
                         f"{tuple(images.shape)}; vector samples need a scatter plot instead")
    if len(images) == 0:
        raise ValueError("an image grid needs at least one image, got N = 0")
    h = images.shape[-2]
    scale = max(1, (tile or max(32, h)) // h)
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2)
    if scale > 1:
        x = F.interpolate(x, scale_factor=scale, mode="nearest")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    pad = padding if padding is not None else max(2, (h * scale) // 16)
    return x, pad


def plot_image_grid(ax, images: torch.Tensor, nrow: int | None = None, *,
                    row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
                    tile_text: Sequence[str] | None = None, title: str | None = None,
                    tile: int | None = None, pad_value: float = 1.0, text_color: str = "tab:red",
                    fontsize: float = 7):
    """Draw `image_grid(images, nrow)` on a matplotlib axes, with optional labels.

    row_labels / col_labels: one string per grid row / column (e.g. the guidance scale per row,
    the requested class per column). tile_text: one short string per image, written in the
    tile's top-left corner (e.g. a classifier probability). Returns the axes.
    """
    n = images.shape[0]
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = image_grid(images, nrow, tile=tile, pad_value=pad_value)
    ax.imshow(grid, interpolation="nearest")
    step_y = grid.shape[0] / rows  # grid height = rows * (tile + pad) + pad
    step_x = grid.shape[1] / nrow
    if tile_text is not None:
        if len(tile_text) != n:
            raise ValueError(f"tile_text has {len(tile_text)} strings for {n} images")
        for i, text in enumerate(tile_text):
            r, c = divmod(i, nrow)
            ax.text(c * step_x + 0.12 * step_x, r * step_y + 0.12 * step_y, text, color=text_color,
                    fontsize=fontsize, va="top", ha="left",
                    bbox=dict(facecolor="white", alpha=0.7, lw=0, pad=0.5))
    ax.set_xticks([(c + 0.5) * step_x for c in range(nrow)] if col_labels is not None else [])
    ax.set_yticks([(r + 0.5) * step_y for r in range(rows)] if row_labels is not None else [])
    if col_labels is not None:
        ax.set_xticklabels(col_labels)
        ax.xaxis.tick_top()
    if row_labels is not None:
        ax.set_yticklabels(row_labels)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title)
    return ax
