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
# # 05 — The ADM architecture
#
# Before guidance, "Diffusion Models Beat GANs" {cite:p}`dhariwal2021beat` spends a section
# (Sec. 3) on the denoising network itself. Starting from the UNet of improved DDPM
# {cite:p}`nichol2021improved`, it ablates five choices on ImageNet 128×128 and reports the change
# in FID after 700K and 1200K training steps (Table 1; baseline: 160 channels, 2 residual blocks
# per resolution, 1 attention head, attention at 16×16 only, FID 15.33 at 700K):
#
# | change | ΔFID 700K | ΔFID 1200K |
# |---|---|---|
# | 4 heads | −0.54 | −0.82 |
# | attention at 32, 16, 8 | −0.72 | −0.66 |
# | BigGAN up/down-sampling | −1.20 | −1.21 |
# | rescale residual sums by 1/√2 | +0.16 | +0.25 |
# | all of the above except rescaling | −3.14 | −3.00 |
#
# Table 2 sweeps the heads (more is better, 64 channels per head chosen for wall-clock speed), and
# Table 3 compares two ways of injecting the timestep and class: **AdaGN**, FID 13.06, against
# **addition + GroupNorm**, FID 15.08.
#
# This chapter takes the network apart piece by piece. For each part — the timestep embedding,
# the residual block with AdaGN, BigGAN up/down-sampling, multi-head attention, and the
# classifier's attention pool — it shows the gcg code (`gcg/nn/layers.py`, `gcg/nn/unet.py`,
# `gcg/nn/classifier.py`) and checks it numerically against the formula. It then counts the
# parameters of OpenAI's eleven released models from gcg's presets, and finally runs a
# scaled-down analogue of Tables 1–3 on the 8×8 digits.

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
# The ADM UNet maps a noisy image $x_t$ [N, C, H, W], its timestep $t$ [N] and (optionally) a
# class label $y$ [N] to a prediction of the noise $\epsilon$ [N, C, H, W] (twice the channels
# when it also predicts the variance, chapter 02). Its skeleton:
#
# 1. an **embedding** $e = \mathrm{MLP}(\mathrm{sinusoid}(t)) + \mathrm{Embed}(y)$ of width
#    $4 \times$ `model_channels`, fed to every residual block;
# 2. a **down path**: per resolution, `num_res_blocks` residual blocks (followed by self-attention at
#    the resolutions listed in `attention_resolutions`), then a halving of H and W; every output is
#    kept as a skip connection;
# 3. a **middle block** at the lowest resolution: residual block, attention, residual block;
# 4. an **up path** mirroring the down path, each block concatenating one skip, with a doubling
#    of H and W at the end of each level;
# 5. GroupNorm, SiLU and a zero-initialised 3×3 convolution to the output channels.
#
# The baseline of this chapter's experiment is a small version of that network for 8×8
# digits: 32 channels, channel multipliers (1, 2), one residual block per level, one attention
# head at 4×4. Tracing a batch through it prints the anatomy:

# %%
BASELINE = dict(image_size=8, in_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), num_heads=1, num_head_channels=-1, resblock_updown=False,
                use_scale_shift_norm=True, resblock_rescale=False, num_classes=10)
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
# High channels change slowly with $t$ (they tell coarse time), low channels quickly (fine
# time); the similarity to $t = 500$ peaks at $t = 500$ and decays with $|t - 500|$, which is what
# lets the MLP read the time off the vector.

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
# $\mathrm{GN}$ is GroupNorm with 32 groups, $\mathrm{Conv}_2$ starts at zero (every residual
# block begins as the identity) and `skip` is the identity, or a 1×1 convolution when the channel
# count changes.

# %% tags=["nbval-ignore-output"]
show(layers.ResBlock)


# %% [markdown]
# The check rebuilds Eq. {eq}`ch05-resblock` from the block's own weights with
# `torch.nn.functional`, after giving $\mathrm{Conv}_2$ random weights (at initialisation it is zero
# and would hide errors in the branch):

# %%
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


