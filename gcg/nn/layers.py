"""Building blocks of the ADM UNet and classifier (Dhariwal & Nichol 2021, Sec. 3).

Every block takes NCHW tensors. Normalisation and the timestep embedding run in float32 even
under ``torch.autocast`` (the paper trains in fp16; these are the precision-sensitive parts).
"""

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils.checkpoint import checkpoint

NORM_GROUPS = 32  # GroupNorm(32, C) everywhere, as in the reference code


def _autocast_device(x):
    return x.device.type if x.device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"


def _autocast_off(x):
    """A context that disables autocast for the device of ``x`` (a no-op context when autocast is off)."""
    device_type = _autocast_device(x)
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def _add_into(out, other):
    """out + other, written into ``out`` when the dtypes agree (``out`` must be a fresh tensor that
    no backward needs, e.g. a convolution's output)."""
    return out.add_(other) if out.dtype == torch.promote_types(out.dtype, other.dtype) else other + out


def _silu_(x):
    """SiLU, in place when no gradient is recorded (saves a tensor-sized allocation while sampling)."""
    return F.silu(x, inplace=not (torch.is_grad_enabled() and x.requires_grad))


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embedding of (possibly fractional) timesteps: [N] -> [N, dim], float32.

    The Transformer position encoding (Vaswani et al. 2017, Sec. 3.5) used by DDPM and ADM:
    emb[:, i] = cos(t * w_i) and emb[:, half + i] = sin(t * w_i), w_i = max_period^(-i / half).
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must have shape [N], got {tuple(timesteps.shape)}")
    half = dim // 2
    with _autocast_off(timesteps):
        freqs = torch.exp(
            -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
        )
        args = timesteps.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedMLP(nn.Module):
    """t [N] -> sinusoid [N, in_dim] -> Linear -> SiLU -> Linear -> [N, emb_dim], in float32."""

    def __init__(self, in_dim, emb_dim):
        super().__init__()
        self.in_dim = in_dim
        self.linear_1 = nn.Linear(in_dim, emb_dim)
        self.linear_2 = nn.Linear(emb_dim, emb_dim)

    def forward(self, t):
        h = timestep_embedding(t, self.in_dim)
        with _autocast_off(h):
            return self.linear_2(F.silu(self.linear_1(h.to(self.linear_1.weight.dtype))))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (autocast off), cast back to the input dtype."""

    def __init__(self, channels):
        if channels % NORM_GROUPS:
            raise ValueError(
                f"GroupNorm({NORM_GROUPS}) needs a channel count divisible by {NORM_GROUPS}, got "
                f"{channels}; choose model_channels * channel_mult multiples of {NORM_GROUPS}"
            )
        super().__init__(NORM_GROUPS, channels)

    def forward(self, x):
        if (x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and not torch.is_autocast_enabled(_autocast_device(x))):
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        with _autocast_off(x):
            out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


def zero_module(module):
    """Zero the parameters of ``module`` (output convs start as the identity residual)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Downsample(nn.Module):
    """Halve H and W: a stride-2 3x3 conv (``use_conv``) or 2x2 average pooling. [N,C,H,W] -> [N,C',H/2,W/2]."""

    def __init__(self, channels, use_conv=True, out_channels=None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        elif out_channels != channels:
            raise ValueError("average-pool downsampling cannot change the channel count; set use_conv=True")
        else:
            self.conv = None

    def forward(self, x, emb=None):
        return self.conv(x) if self.conv is not None else F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour interpolation, then an optional 3x3 conv."""

    def __init__(self, channels, use_conv=True, out_channels=None):
        super().__init__()
        out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x, emb=None):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding ``emb``; optionally resamples (BigGAN-style).

    h = conv1(SiLU(GN(x))); then either AdaGN (``use_scale_shift_norm``, Dhariwal & Nichol 2021
    Sec. 3): h = GN(h) * (1 + y_s) + y_b with [y_s, y_b] = Linear(SiLU(emb)), or addition:
    h = GN(h + Linear(SiLU(emb))). Then out = skip(x) + conv2(dropout(SiLU(h))), divided by
    sqrt(2) when ``rescale`` (the residual rescaling ablation of Table 1). With ``up``/``down``
    the block also resamples both paths (the BigGAN residual up/down-sampling of Table 1).
    Shapes: x [N, C, H, W], emb [N, E] -> [N, C_out, H', W'].
    """

    def __init__(self, channels, emb_channels, dropout=0.0, out_channels=None, use_scale_shift_norm=False,
                 up=False, down=False, use_checkpoint=False, rescale=False):
        super().__init__()
        out_channels = out_channels or channels
        self.out_channels = out_channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.rescale = rescale
        self.up, self.down = up, down
        self.norm1 = GroupNorm32(channels)
        self.conv1 = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.norm2 = GroupNorm32(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def extra_repr(self):
        flags = [f for f in ("up", "down", "rescale", "use_scale_shift_norm") if getattr(self, f)]
        return ", ".join(f"{f}=True" for f in flags)

    def _resample(self, x):
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x, emb):
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x, emb):
        h = _silu_(self.norm1(x))
        h, x = self._resample(h), self._resample(x)
        h = self.conv1(h)
        emb_out = self.emb_proj(F.silu(emb)).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)  # GN(h) * (1 + y_s) + y_b
        else:
            h = self.norm2(h + emb_out)
        h = self.conv2(self.dropout(_silu_(h)))
        out = _add_into(h, self.skip(x))
        return out / math.sqrt(2.0) if self.rescale else out


