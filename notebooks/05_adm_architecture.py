# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · The ADM architecture
#
# ```{admonition} Learning goals
# After this chapter you can
# - read the ADM UNet from its config: resolutions, channels, skips, attention;
# - implement AdaGN and explain why addition + GroupNorm loses the conditioning at small widths;
# - check each part of the network against its formula;
# - count an architecture change's parameters and FLOPs, and measure which ablations survive at 8×8.
#
# **Prerequisites:** [chapter 01](01_ddpm.ipynb) (the $\epsilon$-prediction network and $L_\text{simple}$), convolutions and attention.
# ```
#
# Before guidance, "Diffusion Models Beat GANs" {cite:p}`dhariwal2021beat` (Sec. 3) ablates the
# denoising network of improved DDPM {cite:p}`nichol2021improved` on ImageNet 128×128, reporting
# the FID change after 700K and 1200K steps (Table 1; baseline: 160 channels, 2 residual blocks
# per resolution, 1 head, attention at 16×16 only, FID 15.33 at 700K):
#
# | change | ΔFID 700K | ΔFID 1200K |
# |---|---|---|
# | 128 channels, depth 4 | −0.21 | −0.48 |
# | 4 heads | −0.54 | −0.82 |
# | attention at 32, 16, 8 | −0.72 | −0.66 |
# | BigGAN up/down-sampling | −1.20 | −1.21 |
# | rescale residual sums by 1/√2 | +0.16 | +0.25 |
# | all of the above except depth and rescaling | −3.14 | −3.00 |
#
# Depth helps per step but is slower per hour (Fig. 2), so ADM drops it. Table 2 sweeps the heads
# (64 channels per head chosen for speed); Table 3 compares **AdaGN** (FID 13.06) with
# **addition + GroupNorm** (15.08). We check each part against its formula, count the released
# models' parameters, and run Tables 1–3 at 8×8.

# %%
import os
import random

import numpy as np
import torch

GCG_SCALE = float(os.environ.get("GCG_SCALE", "1"))  # 1 = the CPU size whose outputs are stored
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
torch.set_num_threads(2)  # results depend on the thread count: fix it
random.seed(0)
np.random.seed(0)
torch.manual_seed(0)
torch.set_printoptions(precision=4, sci_mode=False)

# %%
import inspect
import math
import time

import matplotlib.pyplot as plt
import torch.nn.functional as F
from IPython.display import Markdown

from gcg.nn import layers
from gcg.nn.classifier import EncoderUNetModel
from gcg.nn.config import MODEL_PRESETS, UNetConfig, count_parameters, create_model
from gcg.nn.diagram import draw_unet, unet_levels
from gcg.nn.unet import UNetModel


def show(obj):
    """Display the source of a gcg function or class as a highlighted code block."""
    return Markdown(f"```python\n{inspect.getsource(obj)}```")


def within(err, tol):
    """Assert err < tol and return the bound as text (the exact rounding error varies across CPUs)."""
    assert err < tol, f"error {err:.2e} exceeds the tolerance {tol:.0e}"
    return f"< {tol:.0e}"


# %% [markdown]
# ## The UNet at a glance
#
# The ADM UNet maps $x_t$ [N, C, H, W], the timestep $t$ [N] and optionally a label $y$ [N] to
# $\hat\epsilon$ [N, C, H, W] (twice the channels with a learned variance, chapter 02). An
# embedding $e = \mathrm{MLP}(\mathrm{sinusoid}(t)) + \mathrm{Embed}(y)$ feeds every residual
# block; a down path of residual blocks (with self-attention at `attention_resolutions`) halves
# H and W per level and keeps every output as a skip; a middle block; an up path that concatenates
# one skip per block. This chapter's baseline for 8×8 digits, drawn from its config by
# `gcg.nn.diagram.draw_unet` and traced with a batch:

# %%
from gcg.ablation import BASELINE  # the UNetConfig fields of this chapter's 8x8 baseline

print(BASELINE)
baseline_net = UNetModel(UNetConfig(**BASELINE))


def describe(block):
    if isinstance(block, layers.ResBlock):
        return "ResBlock" + (" (down)" if block.down else " (up)" if block.up else "")
    parts = [type(getattr(block, "res", block)).__name__]
    if getattr(block, "attn", None) is not None:
        parts.append(f"Attention({block.attn.attention.num_heads} head)")
    if getattr(block, "upsample", None) is not None:
        parts.append(type(block.upsample).__name__)
    return " + ".join(parts) if not isinstance(block, layers.Downsample) else "Downsample"


trace = []
hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: trace.append((name, describe(mod), out.shape)))
         for name, m in [("input_conv", baseline_net.input_conv)]
         + [(f"down_blocks.{i}", b) for i, b in enumerate(baseline_net.down_blocks)]
         + [("middle_block", baseline_net.middle_block)]
         + [(f"up_blocks.{i}", b) for i, b in enumerate(baseline_net.up_blocks)]
         + [("out_conv", baseline_net.out_conv)]]
with torch.no_grad():
    out = baseline_net(torch.randn(2, 1, 8, 8), torch.tensor([10, 500]), y=torch.tensor([3, 7]))
for h in hooks:
    h.remove()
for name, kind, shape in trace:
    kind = "MiddleBlock: ResBlock + Attention + ResBlock" if name == "middle_block" else kind
    print(f"{name:14s} {kind:42s} -> {list(shape)}")
print(f"parameters: {count_parameters(baseline_net):,}")

# %%
fig = plt.figure(figsize=(7, 3.4))
draw_unet(fig.add_subplot(), UNetConfig(**BASELINE), title="the 8×8 baseline (orange: self-attention)")
plt.show()

# %% [markdown]
# ## The timestep embedding
#
# The network is told $t$ through the sinusoidal position encoding of the Transformer, as in
# DDPM {cite:p}`ho2020ddpm`. With $D$ = `model_channels` and $h = D/2$,
#
# $$
# \omega_i = 10000^{-i/h},\qquad
# \mathrm{emb}(t)_i = \cos(\omega_i t),\quad \mathrm{emb}(t)_{h+i} = \sin(\omega_i t),\qquad i = 0,\dots,h-1,
# $$ (ch05-sinusoid)
#
# a bank of $h$ frequencies from $1$ down to $10000^{-(h-1)/h}$ radians per step. Because
# $\cos a\cos b + \sin a \sin b = \cos(a-b)$, the inner product of two embeddings depends only on
# the time difference:
#
# $$
# \mathrm{emb}(t)^\top \mathrm{emb}(s) = \sum_{i=0}^{h-1} \cos\big(\omega_i (t-s)\big).
# $$ (ch05-shift)
#
# A two-layer MLP (Linear, SiLU, Linear) widens it to $4D$ channels; the class embedding (a
# lookup table) is added to it.

