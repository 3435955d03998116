"""The ADM UNet (Dhariwal & Nichol 2021, Sec. 3), with the super-resolution and
conditioning-augmentation inputs of Cascaded Diffusion Models (Ho et al. 2021, Sec. 3-4).

Layout (module names used in gcg state dicts; ``gcg.convert`` maps OpenAI's names onto them):
``time_embed`` -> ``input_conv`` -> ``down_blocks`` (ResAttnBlock per res block, a downsampler
per level) -> ``middle_block`` -> ``up_blocks`` (each concatenates one skip) -> ``out_norm``,
``out_conv``. Every down-path output is a skip for the up path, as in the reference code.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from gcg.nn.config import UNetConfig
from gcg.nn.layers import (AttentionBlock, Downsample, GroupNorm32, ResBlock, TimestepEmbedMLP, Upsample,
                           _autocast_off, _silu_, zero_module)


class ResAttnBlock(nn.Module):
    """A ResBlock, optionally followed by self-attention and by an upsampler (up path only)."""

    def __init__(self, res, attn=None, upsample=None):
        super().__init__()
        self.res = res
        self.attn = attn
        self.upsample = upsample

    def forward(self, x, emb):
        h = self.res(x, emb)
        if self.attn is not None:
            h = self.attn(h)
        if self.upsample is not None:
            h = self.upsample(h, emb)
        return h


class MiddleBlock(nn.Module):
    """ResBlock -> AttentionBlock -> ResBlock at the lowest resolution."""

    def __init__(self, res_1, attn, res_2):
        super().__init__()
        self.res_1, self.attn, self.res_2 = res_1, attn, res_2

    def forward(self, x, emb):
        return self.res_2(self.attn(self.res_1(x, emb)), emb)


def build_encoder(cfg, emb_dim):
    """The downsampling trunk shared by the UNet and the classifier.

    Returns (input_conv, down_blocks, middle_block, skip_channels, channels, final_downsample_rate).
    """
    ch = int(cfg.channel_mult[0] * cfg.model_channels)
    in_ch = cfg.in_channels * (2 if getattr(cfg, "super_res", False) else 1)
    input_conv = nn.Conv2d(in_ch, ch, 3, padding=1)
    res_kwargs = dict(emb_channels=emb_dim, dropout=cfg.dropout, use_scale_shift_norm=cfg.use_scale_shift_norm,
                      use_checkpoint=cfg.use_checkpoint, rescale=cfg.resblock_rescale)
    attn_kwargs = dict(num_heads=cfg.num_heads, num_head_channels=cfg.num_head_channels,
                       use_new_attention_order=cfg.use_new_attention_order, use_checkpoint=cfg.use_checkpoint)
    down_blocks = nn.ModuleList()
    skip_channels = [ch]
    resolution = cfg.image_size
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            out_ch = int(mult * cfg.model_channels)
            attn = AttentionBlock(out_ch, **attn_kwargs) if resolution in cfg.attention_resolutions else None
            down_blocks.append(ResAttnBlock(ResBlock(ch, out_channels=out_ch, **res_kwargs), attn))
            ch = out_ch
            skip_channels.append(ch)
        if level != len(cfg.channel_mult) - 1:
            if cfg.resblock_updown:
                down_blocks.append(ResBlock(ch, down=True, **res_kwargs))
            else:
                down_blocks.append(Downsample(ch, use_conv=cfg.conv_resample))
            skip_channels.append(ch)
            resolution //= 2
    middle_block = MiddleBlock(ResBlock(ch, **res_kwargs), AttentionBlock(ch, **attn_kwargs),
                               ResBlock(ch, **res_kwargs))
    return input_conv, down_blocks, middle_block, skip_channels, ch, cfg.image_size // resolution


class UNetModel(nn.Module):
    """The ADM UNet: ``model(x, timesteps, y=None, low_res=None, aug_level=None)``.

    x [N, C, H, W] (H, W divisible by 2^(levels-1)), timesteps [N] (int or float) ->
    [N, out_channels, H, W], or [N, 2 * out_channels, H, W] with ``learn_sigma`` (first half the
    epsilon/mean prediction, second half the variance values v of Nichol & Dhariwal 2021 Eq. (15)).
    y [N] int64 labels (class-conditional models; with ``class_null``, y=None or y=num_classes
    means "no label"), low_res [N, C, h, w] (``super_res``), aug_level [N] (``aug_level_cond``).
    Build from a UNetConfig or its fields: ``UNetModel(config)`` / ``UNetModel(image_size=8, ...)``.
    """

    def __init__(self, config=None, **kwargs):
        super().__init__()
        if config is None:
            config = UNetConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a UNetConfig or keyword fields, not both")
        if not isinstance(config, UNetConfig):
            raise TypeError(f"UNetModel expects a UNetConfig, got {type(config).__name__}")
        self.config = cfg = config
        emb_dim = 4 * cfg.model_channels
        self.time_embed = TimestepEmbedMLP(cfg.model_channels, emb_dim)
        if cfg.num_classes is not None:
            self.label_embed = nn.Embedding(cfg.num_classes + int(cfg.class_null), emb_dim)
        if cfg.aug_level_cond:
            self.aug_embed = TimestepEmbedMLP(cfg.model_channels, emb_dim)
        (self.input_conv, self.down_blocks, self.middle_block, skip_channels, ch,
         rate) = build_encoder(cfg, emb_dim)

        res_kwargs = dict(emb_channels=emb_dim, dropout=cfg.dropout, use_scale_shift_norm=cfg.use_scale_shift_norm,
                          use_checkpoint=cfg.use_checkpoint, rescale=cfg.resblock_rescale)
        attn_kwargs = dict(num_heads=cfg.num_heads_upsample, num_head_channels=cfg.num_head_channels,
                           use_new_attention_order=cfg.use_new_attention_order, use_checkpoint=cfg.use_checkpoint)
        self.up_blocks = nn.ModuleList()
        resolution = cfg.image_size // rate
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                out_ch = int(mult * cfg.model_channels)
                res = ResBlock(ch + skip_channels.pop(), out_channels=out_ch, **res_kwargs)
                attn = AttentionBlock(out_ch, **attn_kwargs) if resolution in cfg.attention_resolutions else None
                ch = out_ch
                upsample = None
                if level and i == cfg.num_res_blocks:
                    upsample = (ResBlock(ch, up=True, **res_kwargs) if cfg.resblock_updown
                                else Upsample(ch, use_conv=cfg.conv_resample))
                    resolution *= 2
                self.up_blocks.append(ResAttnBlock(res, attn, upsample))
        self.out_norm = GroupNorm32(ch)
        self.out_conv = zero_module(nn.Conv2d(ch, cfg.output_channels, 3, padding=1))

    @property
    def null_label(self):
        """Index of the "no label" embedding row (classifier-free guidance), or None."""
        return self.config.num_classes if self.config.class_null else None

    def _check_inputs(self, x, timesteps, y, low_res, aug_level):
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"x must be [N, {cfg.in_channels}, H, W], got {tuple(x.shape)}")
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"H and W must be divisible by {factor} for this UNet, got {tuple(x.shape[2:])}")
        if timesteps.shape != (x.shape[0],):
            raise ValueError(f"timesteps must have shape [{x.shape[0]}], got {tuple(timesteps.shape)}")
        if cfg.num_classes is None and y is not None:
            raise ValueError("this UNet is unconditional (num_classes=None) but y was given")
        if cfg.num_classes is not None:
            if y is None and not cfg.class_null:
                raise ValueError(f"this UNet is class-conditional ({cfg.num_classes} classes): pass y [N]")
            if y is not None:
                if y.shape != (x.shape[0],):
                    raise ValueError(f"y must have shape [{x.shape[0]}], got {tuple(y.shape)}")
                top = cfg.num_classes + int(cfg.class_null)
                # value check on CPU only: on CUDA it would synchronise, and it breaks torch.compile graphs
                check_values = y.device.type == "cpu" and not torch.compiler.is_compiling()
                if check_values and y.numel() and (int(y.min()) < 0 or int(y.max()) >= top):
                    raise ValueError(f"labels y must lie in [0, {top}), got range [{int(y.min())}, {int(y.max())}]")
        if cfg.super_res != (low_res is not None):
            raise ValueError("super_res models need low_res [N, C, h, w]; other models take none"
                             if cfg.super_res else "low_res given but this UNet has super_res=False")
        if low_res is not None and (low_res.ndim != 4 or low_res.shape[:2] != x.shape[:2]):
            raise ValueError(f"low_res must be [{x.shape[0]}, {cfg.in_channels}, h, w], got {tuple(low_res.shape)}")
        if cfg.aug_level_cond != (aug_level is not None):
            raise ValueError("aug_level_cond models need aug_level [N] (zeros for no augmentation)"
                             if cfg.aug_level_cond else "aug_level given but this UNet has aug_level_cond=False")
        if aug_level is not None and aug_level.shape != (x.shape[0],):
            raise ValueError(f"aug_level must have shape [{x.shape[0]}], got {tuple(aug_level.shape)}")

    def forward(self, x, timesteps, y=None, low_res=None, aug_level=None):
        self._check_inputs(x, timesteps, y, low_res, aug_level)
        emb = self.time_embed(timesteps)
        if self.config.num_classes is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.null_label, dtype=torch.long, device=x.device)
            emb = emb + self.label_embed(y).float()
        if self.config.aug_level_cond:
            emb = emb + self.aug_embed(aug_level)
        h = x
        if low_res is not None:
            # Ho et al. 2021, Sec. 3: the low-resolution image, upsampled, is concatenated to x_t.
            h = torch.cat([h, F.interpolate(low_res, size=x.shape[-2:], mode="bilinear")], dim=1)
        h = self.input_conv(h)
        skips = [h]
        for block in self.down_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.up_blocks:
            h = block(torch.cat([h, skips.pop().to(h.dtype)], dim=1), emb)
        h = _silu_(self.out_norm(h))
        with _autocast_off(h):  # the output layer runs in float32, as in ADM's mixed precision
            return self.out_conv(h.to(self.out_conv.weight.dtype))
