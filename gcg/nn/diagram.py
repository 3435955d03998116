"""A UNet diagram drawn from its config: resolutions, channels, blocks and where attention sits.

`unet_levels(config)` lists what each resolution level holds (pure data, tested);
`draw_unet(ax, config)` draws it on a matplotlib Axes (no pyplot state), with the down path on the
left, the up path on the right, skip connections across and the middle block at the bottom.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import UNetConfig
from .layers import resolve_num_heads

__all__ = ["UNetLevel", "unet_levels", "draw_unet"]

ATTENTION_COLOR = "#f4a261"
PLAIN_COLOR = "#a8dadc"
MIDDLE_COLOR = "#e9c46a"


@dataclass(frozen=True)
class UNetLevel:
    """One resolution level of the UNet (level 0 = full resolution)."""

    resolution: int  # feature-map side, H = W
    channels: int  # model_channels * channel_mult[level]
    down_blocks: int  # residual blocks on the down path (num_res_blocks)
    up_blocks: int  # residual blocks on the up path (num_res_blocks + 1, one per skip)
    skips: int  # skip connections from the down to the up path at this level
    attention_heads: int  # heads of the down-path attention after each block; 0 = no attention
    up_attention_heads: int  # the same on the up path (num_heads_upsample)


def unet_levels(config: UNetConfig) -> list[UNetLevel]:
    """What each resolution level of `UNetModel(config)` holds, from the top (full resolution) down.

    Every down-path block's output (and the input convolution's or the downsampler's output) is
    kept as a skip, so each level passes num_res_blocks + 1 skips to the up path, which has one
    residual block per skip.
    """
    if not isinstance(config, UNetConfig):
        raise TypeError(f"unet_levels expects a UNetConfig, got {type(config).__name__}")
    levels = []
    for level, mult in enumerate(config.channel_mult):
        resolution = config.image_size // 2 ** level
        channels = int(mult * config.model_channels)
        attends = resolution in config.attention_resolutions
        heads = resolve_num_heads(channels, config.num_heads, config.num_head_channels) if attends else 0
        up_heads = (resolve_num_heads(channels, config.num_heads_upsample, config.num_head_channels)
                    if attends else 0)
        levels.append(UNetLevel(resolution, channels, config.num_res_blocks, config.num_res_blocks + 1,
                                config.num_res_blocks + 1, heads, up_heads))
    return levels


def _box(ax, x, y, width, height, text, color, fontsize):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                boxstyle="round,pad=0.02,rounding_size=0.05", facecolor=color,
                                edgecolor="0.25", lw=0.8))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, text=None, style="-|>", ls="-", fontsize=7, color="0.2", offset=(0.06, 0)):
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle=style, color=color, lw=1.0, ls=ls, shrinkA=0, shrinkB=0))
    if text:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text,
                fontsize=fontsize, ha="left" if offset[0] >= 0 else "right", va="center", color=color)


def draw_unet(ax, config: UNetConfig, *, title: str | None = None, fontsize: float = 7):
    """Draw the UNet of `config` on the matplotlib Axes `ax`; returns `ax`.

    One box per level and path, labelled with resolution, channels and residual blocks; boxes
    with self-attention are orange and name their heads. Box width grows with the channel count.
    Dashed arrows are the skip connections (how many per level), vertical arrows the
    down/up-sampling (strided conv / nearest + conv, or BigGAN residual blocks).
    """
    levels = unet_levels(config)
    n = len(levels)
    widest = max(lv.channels for lv in levels)
    row = 1.0  # vertical distance between levels
    left, right, height = 0.0, 4.0, 0.7

    def width(channels):
        return 1.3 + 0.5 * channels / widest

    def heads_text(heads, channels):
        return f"\n+ attention, {heads} head{'s' if heads > 1 else ''} × {channels // heads} ch"

    down_kind = "BigGAN ResBlock ↓2" if config.resblock_updown else ("conv, stride 2" if config.conv_resample
                                                                    else "avg-pool ↓2")
    up_kind = "BigGAN ResBlock ↑2" if config.resblock_updown else ("nearest ×2 + conv" if config.conv_resample
                                                                  else "nearest ×2")
    for i, lv in enumerate(levels):
        y = -i * row
        size = f"{lv.resolution}×{lv.resolution} · {lv.channels} ch"
        down_text = f"{size}\n{lv.down_blocks} ResBlock{'s' if lv.down_blocks > 1 else ''}"
        up_text = f"{size}\n{lv.up_blocks} ResBlocks"
        if lv.attention_heads:
            down_text += heads_text(lv.attention_heads, lv.channels)
            up_text += heads_text(lv.up_attention_heads, lv.channels)
        color = ATTENTION_COLOR if lv.attention_heads else PLAIN_COLOR
        _box(ax, left, y, width(lv.channels), height, down_text, color, fontsize)
        _box(ax, right, y, width(lv.channels), height, up_text, color, fontsize)
        _arrow(ax, (left + width(lv.channels) / 2, y), (right - width(lv.channels) / 2, y),
               f"{lv.skips} skips", ls="--", fontsize=fontsize - 1, color="0.45", offset=(-0.25, 0.1))
        if i < n - 1:
            _arrow(ax, (left, y - height / 2), (left, y - row + height / 2), down_kind, fontsize=fontsize - 1)
            _arrow(ax, (right, y - row + height / 2), (right, y - height / 2), up_kind, fontsize=fontsize - 1)
    bottom = levels[-1]
    y_mid = -n * row
    mid_heads = resolve_num_heads(bottom.channels, config.num_heads, config.num_head_channels)
    _box(ax, (left + right) / 2, y_mid, 2.6, height,
         f"middle · {bottom.resolution}×{bottom.resolution} · {bottom.channels} ch\n"
         f"ResBlock, attention ({mid_heads} head{'s' if mid_heads > 1 else ''} × {bottom.channels // mid_heads} ch), ResBlock", MIDDLE_COLOR, fontsize)
    _arrow(ax, (left, -(n - 1) * row - height / 2), ((left + right) / 2 - 0.9, y_mid + height / 2))
    _arrow(ax, ((left + right) / 2 + 0.9, y_mid + height / 2), (right, -(n - 1) * row - height / 2))
    top = levels[0]
    in_ch = config.in_channels * (2 if config.super_res else 1)
    _arrow(ax, (left, 0.95 * row), (left, height / 2), f"x_t: {in_ch}×{top.resolution}×{top.resolution} → 3×3 conv",
           fontsize=fontsize)
    _arrow(ax, (right, height / 2), (right, 0.95 * row),
           f"GN, SiLU, 3×3 conv → {config.output_channels}×{top.resolution}×{top.resolution}", fontsize=fontsize)
    conditioning = "t" + (", y" if config.num_classes is not None else "")
    ax.text((left + right) / 2, 1.2 * row,
            f"embedding of {conditioning} ({4 * config.model_channels} ch) → every ResBlock "
            f"({'AdaGN' if config.use_scale_shift_norm else 'added before GroupNorm'})",
            ha="center", va="center", fontsize=fontsize, style="italic")
    ax.set_xlim(left - 1.2, right + 1.2)
    ax.set_ylim(y_mid - 0.6 * row, 1.45 * row)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=fontsize + 2)
    return ax