# %% tags=["nbval-ignore-output"]
show(layers.timestep_embedding)

# %%
D = 32
t = torch.tensor([0.0, 1.0, 17.0, 250.0, 999.0])
emb = layers.timestep_embedding(t, D)
omega = 10000.0 ** (-torch.arange(D // 2, dtype=torch.float64) / (D // 2))
closed_form = torch.cat([torch.cos(t.double()[:, None] * omega), torch.sin(t.double()[:, None] * omega)], 1)
# float32 arguments up to 999 rad carry a rounding error of ~1e-4 in cos/sin
print("shape", tuple(emb.shape), " max |gcg - Eq. (ch05-sinusoid)|", within((emb.double() - closed_form).abs().max(), 5e-4))
print("frequencies (rad/step), first and last:", f"{omega[0]:.4f}", f"{omega[-1]:.6f}")
# Eq. (ch05-shift): the Gram matrix is a function of t - s only
gram = emb.double() @ emb.double().T
shift_form = torch.cos((t[:, None, None] - t[None, :, None]).double() * omega).sum(-1)
assert torch.allclose(gram, shift_form, atol=5e-3), (gram - shift_form).abs().max()
assert torch.equal(emb[0], torch.cat([torch.ones(D // 2), torch.zeros(D // 2)]))  # t = 0: cos 0 = 1, sin 0 = 0

# %%
ts = torch.arange(0, 1000, dtype=torch.float32)
E = layers.timestep_embedding(ts, 64)
fig, axes = plt.subplots(1, 2, figsize=(8, 3))
axes[0].imshow(E.T, aspect="auto", cmap="RdBu", interpolation="nearest")
axes[0].set(xlabel="timestep t", ylabel="channel", title="sinusoidal embedding, D = 64")
sim = E @ E[500] / 32
axes[1].plot(ts, sim)
axes[1].set(xlabel="timestep t", ylabel="emb(t)·emb(500) / h", title="similarity to t = 500")
fig.tight_layout()
plt.show()

# %% [markdown]
# High channels tell coarse time, low channels fine time; the similarity to $t = 500$ peaks
# there and decays with $|t - 500|$, so the MLP can read the time off the vector.

# %% [markdown]
# ## The residual block and AdaGN
#
# Every residual block receives the feature map $x$ [N, C, H, W] and the embedding $e$ [N, 4D]:
#
# $$
# \begin{aligned}
# h &= \mathrm{Conv}_1\big(\mathrm{SiLU}(\mathrm{GN}(x))\big),\\
# h &\leftarrow \begin{cases}
#   (1 + y_s)\,\mathrm{GN}(h) + y_b,\quad [y_s, y_b] = \mathrm{Linear}(\mathrm{SiLU}(e)) & \text{AdaGN}\\
#   \mathrm{GN}(h + y),\quad y = \mathrm{Linear}(\mathrm{SiLU}(e)) & \text{addition + GroupNorm}
# \end{cases}\\
# \mathrm{out} &= \mathrm{skip}(x) + \mathrm{Conv}_2\big(\mathrm{Dropout}(\mathrm{SiLU}(h))\big)
#   \quad\big(\text{divided by } \sqrt 2 \text{ with residual rescaling}\big).
# \end{aligned}
# $$ (ch05-resblock)
#
# The paper writes AdaGN as $y_s\,\mathrm{GN}(h) + y_b$ (Sec. 3, after FiLM {cite:p}`perez2018film`); the reference code
# and gcg parametrise the scale as $1 + y_s$, so a zero projection leaves $\mathrm{GN}(h)$ alone.
# $\mathrm{GN}$ has 32 groups, $\mathrm{Conv}_2$ starts at zero (each block begins as the
# identity), `skip` is a 1×1 convolution when the channel count changes.

# %% tags=["nbval-ignore-output"]
show(layers.ResBlock)


# %% [markdown]
# ### Write it yourself: AdaGN
#
# `my_adagn(h, emb, emb_proj, norm)` takes the first convolution's output $h$ [N, C, H, W], the
# embedding $e$ [N, E], the block's projection `emb_proj` (Linear E → 2C, giving $[y_s; y_b]$)
# and its GroupNorm `norm` (32 groups, affine), and returns
# $(1 + y_s)\,\mathrm{GN}(h) + y_b$ [N, C, H, W] of Eq. {eq}`ch05-resblock`, with
# $[y_s, y_b] = \mathrm{Linear}(\mathrm{SiLU}(e))$ broadcast over H and W.

# %% tags=["write-it-yourself", "hide-input"] jupyter={"source_hidden": true}
def my_adagn(h, emb, emb_proj, norm):
    """AdaGN: h [N, C, H, W], emb [N, E] -> (1 + y_s) * GroupNorm(h) + y_b, [N, C, H, W]."""
    # --- solution ---
    y_s, y_b = emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
    return (1 + y_s) * F.group_norm(h, 32, norm.weight, norm.bias, norm.eps) + y_b
    # --- end of solution ---


# %%
block = layers.ResBlock(64, 256, use_scale_shift_norm=True).eval()
seen = {}
hooks = [block.conv1.register_forward_hook(lambda mod, inp, out: seen.update(h=out)),  # h = Conv_1(...)
         block.conv2.register_forward_pre_hook(lambda mod, inp: seen.update(after=inp[0]))]  # SiLU(AdaGN(h))
gen = torch.Generator().manual_seed(1)
x, e = torch.randn(4, 64, 8, 8, generator=gen), torch.randn(4, 256, generator=gen)
with torch.no_grad():
    block(x, e)
    mine = F.silu(my_adagn(seen["h"], e, block.emb_proj, block.norm2))
for hook in hooks:
    hook.remove()
torch.testing.assert_close(mine, seen["after"], msg=lambda m: "AdaGN differs from gcg's ResBlock: the scale is "
                           f"(1 + y_s), y_s is the first half of Linear(SiLU(e)), y_b the second\n{m}")
print("my_adagn matches the AdaGN step inside gcg's ResBlock")


# %% [markdown]
# The whole block, Eq. {eq}`ch05-resblock`, rebuilt with `torch.nn.functional` from its own
# weights ($\mathrm{Conv}_2$ randomised, as it starts at zero):

# %% tags=["hide-input"] jupyter={"source_hidden": true}
def resblock_by_formula(block, x, e, adagn, rescale=False):
    """Eq. (ch05-resblock) written with torch.nn.functional and the block's own parameters."""
    gn = lambda z, norm: F.group_norm(z, 32, norm.weight, norm.bias, norm.eps)  # noqa: E731
    h = F.conv2d(F.silu(gn(x, block.norm1)), block.conv1.weight, block.conv1.bias, padding=1)
    proj = F.linear(F.silu(e), block.emb_proj.weight, block.emb_proj.bias)[:, :, None, None]
    if adagn:
        y_s, y_b = proj.chunk(2, dim=1)
        h = (1 + y_s) * gn(h, block.norm2) + y_b
    else:
        h = gn(h + proj, block.norm2)
    h = F.conv2d(F.silu(h), block.conv2.weight, block.conv2.bias, padding=1)
    skip = x if isinstance(block.skip, torch.nn.Identity) else F.conv2d(x, block.skip.weight, block.skip.bias)
    return (skip + h) / (math.sqrt(2) if rescale else 1)


x, e = torch.randn(4, 32, 8, 8, generator=gen), torch.randn(4, 128, generator=gen)
for adagn in (True, False):
    for rescale in (False, True):
        block = layers.ResBlock(32, 128, out_channels=64, use_scale_shift_norm=adagn, rescale=rescale).eval()
        torch.nn.init.normal_(block.conv2.weight, std=0.05)
        with torch.no_grad():
            err = (block(x, e) - resblock_by_formula(block, x, e, adagn, rescale)).abs().max().item()
        print(f"AdaGN={adagn!s:5}  rescale={rescale!s:5}  max |gcg - formula| {within(err, 1e-5)}")

# %% [markdown]
# ### Why addition + GroupNorm is weak at small widths
#
# GroupNorm subtracts the mean of each group of channels over the group's channels *and* all
# positions. The embedding $y$ is constant over positions, so in "addition + GroupNorm" the
# group-mean of $y$ is subtracted right after it was added:
#
# $$
# \mathrm{GN}(h + y)_c = \frac{h_c + y_c - \overline{h}_g - \overline{y}_g}{\sqrt{\mathrm{Var}_g(h + y) + \varepsilon}},
# \qquad \overline{y}_g = \frac{1}{|g|}\sum_{c \in g} y_c .
# $$ (ch05-gn-add)
#
# Only the deviations of $y_c$ within a group survive. At 32 channels (one per group)
# $y_c = \overline{y}_g$ and **the timestep and the class are erased entirely**. AdaGN acts
# *after* the normalisation and always survives. At ImageNet widths (4–32 channels per group)
# the loss is partial; in our 32-channel blocks it is total:

# %%
for channels in (32, 64, 128):
    block = layers.ResBlock(channels, 128, use_scale_shift_norm=False).eval()
    torch.nn.init.normal_(block.conv2.weight, std=0.05)
    xx = torch.randn(4, channels, 8, 8, generator=gen)
    e1, e2 = torch.randn(4, 128, generator=gen), torch.randn(4, 128, generator=gen)
    with torch.no_grad():
        change = (block(xx, e1) - block(xx, e2)).abs().max().item()
    if channels == 32:  # one channel per group: the embedding cancels
        shown = within(change, 1e-5)
    else:  # several channels per group: the embedding matters
        assert change > 1e-2, change
        shown = f"= {change:.2f}"
    print(f"addition + GN, {channels:3d} channels ({channels // 32} per group): max |out(e1) - out(e2)| {shown}")

# %% [markdown]
# ## Up- and down-sampling: plain or BigGAN residual blocks
#
# Between resolutions the baseline uses a stride-2 3×3 convolution (down) and nearest-neighbour
# doubling followed by a 3×3 convolution (up). The BigGAN alternative {cite:p}`brock2019biggan` (Table 1: −1.20 FID) uses a
# whole residual block instead, resampling both paths right after the first normalisation:
#
# $$
# \mathrm{out} = R(x) + \mathrm{Conv}_2\Big(\mathrm{SiLU}\big(\mathrm{AdaGN}\big(\mathrm{Conv}_1(R(\mathrm{SiLU}(\mathrm{GN}(x)))), e\big)\big)\Big),
# $$ (ch05-biggan)
#
# with $R$ = 2×2 average pooling (down) or nearest-neighbour doubling (up). Since
# $\mathrm{Conv}_2$ starts at zero, a freshly built BigGAN block **is** plain resampling,
# $\mathrm{out} = R(x)$; training learns a correction, conditioned on $t$ and $y$ through AdaGN.

# %% tags=["nbval-ignore-output"]
show(layers.ResBlock._resample)

# %%
x = torch.randn(3, 64, 8, 8, generator=gen)
e = torch.randn(3, 256, generator=gen)
down, up = layers.ResBlock(64, 256, down=True), layers.ResBlock(64, 256, up=True)
with torch.no_grad():
    assert torch.equal(down(x, e), F.avg_pool2d(x, 2)), "at init a BigGAN down block is average pooling"
    assert torch.equal(up(x, e), F.interpolate(x, scale_factor=2, mode="nearest")), "... and up is nearest"
plain_down, plain_up = layers.Downsample(64), layers.Upsample(64)
print(f"64 channels: plain down {count_parameters(plain_down):,} parameters, BigGAN down {count_parameters(down):,}")
print(f"             plain up   {count_parameters(plain_up):,} parameters, BigGAN up   {count_parameters(up):,}")
print("shapes:", tuple(down(x, e).shape), tuple(up(x, e).shape))

# %% [markdown]
# ## Multi-head self-attention at several resolutions
#
# At the resolutions in `attention_resolutions` a residual self-attention block follows each
# residual block. The $HW$ positions are tokens with $C$ channels; a 1×1 convolution makes
# queries, keys and values, $[q; k; v] = W_{qkv}\,\mathrm{GN}(x)$, and the $C$ channels are split
# into $H$ heads of $d = C/H$ channels:
#
# $$
# \mathrm{head}_j = v_j\,\mathrm{softmax}\Big(\frac{q_j^\top k_j}{\sqrt d}\Big)^{\!\top},\qquad
# \mathrm{out} = x + W_{\mathrm{proj}}\,[\mathrm{head}_1; \dots; \mathrm{head}_H],
# $$ (ch05-attention)
#
# with $q_j, k_j, v_j \in \mathbb{R}^{d \times HW}$ and the softmax over keys. Changing $H$
# changes no parameter (the same $W_{qkv}$, $W_{\mathrm{proj}}$, sliced differently): one wide
# similarity becomes several narrow ones. ADM sets `num_heads` or `num_head_channels` (64 in
# the released models). gcg uses PyTorch's `scaled_dot_product_attention`:

# %% tags=["nbval-ignore-output"]
show(layers.QKVAttention)


# %%
def attention_by_definition(qkv, heads):
    """Eq. (ch05-attention) head by head, for qkv [N, 3C, T] in the [q | k | v] channel order."""
    n, width, T = qkv.shape
    d = width // (3 * heads)
    q, k, v = qkv.double().reshape(n, 3, heads, d, T).unbind(1)  # each [N, H, d, T]
    out = []
    for j in range(heads):
        weights = torch.softmax(q[:, j].transpose(1, 2) @ k[:, j] / math.sqrt(d), dim=-1)  # [N, T_q, T_k]
        out.append(v[:, j] @ weights.transpose(1, 2))  # [N, d, T_q]
    return torch.cat(out, dim=1)


qkv = torch.randn(2, 3 * 64, 16, generator=gen)
for heads in (1, 2, 4):
    got = layers.QKVAttention(heads, new_order=True)(qkv)
    err = (got.double() - attention_by_definition(qkv, heads)).abs().max().item()
    print(f"{heads} head(s) of {64 // heads} channels: max |SDPA - definition| {within(err, 1e-5)}")
# the legacy head order of older checkpoints is the same computation on permuted channels
legacy = qkv.reshape(2, 3, 4, 16, 16).transpose(1, 2).reshape(2, 3 * 64, 16)
assert torch.allclose(layers.QKVAttention(4, new_order=False)(legacy), layers.QKVAttention(4, new_order=True)(qkv),
                      atol=1e-6)
one, four = (layers.AttentionBlock(64, num_heads=h) for h in (1, 4))
assert count_parameters(one) == count_parameters(four), "heads do not change the parameter count"
print("AttentionBlock(64):", count_parameters(one), "parameters for 1 head and for 4 heads")

# %% [markdown]
# The released ImageNet 64×64 model drawn from its preset: 64 channels per head, so the head
# count grows with the width; attention at 32, 16 and 8 (1,024, 256 and 64 tokens):

# %%
cfg64 = MODEL_PRESETS["64x64_diffusion"]
assert [(lv.resolution, lv.attention_heads) for lv in unet_levels(cfg64)] == [(64, 0), (32, 6), (16, 9), (8, 12)]
fig = plt.figure(figsize=(7, 5))
draw_unet(fig.add_subplot(), cfg64, title="released ImageNet 64×64 diffusion model (296M parameters)")
plt.show()

# %% [markdown]
# ## The classifier and its attention pool
#
# The noise-aware classifier of chapter 04 is the UNet's down path and middle block plus a
# head. The released classifiers pool with attention (after CLIP): the $S^2$ positions and
# their mean form $S^2 + 1$ tokens, a learned position embedding $P$ is added, and **only the
# mean token queries**:
#
# $$
# z = [\bar x, x_1, \dots, x_{S^2}] + P,\qquad
# \mathrm{logits} = W_c\,\mathrm{MHA}\big(q = W_q z_0,\ K = W_k z,\ V = W_v z\big).
# $$ (ch05-attnpool)

# %% tags=["nbval-ignore-output"]
show(layers.AttentionPool2d)

# %%
pool = layers.AttentionPool2d(spatial_dim=4, embed_dim=64, num_head_channels=32, output_dim=10)
feat = torch.randn(3, 64, 4, 4, generator=gen)
z = torch.cat([feat.flatten(2).mean(-1, keepdim=True), feat.flatten(2)], -1) + pool.positional_embedding
qkv = F.conv1d(z, pool.qkv_proj.weight, pool.qkv_proj.bias)  # [N, 3C, S^2 + 1]
tokens = attention_by_definition(qkv, heads=2)  # every token attends (the pool keeps token 0)
expected = F.conv1d(tokens.float(), pool.c_proj.weight, pool.c_proj.bias)[:, :, 0]
with torch.no_grad():
    err = (pool(feat) - expected).abs().max().item()
print("logits", tuple(pool(feat).shape), f" max |gcg - Eq. (ch05-attnpool)| {within(err, 1e-5)}")

# %%
clf = EncoderUNetModel(MODEL_PRESETS["digits8_classifier"])
with torch.no_grad():
    logits = clf(torch.randn(5, 1, 8, 8, generator=gen), torch.tensor([0, 100, 300, 600, 999]))
print("digits classifier: logits", tuple(logits.shape), f"{count_parameters(clf):,} parameters,",
      f"attention pool over a {clf.pool.spatial_dim}x{clf.pool.spatial_dim} map")

# %% [markdown]
# ## The released models, counted from the presets
#
# gcg's presets carry the flags of OpenAI's released checkpoints. If every switch is
# implemented as in the reference code, the parameter counts must match *exactly*: one missing
# bias in hundreds of layers would change the total. Built on the `meta` device:

# %%
PUBLISHED = {  # parameters in millions (and tensors, where listed) of the released checkpoints
    "64x64_diffusion": (295.90, 541), "64x64_classifier": (65.44, 307),
    "128x128_diffusion": (421.53, None), "128x128_classifier": (42.57, None),
    "256x256_diffusion": (553.84, None), "256x256_diffusion_uncond": (552.81, None),
    "256x256_classifier": (54.10, None), "512x512_diffusion": (559.00, None),
    "512x512_classifier": (54.45, None), "64_256_upsampler": (311.80, None), "128_512_upsampler": (308.84, None),
}
rows = ["| preset | channels | depth | mult | heads | attention at | BigGAN | gcg params | published | tensors |",
        "|---|---|---|---|---|---|---|---|---|---|"]
for name, (published, tensors) in PUBLISHED.items():
    cfg = MODEL_PRESETS[name]
    with torch.device("meta"):
        net = create_model(cfg)
    n_params, n_tensors = count_parameters(net), len(net.state_dict())
    heads = f"{cfg.num_head_channels} ch/head" if cfg.num_head_channels > 0 else f"{cfg.num_heads}"
    rows.append(f"| {name} | {cfg.model_channels} | {cfg.num_res_blocks} | {cfg.channel_mult} | {heads} | "
                f"{cfg.attention_resolutions} | {cfg.resblock_updown} | {n_params / 1e6:.2f}M | {published:.2f}M | "
                f"{n_tensors}{'' if tensors is None else f' ({tensors})'} |")
    assert round(n_params / 1e6, 2) == published, (name, n_params, published)
    assert tensors is None or n_tensors == tensors, (name, n_tensors, tensors)
Markdown("\n".join(rows))

# %% [markdown]
# All eleven match to the last digit published (tensor counts in brackets: the released 64×64
# pair); `gcg.load_openai_checkpoint` loads the released weights into these modules. The 296M of
# the 64×64 model sit mostly in the residual blocks' 3×3 convolutions:

# %%
with torch.device("meta"):
    net64 = create_model("64x64_diffusion")
groups = {"time/label embedding": ("time_embed", "label_embed"), "down path": ("input_conv", "down_blocks"),
          "middle block": ("middle_block",), "up path": ("up_blocks",), "output": ("out_norm", "out_conv")}
total = count_parameters(net64)
shares = {g: sum(p.numel() for n, p in net64.named_parameters() if n.split(".")[0] in prefixes)
          for g, prefixes in groups.items()}
kinds = {"attention": sum(p.numel() for n, p in net64.named_parameters() if ".attn." in n),
         "residual-block convs": sum(p.numel() for n, p in net64.named_parameters()
                                     if ".conv" in n and p.ndim == 4 and ".attn." not in n)}
for g, n in {**shares, **kinds}.items():
    print(f"{g:22s} {n / 1e6:7.2f}M  ({100 * n / total:4.1f}%)")
assert sum(shares.values()) == total

# %% [markdown]
# ## Experiment: Tables 1–3 at 8×8
#
# Five changes on the sklearn digits (1,438 training, 359 held-out, class-conditional), each
# starting from the small baseline drawn at the top:
#
# | variant | change to the baseline |
# |---|---|
# | baseline | 32 ch, mult (1, 2), 1 res block, 1 head, attention at 4×4, conv resampling, AdaGN |
# | 4 heads | `num_heads=4` (16 channels per head at 4×4) |
# | attention at 8, 4 | `attention_resolutions=(8, 4)` |
# | BigGAN up/down | `resblock_updown=True` |
# | addition + GN | `use_scale_shift_norm=False` (Table 3) |
# | rescale 1/√2 | `resblock_rescale=True` |
#
# Every run trains (`gcg.ablation.train_variant`) for the **same number of steps**, as the paper
# compares at 700K; with one seed all variants see the same batches, timesteps and noise
# (paired), and a second seed shows the noise. The score is $L_\mathrm{simple}$ on the held-out
# digits, timesteps and noise fixed once (`gcg.ablation.heldout_loss`).

# %%
from gcg.ablation import heldout_loss, train_variant
from gcg.data import load_digits_dataset
from gcg.features import train_feature_net
from gcg.metrics import fid_from_features
from gcg.sample import generate

train_set, test_set = load_digits_dataset("train"), load_digits_dataset("test")
x_test, y_test = test_set.as_tensors()
assert (len(train_set), len(x_test)) == (1438, 359)
STEPS = int(round(120 * GCG_SCALE))  # optimizer steps per run, batch 32
SEEDS = (0, 1)
NUM_SAMPLES = int(round(200 * GCG_SCALE))  # DDIM-10 samples per run for FD
SAMPLE_LABELS = torch.arange(NUM_SAMPLES) % 10
VARIANTS = {
    "baseline": {},
    "4 heads": dict(num_heads=4),
    "attention at 8, 4": dict(attention_resolutions=(8, 4)),
    "BigGAN up/down": dict(resblock_updown=True),
    "addition + GN": dict(use_scale_shift_norm=False),
    "rescale 1/√2": dict(resblock_rescale=True),
}
PAPER = {"baseline": "15.33 (FID)", "4 heads": "−0.54", "attention at 8, 4": "−0.72", "BigGAN up/down": "−1.20",
         "addition + GN": "+2.02 (Table 3)", "rescale 1/√2": "+0.16"}


def run(variant, seed):
    """Train one variant for STEPS steps (gcg.ablation.train_variant); held-out loss, FD of DDIM samples, timing."""
    result, seconds_per_step = train_variant(VARIANTS[variant], seed, STEPS, train_set)
    model = result.model.eval()
    samples = generate(model, result.diffusion, NUM_SAMPLES, (1, 8, 8), class_labels=SAMPLE_LABELS,
                       timestep_respacing="ddim10", generator=torch.Generator(DEVICE).manual_seed(seed),
                       device=DEVICE).cpu()
    return dict(variant=variant, seed=seed, params=count_parameters(model), seconds_per_step=seconds_per_step,
                history=result.history, heldout=heldout_loss(model, result.diffusion, x_test, y_test),
                samples=samples, fd=fid_from_features(feature_net.extract(samples)["pool"], real_features))


# the domain feature network of the FD column (gcg.features; not Inception, not comparable to FID)
feature_net = train_feature_net(*train_set.as_tensors(), epochs=8, seed=0)
real_features = feature_net.extract(x_test)["pool"]
runs = [run(variant, seed) for seed in SEEDS for variant in VARIANTS]

# %% [markdown]
# Held-out loss per run, its paired change to the same seed's baseline, time per step, the
# Fréchet distance of 200 DDIM-10 samples to the held-out digits on a small digit classifier's
# features (`gcg.features`, not FID), and the paper's FID change (signs compare, magnitudes do not):

# %% tags=["nbval-ignore-output"]
by = {(r["variant"], r["seed"]): r for r in runs}
delta = {v: [by[v, s]["heldout"] - by["baseline", s]["heldout"] for s in SEEDS] for v in VARIANTS}
rows = ["| variant | params | s / step | held-out loss per seed | Δ vs baseline per seed | FD per seed | paper ΔFID |",
        "|---|---|---|---|---|---|---|"]
for v in VARIANTS:
    losses = " / ".join(f"{by[v, s]['heldout']:.4f}" for s in SEEDS)
    changes = "—" if v == "baseline" else " / ".join(f"{d:+.4f}" for d in delta[v])
    sec = np.mean([by[v, s]["seconds_per_step"] for s in SEEDS])
    fds = " / ".join(f"{by[v, s]['fd']:.2f}" for s in SEEDS)
    rows.append(f"| {v} | {by[v, SEEDS[0]]['params']:,} | {sec:.3f} | {losses} | {changes} | {fds} | {PAPER[v]} |")
neutral = max(abs(d) for v in VARIANTS if v not in ("baseline", "addition + GN") for d in delta[v])
flips = [v for v in VARIANTS if v != "baseline" and min(delta[v]) < 0 < max(delta[v])]
print(f"addition + GN: {min(delta['addition + GN']):+.4f} to {max(delta['addition + GN']):+.4f}; every other change "
      f"within ±{neutral:.4f}; sign changes between seeds: {', '.join(flips) or 'none'}")
Markdown("\n".join(rows))

# %% tags=["nbval-ignore-output"]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for i, v in enumerate(VARIANTS):
    steps = np.array([h["step"] for h in by[v, SEEDS[0]]["history"]])
    curve = np.mean([[h["loss"] for h in by[v, s]["history"]] for s in SEEDS], axis=0)
    base = np.mean([[h["loss"] for h in by["baseline", s]["history"]] for s in SEEDS], axis=0)
    seconds = steps * np.mean([by[v, s]["seconds_per_step"] for s in SEEDS])
    axes[0].plot(steps, curve - base, label=v, color=f"C{i}")
    axes[1].plot(seconds, curve, color=f"C{i}")
axes[0].set(xlabel="step", ylabel="loss minus baseline", title="paired difference to the baseline, by step")
axes[0].axhline(0, color="k", lw=0.5)
axes[1].set(xlabel="training time on this machine (s)", ylabel="training loss (10-step mean)", yscale="log",
            title="by wall clock (the view of ADM's Fig. 2)")
axes[0].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# What the runs show (this execution's spread: the line above the table):
#
# - **Addition + GroupNorm is clearly worse** than AdaGN in both seeds, by about ten times the
#   other changes' spread: the paper's direction (Table 3), not its size, since at 32 channels
#   GroupNorm erases the embedding completely (Eq. {eq}`ch05-gn-add`).
# - **Every other change** moves the held-out loss by at most about 0.002, the seed-to-seed
#   scatter (the line above lists sign flips); two seeds at this margin are no evidence.

# %%
other = [abs(d) for v in ("4 heads", "attention at 8, 4", "BigGAN up/down") for d in delta[v]]
report = {v: [round(d, 4) for d in delta[v]] for v in VARIANTS if v != "baseline"}
assert all(d > 0.005 for d in delta["addition + GN"]), f"AdaGN should beat addition + GN in every seed: {report}"
assert min(delta["addition + GN"]) > 2 * max(other), f"the AdaGN gap should dwarf the neutral changes: {report}"
params = {v: by[v, SEEDS[0]]["params"] for v in VARIANTS}
assert params["4 heads"] == params["rescale 1/√2"] == params["baseline"]
assert params["BigGAN up/down"] > params["baseline"] > params["addition + GN"]
print("AdaGN beats addition + GN in every seed; parameter counts as expected")

# %% [markdown]
# ### The cost side: depth, heads and the wall clock
#
# First the cost of depth (Table 1's first row) and of the head sweep (Table 2): parameters,
# FLOPs of one training step of batch 32 (`torch.utils.flop_counter`) and its time (this
# machine's).

# %% tags=["nbval-ignore-output"]
from torch.utils.flop_counter import FlopCounterMode

COSTS = {"baseline (1 head × 64 ch)": {}, "2 heads × 32 ch": dict(num_heads=2), "4 heads × 16 ch": dict(num_heads=4),
         "8 heads × 8 ch": dict(num_heads=8), "depth 2": dict(num_res_blocks=2),
         "attention at 8, 4": dict(attention_resolutions=(8, 4)), "BigGAN up/down": dict(resblock_updown=True)}
g = torch.Generator().manual_seed(0)
xb, tb, yb = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 1000, (32,), generator=g), torch.arange(32) % 10


def training_step(net):
    net.zero_grad()
    net(xb, tb, y=yb).square().mean().backward()


cost = {}
for name, change in COSTS.items():
    net = UNetModel(UNetConfig(**{**BASELINE, **change}))
    with FlopCounterMode(display=False) as counter:
        training_step(net)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        training_step(net)
        times.append(time.perf_counter() - start)
    cost[name] = (count_parameters(net), counter.get_total_flops(), min(times))
rows = ["| network | params | GFLOP per step | ms per step (this machine) |", "|---|---|---|---|"]
rows += [f"| {n} | {p:,} | {f / 1e9:.2f} | {1e3 * t:.0f} |" for n, (p, f, t) in cost.items()]
Markdown("\n".join(rows))

# %% tags=["hide-input"] jupyter={"source_hidden": true}
heads_rows = [n for n in COSTS if "heads" in n or n.startswith("baseline")]
base_params, base_flops, _ = cost["baseline (1 head × 64 ch)"]
assert all(cost[n][:2] == (base_params, base_flops) for n in heads_rows), "heads change neither parameters nor FLOPs"
depth_ratio = cost["depth 2"][1] / base_flops
assert depth_ratio > 1.3 and cost["depth 2"][0] > 1.3 * base_params, depth_ratio
assert cost["attention at 8, 4"][1] > base_flops and cost["BigGAN up/down"][1] > base_flops
print(f"heads 1-8: identical parameters and FLOPs; depth 2: {depth_ratio:.2f}x the FLOPs of a step, "
      f"attention at 8, 4: {cost['attention at 8, 4'][1] / base_flops:.2f}x, "
      f"BigGAN: {cost['BigGAN up/down'][1] / base_flops:.2f}x")

# %% [markdown]
# Heads change no parameter and no FLOP (exercise 2); their time differs by how kernels handle
# many small matrices, what Table 2's choice of 64 channels per head measured on GPUs. At
# ImageNet width (512 channels, 16×16 tokens):

# %% tags=["nbval-ignore-output"]
xa = torch.randn(2, 512, 16, 16, generator=g)
for head_channels in (32, 64, 128, 512):
    block = layers.AttentionBlock(512, num_head_channels=head_channels).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        block(xa)
    times = []
    with torch.no_grad():
        for _ in range(5):
            start = time.perf_counter()
            block(xa)
            times.append(time.perf_counter() - start)
    print(f"{512 // head_channels:2d} head(s) x {head_channels:3d} channels: {counter.get_total_flops() / 1e9:.2f} GFLOP, "
          f"{1e3 * min(times):5.1f} ms")

# %% [markdown]
# Samples of the baseline and the addition + GN network (seed 0, DDIM-10, one column per
# class), both rough after 120 steps; how often does a column show its digit (exercise 5)?

# %%
from gcg.images import plot_image_grid

fig, axes = plt.subplots(1, 2, figsize=(10, 3.9))
for ax, v in zip(axes, ("baseline", "addition + GN")):
    plot_image_grid(ax, by[v, SEEDS[0]]["samples"][:50], nrow=10, tile=24, pad_value=0.6,
                    col_labels=[str(c) for c in range(10)], title=f"{v} (seed {SEEDS[0]})")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### Depth and heads trained longer: Table 1's first row, Table 2 and Fig. 2
#
# `benchmarks/adm_ablation.py` trains the baseline, depth 2 (`num_res_blocks=2`; Table 1 also
# narrows, which 32 channels, GroupNorm's minimum, cannot) and 2, 4 and 8 heads with the recipe
# above for 600 steps and five seeds; we read its stored result:
#
# ```bash
# python benchmarks/adm_ablation.py --steps 600 --seeds 0 1 2 3 4   # ≈ 27 CPU-minutes, resumable
# python benchmarks/adm_ablation.py --time                           # s / step, one thread
# ```

# %%
import json
from pathlib import Path

import gcg.ablation
from gcg.ablation import paired_summary

stored = json.loads((Path(gcg.ablation.__file__).resolve().parents[1] / "benchmarks" / "adm_ablation.json").read_text())
long_runs = stored["runs"]
stats = paired_summary(long_runs)  # per variant: mean ± se of the held-out loss, paired Δ ± se
curves = {(r["variant"], r["seed"]): np.array(r["history"]) for r in long_runs}  # [logs, (step, loss, s)]
long_seeds = sorted(s for s in {r["seed"] for r in long_runs} if all((v, s) in curves for v in stats))
sec = stored["timing"]["seconds_per_step"]  # one thread, nothing else running
gflop = {r["variant"]: r["gflop_per_step"] for r in long_runs}
rows = ["| variant | params | GFLOP / step | s / step | held-out loss | Δ vs baseline | paper ΔFID |",
        "|---|---|---|---|---|---|---|"]
for v, st in stats.items():
    params = next(r["params"] for r in long_runs if r["variant"] == v)
    change = "—" if v == "baseline" else f"{st['delta']:+.4f} ± {st['delta_se']:.4f}"
    rows.append(f"| {v} | {params:,} | {gflop[v]:.2f} | {sec[v]:.3f} | {st['mean']:.4f} ± {st['se']:.4f} | "
                f"{change} | {stored['paper'][v]} |")
print(f"{stored['steps']} steps per run, seeds {long_seeds}; mean ± standard error over seeds")
Markdown("\n".join(rows))


# %%
def mean_curve(v, column):
    return np.mean([curves[v, s][:, column] for s in long_seeds], axis=0)


steps = mean_curve("baseline", 0)
fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
for v, color in (("baseline", "C0"), ("depth 2", "C3")):
    axes[0].plot(steps, mean_curve(v, 1), color=color, label=v)
    axes[1].plot(steps * sec[v], mean_curve(v, 1), color=color, label=v)
for ax, xlabel in zip(axes[:2], ("training step", "training time, one thread (s)")):
    ax.set(xlabel=xlabel, ylabel="training loss (20-step mean)", ylim=(0.14, 0.3))
    ax.legend(fontsize=8)
axes[0].set_title("by step")
axes[1].set_title("by wall clock (the view of ADM's Fig. 2)")
for i, (v, color) in enumerate((("2 heads", "C1"), ("4 heads", "C2"), ("8 heads", "C4"), ("depth 2", "C3"))):
    diff = np.array([curves[v, s][:, 1] - curves["baseline", s][:, 1] for s in long_seeds])
    axes[2].plot(steps, diff.mean(0), color=color, lw=1, label=v)
    axes[2].errorbar(steps[-1] + 25 + 12 * i, stats[v]["delta"], yerr=stats[v]["delta_se"], fmt="o", ms=3,
                     color=color, capsize=2)
axes[2].axhline(0, color="k", lw=0.5)
axes[2].set(xlabel="training step (dots: held-out Δ ± se at the end)", ylabel="loss minus baseline (same seed)",
            title="paired difference to the baseline", ylim=(-0.004, 0.003))
axes[2].legend(fontsize=7, ncol=2)
fig.tight_layout()
plt.show()

# %% tags=["hide-input"] jupyter={"source_hidden": true}
flop_ratio, time_ratio = gflop["depth 2"] / gflop["baseline"], sec["depth 2"] / sec["baseline"]
window = 5 * stored["log_every"]  # compare 100-step means of the training loss
same_time = steps[-1] / time_ratio  # depth 2's step when the baseline has trained for as long as its 600 steps
behind = [np.mean(np.interp(same_time - np.arange(0, window, stored["log_every"]), *curves["depth 2", s][:, :2].T))
          - curves["baseline", s][-5:, 1].mean() for s in long_seeds]
assert 1.3 < flop_ratio < 1.6 and time_ratio > 1.15, (flop_ratio, time_ratio)
assert min(behind) > 0, f"depth 2 should trail the baseline at equal training time in every seed: {behind}"
assert {gflop[v] for v in ("2 heads", "4 heads", "8 heads")} == {gflop["baseline"]}
assert max(abs(stats[v]["delta"]) for v in stats) < 0.003, "long-run effects stay far below AdaGN's gap"
print(f"depth 2: {flop_ratio:.2f}x the FLOPs and {time_ratio:.2f}x the time of a step; at equal time (its step "
      f"{same_time:.0f}) its training loss trails by {np.mean(behind):+.4f} (range {min(behind):+.4f} to "
      f"{max(behind):+.4f}); per step its held-out Δ is {stats['depth 2']['delta']:+.4f} ± "
      f"{stats['depth 2']['delta_se']:.4f}")

# %% [markdown]
# The runs show:
#
# - **Per second, depth loses** in every seed: in the time of the baseline's 600 steps it
#   reaches about step 430, with a clearly higher training loss (Fig. 2's argument).
# - **Per step, its gain is not resolved**: held-out loss lower by about 0.001 (two standard
#   errors, four of five seeds), the paper's direction; its training loss is no lower (right panel).
# - **Heads**: 2, 4 and 8 heads each lower the held-out loss by about 0.0005 (two standard
#   errors), the paper's direction, without Table 2's growth with the head count.

# %% [markdown]
# ## Summary
#
# $$
# \mathrm{AdaGN}(h, e) = (1 + y_s)\,\mathrm{GroupNorm}(h) + y_b,\qquad [y_s, y_b] = \mathrm{Linear}(\mathrm{SiLU}(e))
# $$
#
# The ADM UNet is a handful of switches in `UNetConfig` (sinusoidal embedding, AdaGN residual
# blocks, BigGAN resampling, multi-head attention at chosen resolutions) whose parameter counts
# match all eleven released models exactly; at 8×8 only AdaGN's advantage over addition +
# GroupNorm separates from seed noise, and depth loses per second, as in Fig. 2. [Chapter 06](06_cascaded_diffusion.ipynb) stacks such UNets into a cascade.
#
# ## Exercises
#
# 1. **GroupNorm and a constant.** Starting from Eq. {eq}`ch05-gn-add`, show that
#    $\mathrm{GN}(h + y) = \mathrm{GN}(h)$ whenever each group holds one channel. For $g$ channels
#    per group and i.i.d. $y_c$, show that the expected fraction of $\lVert y \rVert^2$ that
#    survives the mean subtraction is $(g-1)/g$, and check it numerically with
#    `layers.GroupNorm32`. (seconds on a CPU)
#
#    ```{admonition} Hint
#    :class: dropdown
#    $y$ is constant over positions, so it shifts the group mean by $\bar y_g$ and leaves the group variance of $h + y - \bar y_g$ to the within-group spread of $y$.
#    ```
#
#    ```{admonition} Solution
#    :class: dropdown
#    With one channel per group, $\bar y_g = y_c$, so $h_c + y_c - \overline{(h + y)}_g = h_c - \bar h_g$
#    and the variance over the group is that of $h$: $\mathrm{GN}(h + y) = \mathrm{GN}(h)$. With $g$
#    channels, what survives is $y_c - \bar y_g$, and
#    $\mathbb E\sum_{c \in g}(y_c - \bar y_g)^2 = (g - 1)\sigma^2$ (the unbiased-variance identity)
#    against $\mathbb E\sum_{c \in g} y_c^2 = g\sigma^2$ for zero-mean $y_c$: a fraction $(g-1)/g$.
#    ```
#
# 2. **Heads cost no FLOPs.** Count the multiply-adds of Eq. {eq}`ch05-attention` for $H$ heads
#    over $T$ tokens and $C$ channels, and compare with the FLOP counts of the cost table.
#
#    ```{admonition} Hint
#    :class: dropdown
#    Count the qkv and output projections, then $q_j^\top k_j$ and $v_j\,\mathrm{softmax}(\cdot)^\top$ for one head of $d = C/H$ channels, and multiply by $H$.
#    ```
#
#    ```{admonition} Solution
#    :class: dropdown
#    The projections cost $3C^2T + C^2T$. Per head, $q_j^\top k_j$ is $T \times d$ times $d \times T$:
#    $T^2 d$ multiply-adds, and so is the weighted sum of values; over $H$ heads,
#    $2HT^2d = 2T^2C$. Total $4C^2T + 2T^2C$, independent of $H$ (the softmax, $HT^2$
#    exponentials, is the only term that grows with $H$, and is not a matrix product).
#    ```
#
# 3. **One residual block by hand.** Write the parameter count of
#    `layers.ResBlock(C, 4C, use_scale_shift_norm=True)` as a polynomial in $C$ and check it with
#    `count_parameters` for C = 192 (the ImageNet 64 width). (seconds on a CPU)
#
#    ```{admonition} Hint
#    :class: dropdown
#    Two GroupNorms ($2C$ each), two 3×3 convolutions ($9C^2 + C$ each), the embedding projection $4C \to 2C$ with bias, identity skip.
#    ```
#
#    ```{admonition} Solution
#    :class: dropdown
#    $4C + 2(9C^2 + C) + (8C^2 + 2C) = 26C^2 + 8C$; for $C = 192$: $958{,}464 + 1{,}536 = 960{,}000$.
#    ```
#
# 4. **Do the other ablations sharpen with training?** Add BigGAN up/down, attention at 8, 4 and
#    rescaling to `VARIANTS` in `benchmarks/adm_ablation.py` and run them like depth and heads.
#    Which Table 1 effects exceed three standard errors? (≈ 20 CPU-minutes)
#
#    ```{admonition} Hint
#    :class: dropdown
#    Keep `--steps 600` and the seeds, so the stored baseline pairs with the new runs.
#    ```
#
# 5. **Wider blocks, smaller AdaGN gap.** Set `model_channels=64` in `BASELINE` (two channels per
#    GroupNorm group) and rerun the AdaGN-vs-addition pair. Does the gap shrink as exercise 1
#    predicts? Measure also the class accuracy of the samples under `feature_net`: does the
#    addition network ignore the label more often? (≈ 2 min on a 2-core CPU)
#
#    ```{admonition} Hint
#    :class: dropdown
#    `feature_net` is a classifier: take the argmax of its logits on the samples and compare with `SAMPLE_LABELS`.
#    ```