gen = torch.Generator().manual_seed(1)
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
# Only the deviations of $y_c$ within a group survive. At 32 channels and 32 groups every group
# is a single channel, $y_c = \overline{y}_g$, and **the timestep and the class are erased
# entirely**; at 64 channels each pair of channels keeps one difference. AdaGN's scale and shift
# act *after* the normalisation and always survive. On ImageNet the widths are 128–1024 (4–32
# channels per group), so the loss there is partial; on our 32-channel digits network it is
# total in half of the blocks:

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
# $\mathrm{out} = R(x)$ — the network starts from the simplest resampler and learns a
# correction, conditioned on $t$ and $y$ through AdaGN.

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
# with $q_j, k_j, v_j \in \mathbb{R}^{d \times HW}$ and the softmax over keys. Changing $H$ does
# not change a single parameter — the same $W_{qkv}$ and $W_{\mathrm{proj}}$ are only sliced
# differently — it trades one wide similarity for several narrow ones. ADM sets either the number
# of heads (`num_heads`) or the channels per head (`num_head_channels`, 64 in the released
# models, the wall-clock choice of Table 2). gcg computes the heads with PyTorch's
# `scaled_dot_product_attention`:

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
# Where the attention sits, and how many heads it has, in the released ImageNet 64×64 model
# (192 channels, multipliers 1, 2, 3, 4, 64 channels per head, attention at 32, 16 and 8):

# %%
cfg64 = MODEL_PRESETS["64x64_diffusion"]
for level, mult in enumerate(cfg64.channel_mult):
    res, ch = cfg64.image_size // 2 ** level, int(mult * cfg64.model_channels)
    if res in cfg64.attention_resolutions:
        heads = layers.resolve_num_heads(ch, cfg64.num_heads, cfg64.num_head_channels)
        print(f"{res:2d}x{res:<2d}: {ch:3d} channels -> {heads:2d} heads of {ch // heads} channels, "
              f"{res * res:4d} tokens")
    else:
        print(f"{res:2d}x{res:<2d}: {ch:3d} channels, no attention")

# %% [markdown]
# ## The classifier and its attention pool
#
# The noise-aware classifier of classifier guidance (chapter 04) is the UNet's down path and
# middle block, followed by a head that turns the final $S \times S$ map into logits. The released
# classifiers pool with attention (after CLIP): the $S^2$ positions plus their mean form
# $S^2 + 1$ tokens, a learned position embedding $P$ is added, and **only the mean token
# queries**:
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
# gcg names its presets after OpenAI's released checkpoint files, with the flags from the
# guided-diffusion README. If every switch above is implemented as in the reference code, the
# parameter counts must equal the released ones *exactly* — a strong check of the whole
# architecture, since a missing bias or a different channel count in any one of hundreds of
# layers changes the total. The models are built on PyTorch's `meta` device: shapes only, no
# memory, no time.

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
# All eleven match to the last digit published (the tensor counts in brackets are those of the
# released 64×64 pair). The paper's appendix quotes "296M" for the ImageNet 64 model and "65M"
# for its classifier. `gcg.load_openai_checkpoint` loads the released weights into these modules.
#
# Where do the 296M parameters of the 64×64 model sit? Mostly in the 3×3 convolutions of the
# residual blocks at the two lowest resolutions, where the channels are widest:

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
# The same five changes, on the sklearn digits (1,437 training and 360 held-out 8×8 images,
# class-conditional), each starting from the small baseline traced at the top:
#
# | variant | change to the baseline | paper |
# |---|---|---|
# | baseline | 32 ch, mult (1, 2), 1 res block, 1 head, attention at 4×4, conv resampling, AdaGN | FID 15.33 (Table 1) |
# | 4 heads | `num_heads=4` (16 channels per head at 4×4) | −0.54 (Table 1) |
# | attention at 8, 4 | `attention_resolutions=(8, 4)` | −0.72 (Table 1) |
# | BigGAN up/down | `resblock_updown=True` | −1.20 (Table 1) |
# | addition + GN | `use_scale_shift_norm=False` | +2.02 (Table 3: 15.08 vs 13.06) |
# | rescale 1/√2 | `resblock_rescale=True` | +0.16 (Table 1) |
#
# Every run trains with `gcg.train.train` for the **same number of steps** (the paper compares at
# equal steps, 700K; a step budget is deterministic, a wall-clock budget is not, and the time per
# step is printed below for the wall-clock view). With the same seed, all variants see the same
# batches, timesteps and noise, so the comparison within a seed is paired; different seeds change
# the initialisation and the data order, and show how much of a difference is noise. The score is
# the $L_\mathrm{simple}$ loss on the held-out digits, with timesteps and noise fixed once for all
# models (common random numbers), which makes it a low-variance comparison.

# %%
from gcg.data import load_digits_dataset
from gcg.features import train_feature_net
from gcg.metrics import fid_from_features
from gcg.presets import TrainConfig
from gcg.sample import generate
from gcg.train import train