def explicit_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v written out; q, k, v [B, H, T, d] -> [B, H, T, d]."""
    weight = torch.softmax((q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)
    return (weight @ v.float()).to(q.dtype)


def _count_cpu_flash_attention_flops() -> None:
    """torch's FlopCounterMode has formulas for the CUDA attention kernels but not for the CPU flash
    kernel that `QKVAttention` runs on a CPU (or meta) tensor; without them attention would count as
    zero FLOPs. Register the same formulas: 2 matmuls of 2 B H T T d FLOPs forward, twice that backward."""
    aten = torch.ops.aten
    formulas = (("_scaled_dot_product_flash_attention_for_cpu", flop_counter.sdpa_flop),
                ("_scaled_dot_product_flash_attention_for_cpu_backward", flop_counter.sdpa_backward_flop))
    for name, formula in formulas:
        op = getattr(aten, name, None)
        if op is not None and op not in flop_counter.flop_registry:
            flop_counter.flop_registry[op] = formula


_count_cpu_flash_attention_flops()


class QKVAttention(nn.Module):
    """Multi-head attention over a packed qkv tensor: [N, 3*H*d, T] -> [N, H*d, T].

    Head order of the packed channels: "new" is [q: h0..h(H-1) | k: ... | v: ...], "legacy" is
    [h0: q, k, v | h1: q, k, v | ...] (the order of the older OpenAI checkpoints). Both compute
    softmax(q^T k / sqrt(d)) per head. ``backend`` "sdpa" uses
    ``torch.nn.functional.scaled_dot_product_attention``, "explicit" the written-out softmax.
    """

    def __init__(self, num_heads, new_order=True, backend="sdpa"):
        super().__init__()
        self.num_heads = num_heads
        self.new_order = new_order
        self.backend = backend

    def extra_repr(self):
        return f"num_heads={self.num_heads}, order={'new' if self.new_order else 'legacy'}, backend={self.backend}"

    def forward(self, qkv):
        n, width, length = qkv.shape
        heads = self.num_heads
        d = width // (3 * heads)
        if self.new_order:
            q, k, v = qkv.reshape(n, 3, heads, d, length).unbind(1)
        else:
            q, k, v = qkv.reshape(n, heads, 3, d, length).unbind(2)
        if self.backend == "sdpa":
            # [N, H, T, d] with unit stride along d: the layout the fused (flash) kernels need; other
            # strides fall back to a slower unfused softmax(q k^T) v
            q, k, v = (z.transpose(-1, -2).contiguous() for z in (q, k, v))
            a = F.scaled_dot_product_attention(q, k, v)
        elif self.backend == "explicit":
            a = explicit_attention(*(z.transpose(-1, -2) for z in (q, k, v)))
        else:
            raise ValueError(f"unknown attention backend {self.backend!r}; use 'sdpa' or 'explicit'")
        return a.transpose(-1, -2).reshape(n, heads * d, length)


def set_attention_backend(model, backend):
    """Switch every QKVAttention inside ``model`` to ``backend`` ("sdpa" or "explicit"); returns model."""
    if backend not in ("sdpa", "explicit"):
        raise ValueError(f"unknown attention backend {backend!r}; use 'sdpa' or 'explicit'")
    for m in model.modules():
        if isinstance(m, QKVAttention):
            m.backend = backend
    return model


def resolve_num_heads(channels, num_heads, num_head_channels):
    """Heads for an attention layer: channels // num_head_channels if that is set (> 0), else num_heads."""
    if num_head_channels > 0:
        if channels % num_head_channels:
            raise ValueError(
                f"attention over {channels} channels cannot use num_head_channels={num_head_channels}: "
                f"{channels} is not a multiple; pick a divisor or set num_head_channels=-1 and num_heads"
            )
        return channels // num_head_channels
    if num_heads < 1 or channels % num_heads:
        raise ValueError(f"num_heads={num_heads} must be >= 1 and divide the {channels} attention channels")
    return num_heads


class AttentionBlock(nn.Module):
    """Spatial self-attention with a residual connection: x + proj_out(attn(qkv(GN(x)))).

    Shapes: [N, C, H, W] -> [N, C, H, W]; tokens are the H*W positions.
    """

    def __init__(self, channels, num_heads=1, num_head_channels=-1, use_new_attention_order=False,
                 use_checkpoint=False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.attention = QKVAttention(resolve_num_heads(channels, num_heads, num_head_channels),
                                      new_order=use_new_attention_order)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x, emb=None):
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x):
        n, c, *spatial = x.shape
        x = x.reshape(n, c, -1)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return _add_into(h, x).reshape(n, c, *spatial)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling (the ADM classifier head): [N, C, S, S] -> [N, output_dim].

    The query is the spatial mean token; tokens get a learned position embedding [C, S*S + 1].
    """

    def __init__(self, spatial_dim, embed_dim, num_head_channels, output_dim):
        super().__init__()
        self.spatial_dim = spatial_dim
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spatial_dim ** 2 + 1) / embed_dim ** 0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, output_dim, 1)
        self.attention = QKVAttention(resolve_num_heads(embed_dim, 1, num_head_channels), new_order=True)

    def forward(self, x):
        n, c, *spatial = x.shape
        if list(spatial) != [self.spatial_dim, self.spatial_dim]:
            raise ValueError(
                f"attention pooling was built for a {self.spatial_dim}x{self.spatial_dim} final feature map, "
                f"got {'x'.join(map(str, spatial))}; feed images of the configured image_size"
            )
        x = x.reshape(n, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(self.attention(self.qkv_proj(x)))
        return x[:, :, 0]
