"""The noise-aware classifier p_phi(y | x_t, t) of classifier guidance
(Dhariwal & Nichol 2021, Sec. 4.1): the UNet's downsampling trunk and middle block, then a head.

Heads: ``pool="attention"`` (attention pooling over the final 8x8 map, as in the released
classifiers) or ``pool="adaptive"`` (GroupNorm, SiLU, global average pooling, 1x1 conv).
"""

import torch
import torch.nn as nn

from gcg.nn.config import ClassifierConfig
from gcg.nn.layers import AttentionPool2d, GroupNorm32, TimestepEmbedMLP, _silu_, zero_module
from gcg.nn.unet import build_encoder


class EncoderUNetModel(nn.Module):
    """``classifier(x, timesteps) -> logits``: x [N, C, S, S] (S = image_size), timesteps [N] -> [N, num_classes].

    Logits are returned in float32 (also under autocast). Build from a ClassifierConfig or its fields.
    """

    def __init__(self, config=None, **kwargs):
        super().__init__()
        if config is None:
            config = ClassifierConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a ClassifierConfig or keyword fields, not both")
        if not isinstance(config, ClassifierConfig):
            raise TypeError(f"EncoderUNetModel expects a ClassifierConfig, got {type(config).__name__}")
        self.config = cfg = config
        emb_dim = 4 * cfg.model_channels
        self.time_embed = TimestepEmbedMLP(cfg.model_channels, emb_dim)
        self.input_conv, self.down_blocks, self.middle_block, _, ch, rate = build_encoder(cfg, emb_dim)
        self.out_norm = GroupNorm32(ch)
        if cfg.pool == "attention":
            self.pool = AttentionPool2d(cfg.image_size // rate, ch, cfg.num_head_channels if cfg.num_head_channels > 0
                                        else ch // cfg.num_heads, cfg.num_classes)
        else:
            self.out_proj = zero_module(nn.Conv2d(ch, cfg.num_classes, 1))

    def forward(self, x, timesteps):
        cfg = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"x must be [N, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}], got {tuple(x.shape)}"
            )
        if timesteps.shape != (x.shape[0],):
            raise ValueError(f"timesteps must have shape [{x.shape[0]}], got {tuple(timesteps.shape)}")
        emb = self.time_embed(timesteps)
        h = self.input_conv(x)
        for block in self.down_blocks:
            h = block(h, emb)
        h = _silu_(self.out_norm(self.middle_block(h, emb)))
        if cfg.pool == "attention":
            return self.pool(h).float()
        return self.out_proj(h.mean(dim=(2, 3), keepdim=True)).flatten(1).float()