train_set, test_set = load_digits_dataset("train"), load_digits_dataset("test")
x_test, y_test = test_set.as_tensors()
STEPS = int(round(120 * GCG_SCALE))  # optimizer steps per run, batch 32
SEEDS = (0, 1)
NUM_SAMPLES = int(round(200 * GCG_SCALE))  # DDIM-10 samples per run for FD
SAMPLE_LABELS = torch.arange(NUM_SAMPLES) % 10
NETWORK = {k: v for k, v in BASELINE.items() if k not in ("image_size", "in_channels", "num_classes")}
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


def heldout_loss(model, diffusion, seed=1234, repeats=4):
    """Mean L_simple on the 360 held-out digits, t and noise drawn once from a fixed generator."""
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total = 0.0
    with torch.no_grad():
        for _ in range(repeats):
            t = torch.randint(0, diffusion.num_timesteps, (len(x_test),), generator=g)
            noise = torch.randn(x_test.shape, generator=g)
            losses = diffusion.training_losses(model, x_test.to(device), t.to(device),
                                               model_kwargs={"y": y_test.to(device)}, noise=noise.to(device))
            total += losses["loss"].mean().item() / repeats
    return total


def run(variant, seed):
    """Train one variant with gcg.train for STEPS steps; held-out loss, FD of DDIM samples, timing."""
    config = TrainConfig(model="digits8_small", dataset="digits", image_size=8, noise_schedule="cosine",
                         batch_size=32, lr=2e-3, max_steps=STEPS, ema_rates=(), dropout=0.0, p_uncond=0.0,
                         log_every=10, seed=seed,
                         model_overrides={**NETWORK, "class_null": False, **VARIANTS[variant]})
    start = time.perf_counter()
    result = train(config, progress=False, dataset=train_set)
    seconds = time.perf_counter() - start
    model = result.model.eval()
    samples = generate(model, result.diffusion, NUM_SAMPLES, (1, 8, 8), class_labels=SAMPLE_LABELS,
                       timestep_respacing="ddim10", generator=torch.Generator(DEVICE).manual_seed(seed),
                       device=DEVICE).cpu()
    return dict(variant=variant, seed=seed, params=count_parameters(model), seconds_per_step=seconds / result.step,
                history=result.history, heldout=heldout_loss(model, result.diffusion), samples=samples,
                fd=fid_from_features(feature_net.extract(samples)["pool"], real_features))


# the domain feature network of the FD column (gcg.features; not Inception, not comparable to FID)
feature_net = train_feature_net(*train_set.as_tensors(), epochs=8, seed=0)
real_features = feature_net.extract(x_test)["pool"]
runs = [run(variant, seed) for seed in SEEDS for variant in VARIANTS]

# %% [markdown]
# The held-out loss of every run, its paired change against the baseline of the same seed, the
# parameter count, the time per step on this machine, the Fréchet distance between 200 DDIM-10
# samples and the 360 held-out digits on the features of a small classifier trained on the
# digits (`gcg.features`; "FD on domain features", not comparable to FID), and the paper's FID
# change beside it (FID and loss are both lower-is-better, so the signs compare; the magnitudes
# do not):

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
Markdown("\n".join(rows))

# %% tags=["nbval-ignore-output"]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for i, v in enumerate(VARIANTS):
    steps = [h["step"] for h in by[v, SEEDS[0]]["history"]]
    curve = np.mean([[h["loss"] for h in by[v, s]["history"]] for s in SEEDS], axis=0)
    base = np.mean([[h["loss"] for h in by["baseline", s]["history"]] for s in SEEDS], axis=0)
    axes[0].plot(steps, curve, label=v, color=f"C{i}")
    axes[1].plot(steps, curve - base, color=f"C{i}")
axes[0].set(xlabel="step", ylabel="training loss (10-step mean)", yscale="log", title="loss curves, mean of seeds")
axes[1].set(xlabel="step", ylabel="minus baseline", title="paired difference to the baseline")
axes[1].axhline(0, color="k", lw=0.5)
axes[0].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# What the runs show (the numbers above are this execution's; the statements below were checked
# on three seeds, 0–2, while writing the chapter):
#
# - **Addition + GroupNorm is clearly worse** than AdaGN: +0.014 to +0.017 held-out loss in every
#   seed, ten times the spread of the other changes (and a higher FD in our development runs).
#   The direction is the
#   paper's (Table 3), but the size is not comparable: at 32 channels GroupNorm erases the
#   embedding completely (Eq. {eq}`ch05-gn-add`), so half of our blocks see neither $t$ nor $y$,
#   whereas ImageNet-width blocks lose only the group means.
# - **Residual rescaling by 1/√2** raised the held-out loss in all three development seeds, the
#   paper's direction, but only by about 0.001 — as small as the seed-to-seed scatter of the
#   other changes. We report it and do not assert it.
# - **4 heads, attention at 8×8 as well, BigGAN up/down**: the paired changes flip sign between
#   seeds (±0.002). At 120 steps on 8×8 digits these choices are not measurable; the paper needed
#   700K steps on ImageNet 128 to separate them by about 1 FID. What *is* solid at this scale is
#   their cost: 4 heads and rescaling add no parameters, BigGAN blocks add ~9% parameters here,
#   and attention at 8×8 (64 tokens instead of 16) costs the most time per step on our CPU.
#
# The cell below asserts only the claim that held with a wide margin in every seed, plus the
# structural facts.

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
# Samples of the baseline and of the addition + GN network (seed 0, DDIM with 10 steps, one
# column per class 0–9). After 120 steps both are rough; compare how often each column shows the
# digit it was asked for (exercise 5 makes this quantitative with the feature network):

# %%
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
for ax, v in zip(axes, ("baseline", "addition + GN")):
    grid = by[v, SEEDS[0]]["samples"][:60, 0].reshape(6, 10, 8, 8).permute(0, 2, 1, 3).reshape(48, 80)
    ax.imshow(grid.clamp(-1, 1), cmap="gray_r", vmin=-1, vmax=1)
    ax.set(title=f"{v} (seed {SEEDS[0]})", xticks=[], yticks=[])
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Summary
#
# - The ADM UNet is a handful of parts, each a switch in `UNetConfig`: the sinusoidal timestep
#   embedding (Eq. {eq}`ch05-sinusoid`), residual blocks with AdaGN (Eq. {eq}`ch05-resblock`),
#   BigGAN residual resampling that starts as plain resampling (Eq. {eq}`ch05-biggan`),
#   multi-head attention whose head count changes no parameter (Eq. {eq}`ch05-attention`), and,
#   in the classifier, attention pooling from the mean token (Eq. {eq}`ch05-attnpool`).
# - gcg's presets reproduce the parameter counts of all eleven released models exactly.
# - At 8×8 and 120 steps, only the AdaGN-vs-addition ablation separates from seed noise, and it
#   does so for a reason the small width exaggerates; the other Table 1 effects need far more
#   training than a CPU chapter allows (exercise 4).
#
# ## Exercises
#
# 1. **GroupNorm and a constant.** Starting from Eq. {eq}`ch05-gn-add`, show that
#    $\mathrm{GN}(h + y) = \mathrm{GN}(h)$ whenever each group holds one channel. For $g$ channels
#    per group and i.i.d. $y_c$, show that the expected fraction of $\lVert y \rVert^2$ that
#    survives the mean subtraction is $(g-1)/g$, and check it numerically with
#    `layers.GroupNorm32`.
# 2. **Heads cost no parameters — and no FLOPs?** Count the multiply-adds of
#    Eq. {eq}`ch05-attention` for $H$ heads over $T$ tokens and $C$ channels. Why did the paper
#    still choose 64 channels per head "for wall-clock efficiency" (Table 2)? Time
#    `layers.AttentionBlock(256, num_heads=h)` on a 16×16 map for h = 1, 4, 16.
# 3. **One residual block by hand.** Write the parameter count of
#    `layers.ResBlock(C, 4C, use_scale_shift_norm=True)` as a polynomial in $C$ and check it with
#    `count_parameters` for C = 192 (the ImageNet 64 width). What share of the 296M is that
#    polynomial times the number of blocks at each level?
# 4. **Does the ablation sharpen with training?** Run the experiment at `GCG_SCALE=10` (on a GPU,
#    1,200 steps) with seeds 0–4 and compute, per variant, the mean paired difference divided by
#    its standard error. Which of the Table 1 effects emerge from the noise, and in which
#    direction?
# 5. **Wider blocks, smaller AdaGN gap.** Set `model_channels=64` in `BASELINE` (two channels per
#    GroupNorm group) and rerun the AdaGN-vs-addition pair. Does the gap shrink as exercise 1
#    predicts? Measure also the class accuracy of the samples under `feature_net`: does the
#    addition network ignore the label more often?
