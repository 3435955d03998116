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
# # 08 · Training at scale
#
# ```{admonition} Learning goals
# After this chapter you can
# - read the paper's ImageNet 64×64 recipe off `python -m gcg.train --preset imagenet64` and check
#   it against the appendix, field by field;
# - estimate a run's compute (FLOPs per image, GPU-days at a given utilisation) and its memory
#   (optimizer states against activations);
# - implement the EMA update, and explain why gradient accumulation and DDP leave the update
#   unchanged;
# - resume an interrupted run bit-exactly, and take a checkpoint to samples and metrics, OpenAI's
#   released weights included.
#
# **Prerequisites:** [chapter 02](02_improved_ddpm.ipynb) ($L_\text{hybrid}$, learned variance),
# [chapter 05](05_adm_architecture.ipynb) (the ADM UNet), [chapter 07](07_measuring_samples.ipynb)
# (the metrics); a PyTorch training loop (autograd, an optimizer).
# ```
#
# Every earlier chapter trained on a CPU in minutes. The ImageNet 64×64 model of "Diffusion
# Models Beat GANs" {cite:p}`dhariwal2021beat` has 296M parameters, was trained for 540K steps at
# a batch of 2048 images, and reaches **FID 2.07** (ADM with dropout, Table 5; 2.61 without
# dropout, 2.92 for improved DDPM). This chapter bridges the two: the recipe (section 1), its cost
# (2), many GPUs (3), resuming (4), and samples to metrics (5, 6). Everything executable runs at
# toy scale on a CPU; the GPU-sized commands stand next to it.

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
import contextlib
import copy
import dataclasses
import inspect
import io
import json
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Image, Markdown, display
from torch.utils.flop_counter import FlopCounterMode

from gcg import checkpoint, convert, evaluate
from gcg import sample as gcg_sample
from gcg import train as gcg_train
from gcg.data import TensorImageDataset, load_digits_dataset, make_loader
from gcg.features import save_feature_net, train_feature_net
from gcg.nn.config import MODEL_PRESETS, count_parameters, create_model
from gcg.presets import apply_overrides, get_preset

WORK = Path(tempfile.mkdtemp(prefix="gcg_ch08_"))  # every file this chapter writes goes here


def show(obj):
    """Display the source of a gcg function or class as a highlighted code block."""
    return Markdown(f"```python\n{inspect.getsource(obj)}```")


def rel(text):
    """Replace this run's temporary directory by $WORK so printed paths are stable."""
    return str(text).replace(str(WORK), "$WORK")


def params(model):
    return [p.detach().clone() for p in model.parameters()]


# %% [markdown]
# ## 1. The recipe, line by line
#
# The paper's appendix {cite:p}`dhariwal2021beat` gives the ImageNet 64×64 diffusion model as:
# T = 1000 steps of the cosine schedule {cite:p}`nichol2021improved`, 296M parameters,
# 192 channels, depth 3 (residual blocks per resolution), channel multipliers 1, 2, 3, 4,
# 64 channels per attention head, attention at 32, 16 and 8, BigGAN up/down-sampling,
# dropout 0.1, batch 2048, 540K iterations, learning rate 3·10⁻⁴, Adam(W) with
# β = (0.9, 0.999), an EMA of rate 0.9999 and fp16 with loss scaling. The variance is learned with
# the hybrid loss of improved DDPM,
#
# $$ L_\text{hybrid} = L_\text{simple} + \lambda L_\text{vlb}, \qquad \lambda = 0.001. $$ (ch08-hybrid)
#
# In gcg (as in the ADM code) this is `model_var_type="learned_range"` with
# `loss_type="rescaled_mse"`: each example adds its variational term $L_t$ times $T/1000$, whose
# expectation over uniform $t$ is $0.001 \sum_t L_t = \lambda L_\text{vlb}$ (chapter 02).
#
# The whole recipe is one preset, `python -m gcg.train --preset imagenet64`. Its network is
# `MODEL_PRESETS["64x64_diffusion"]`, made consistent with the data (3 channels, 1000 classes) and
# the objective (learned σ doubles the output channels) by `build_model_config`, as the trainer does:

# %%
recipe = get_preset("imagenet64")
network = gcg_train.build_model_config(recipe, data_shape=(3, 64, 64), num_classes=1000)
print(recipe.description)
print({k: v for k, v in recipe.to_dict().items() if k not in ("description",)})
assert network == MODEL_PRESETS["64x64_diffusion"], "the trainer must build the released network"

# %% [markdown]
# Adam's β, the loss scaler and the EMA are built by `gcg.train.setup`. To read them off without a
# 296M-parameter model, build the preset with only the network and data swapped for toy ones:

# %%
toy_images = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
toy_data = TensorImageDataset(toy_images, torch.arange(8) % 3)
probe = apply_overrides(recipe, {"model": "tiny", "image_size": 8, "device": "cpu", "out_dir": None})
state, _ = gcg_train.setup(probe, dataset=toy_data)
optimizer = state.optimizer

PAPER = [  # (appendix item, paper's value, gcg's value, where gcg keeps it)
    ("diffusion steps T", 1000, recipe.diffusion_steps, "TrainConfig.diffusion_steps"),
    ("noise schedule", "cosine", recipe.noise_schedule, "TrainConfig.noise_schedule"),
    ("learned variance, L_hybrid", ("learned_range", "rescaled_mse"),
     (recipe.model_var_type, recipe.loss_type), "TrainConfig.model_var_type, loss_type"),
    ("channels", 192, network.model_channels, "UNetConfig.model_channels"),
    ("depth", 3, network.num_res_blocks, "UNetConfig.num_res_blocks"),
    ("channel multipliers", (1, 2, 3, 4), network.channel_mult, "UNetConfig.channel_mult"),
    ("channels per head", 64, network.num_head_channels, "UNetConfig.num_head_channels"),
    ("attention resolutions", (32, 16, 8), network.attention_resolutions, "UNetConfig.attention_resolutions"),
    ("BigGAN up/down", True, network.resblock_updown, "UNetConfig.resblock_updown"),
    ("AdaGN (Table 3)", True, network.use_scale_shift_norm, "UNetConfig.use_scale_shift_norm"),
    ("dropout", 0.1, network.dropout, "TrainConfig.dropout -> UNetConfig.dropout"),
    ("classes", 1000, network.num_classes, "UNetConfig.num_classes"),
    ("batch size", 2048, recipe.batch_size, "TrainConfig.batch_size (global)"),
    ("iterations", 540_000, recipe.max_steps, "TrainConfig.max_steps"),
    ("learning rate", 3e-4, recipe.lr, "TrainConfig.lr"),
    ("optimizer", "AdamW", type(optimizer).__name__, "gcg.train.setup"),
    ("Adam β", (0.9, 0.999), tuple(optimizer.param_groups[0]["betas"]), "gcg.train.setup"),
    ("EMA rate", (0.9999,), recipe.ema_rates, "TrainConfig.ema_rates"),
    ("fp16 with loss scaling", ("fp16", True), (recipe.precision, state.scaler.is_enabled()),
     "TrainConfig.precision, GradScaler"),
]
rows = ["| appendix | paper | gcg `imagenet64` | field |", "|---|---|---|---|"]
rows += [f"| {item} | {paper} | {ours} | `{where}` |" for item, paper, ours, where in PAPER]
Markdown("\n".join(rows))

# %%
mismatches = [(item, paper, ours) for item, paper, ours, _ in PAPER if paper != ours]
assert not mismatches, f"imagenet64 preset differs from the paper's appendix: {mismatches}"
print(gcg_train.precision_notice(state))  # the probe was built on a CPU
assert state.precision == "fp32" and gcg_train.compute_precision("fp16", "cuda") == "fp16"

# %% [markdown]
# The guidance classifier has its own recipe (appendix: 65M parameters, 128 channels, depth 4,
# attention pooling at 8×8, weight decay 0.2, batch 1024, 300K iterations, learning rate 6·10⁻⁴;
# the rest as above), trained on noisy images $x_t \sim q(x_t \mid x_0)$ (chapter 04):

# %%
clf_recipe = get_preset("imagenet64-classifier")
clf_net = gcg_train.build_model_config(clf_recipe, data_shape=(3, 64, 64), num_classes=1000)
CLASSIFIER_PAPER = [
    ("channels", 128, clf_net.model_channels), ("depth", 4, clf_net.num_res_blocks),
    ("channel multipliers", (1, 2, 3, 4), clf_net.channel_mult),
    ("channels per head", 64, clf_net.num_head_channels),
    ("attention resolutions", (32, 16, 8), clf_net.attention_resolutions),
    ("BigGAN up/down", True, clf_net.resblock_updown), ("pooling", "attention", clf_net.pool),
    ("weight decay", 0.2, clf_recipe.weight_decay), ("batch size", 1024, clf_recipe.batch_size),
    ("iterations", 300_000, clf_recipe.max_steps), ("learning rate", 6e-4, clf_recipe.lr),
    ("noise schedule", "cosine", clf_recipe.noise_schedule), ("task", "classifier", clf_recipe.task),
]
for item, paper, ours in CLASSIFIER_PAPER:
    print(f"{item:<22} paper {str(paper):<14} gcg {ours}")
assert all(paper == ours for _, paper, ours in CLASSIFIER_PAPER), CLASSIFIER_PAPER
assert clf_net == MODEL_PRESETS["64x64_classifier"]

# %% [markdown]
# gcg's own choices: `microbatch=64` (a memory knob that does not change the update, section 3),
# the checkpoint/sample cadence, and fp32 compute on a CPU, where 16-bit autocast is several times
# slower (the notice printed above). Without the data the trainer says what it expected:

# %%
status = gcg_train.main(["--preset", "imagenet64", "--data-dir", "missing/imagenet64", "--no-progress"])
print("exit status", status)
assert status == 2

# %% [markdown]
# ## 2. Compute and memory arithmetic
#
# ### Parameters and FLOPs
#
# A network built on PyTorch's `meta` device has shapes but no storage, so the 296M-parameter
# model costs nothing to build. gcg's presets have exactly the parameter counts of OpenAI's
# released `64x64_diffusion.pt` (295.90M) and classifier (65.44M):

# %%
with torch.device("meta"):
    adm64 = create_model(network)
    adm64_classifier = create_model(clf_net)
n_params = count_parameters(adm64)
print(f"64x64_diffusion : {n_params:,} parameters = {n_params / 1e6:.2f}M")
print(f"64x64_classifier: {count_parameters(adm64_classifier):,} parameters "
      f"= {count_parameters(adm64_classifier) / 1e6:.2f}M")
assert round(n_params / 1e6, 2) == 295.90
assert round(count_parameters(adm64_classifier) / 1e6, 2) == 65.44

# %% [markdown]
# `torch.utils.flop_counter.FlopCounterMode` adds up the cost of every convolution and matrix
# product from their shapes, so it works on meta tensors. A $k \times k$ convolution from
# $C_\text{in}$ to $C_\text{out}$ channels on an $H \times W$ map costs
# $2 k^2 C_\text{in} C_\text{out} H W$ FLOPs (a multiply and an add per weight and output pixel). Its
# backward pass computes two products of the same size (gradients with respect to the input and
# to the weights), hence
#
# $$ F_\text{train} \approx F_\text{fwd} + 2 F_\text{fwd} = 3 F_\text{fwd} \quad \text{per image.} $$ (ch08-three)
#
# (Meta tensors cannot hold the class labels the UNet checks, so the count runs without the label
# embedding, a lookup that costs no FLOPs.) The same pass records every tensor autograd keeps for
# the backward pass: the activation memory of one training image.

# %%
unconditional = dataclasses.replace(network, num_classes=None)
with torch.device("meta"):
    flop_model = create_model(unconditional)
assert n_params - count_parameters(flop_model) == 1000 * 4 * network.model_channels

weight_storages = {p.untyped_storage()._cdata for p in flop_model.parameters()}
saved = {}  # storage -> bytes of the activations autograd keeps for backward (views counted once)


def keep(tensor):
    key = tensor.untyped_storage()._cdata
    if key not in weight_storages:
        saved[key] = tensor.untyped_storage().nbytes()
    return tensor


x_meta = torch.empty(1, 3, 64, 64, device="meta")
t_meta = torch.zeros(1, dtype=torch.long, device="meta")
counter = FlopCounterMode(display=False)
with counter:
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        out = flop_model(x_meta, t_meta)
    flops_fwd = counter.get_total_flops()
    out.square().mean().backward()
flops_train = counter.get_total_flops()
act_bytes = sum(saved.values())
print(f"forward          : {flops_fwd / 1e9:8.2f} GFLOP per 64x64 image")
print(f"forward+backward : {flops_train / 1e9:8.2f} GFLOP per image ({flops_train / flops_fwd:.3f} x forward)")
print(f"activations saved for backward (fp32): {act_bytes / 2**20:.0f} MiB per image")
by_op = {str(op).split(".")[-1]: n / flops_train for op, n in counter.get_flop_counts()["Global"].items()}
print("share of the training FLOPs:", {k: round(v, 3) for k, v in sorted(by_op.items())})

# %%
ratio = flops_train / flops_fwd
# Eq. (ch08-three); slightly under 3 because the first convolution needs no gradient w.r.t. the image
assert 2.95 < ratio <= 3.0, ratio
assert by_op["convolution"] + by_op["convolution_backward"] > 0.8, by_op  # a UNet is mostly convolutions

# %% [markdown]
# ### Images per second
#
# The run sees $S \cdot B$ training images ($S$ = 540K steps, $B$ = 2048), so
#
# $$ C = 3 F_\text{fwd} \cdot S \cdot B, \qquad \text{and finishing in } D \text{ days needs }
#    \frac{S \cdot B}{86\,400\, D} \text{ images/s.} $$ (ch08-compute)
#
# A GPU with peak $P$ FLOP/s that keeps a fraction $u$ busy with useful work (the model FLOPs
# utilisation, MFU) supplies $uP / (3F_\text{fwd})$ images/s. The peaks below are datasheet dense
# 16-bit figures; $u = 0.4$ is an assumption for illustration.

# %%
S, B = recipe.max_steps, recipe.batch_size
total_images = S * B
C = flops_train * total_images
IMAGENET_TRAIN = 1_281_167  # images in the ImageNet-1k training set
print(f"training images seen: {total_images / 1e9:.3f} billion = {total_images / IMAGENET_TRAIN:.0f} epochs of ImageNet")
print(f"training compute C  : {C:.3e} FLOP")
PEAKS = {"V100 (fp16)": 125e12, "A100 (bf16)": 312e12, "H100 SXM (bf16)": 989e12}
MFU = 0.4
lines = ["| finish in | images/s | sustained PFLOP/s | " + " | ".join(f"{g} GPUs at MFU {MFU}" for g in PEAKS) + " |",
         "|---" * (3 + len(PEAKS)) + "|"]
for days in (7, 14, 30):
    rate = total_images / (86_400 * days)
    gpus = [rate * flops_train / (MFU * peak) for peak in PEAKS.values()]
    lines.append(f"| {days} days | {rate:,.0f} | {rate * flops_train / 1e15:.2f} | "
                 + " | ".join(f"{g:.0f}" for g in gpus) + " |")
gpu_days = {g: C / (MFU * peak * 86_400) for g, peak in PEAKS.items()}
lines.append("| GPU-days | | | " + " | ".join(f"{d:,.0f}" for d in gpu_days.values()) + " |")
print(f"at MFU {MFU}: {gpu_days['V100 (fp16)']:.0f} V100-days, {gpu_days['H100 SXM (bf16)']:.0f} H100-days; "
      f"64 H100s would need {24 * gpu_days['H100 SXM (bf16)'] / 64:.0f} hours")
Markdown("\n".join(lines))

# %% [markdown]
# The FLOPs are the easy part; the MFU is the hard one. Data loading, the all-reduce of 296M
# gradients, fp16 overflow skips and checkpointing all eat into $u$: it must be measured.
#
# The EMA of the weights, updated after every optimizer step with $\rho = 0.9999$,
#
# $$ \bar\theta \leftarrow \rho\,\bar\theta + (1-\rho)\,\theta , $$ (ch08-ema)
#
# is one `torch._foreach_lerp_` over the parameters: about $2|\theta|$ FLOPs against the step's
# $3F_\text{fwd} B$. It costs memory (a copy of the weights per rate), not compute.

# %%
ema_share = 2 * n_params / (flops_train * B)
print(f"EMA update / training step FLOPs: {ema_share:.1e}")
assert ema_share < 1e-5


# %% [markdown]
# ### Write it yourself: the EMA update
#
# Write `my_update_ema(ema_params, params, rate)`: two lists of tensors of matching shapes; update
# each `ema_params` tensor **in place** by {eq}`ch08-ema` with $\rho$ = `rate`. The next cell moves
# a small UNet's weights three times (a stand-in for optimizer steps), updates EMAs of rates 0.9
# and 0.999 with yours and with `gcg.train.update_ema`, and compares every tensor.

# %% tags=["write-it-yourself", "hide-input"] jupyter={"source_hidden": true}
@torch.no_grad()
def my_update_ema(ema_params, params, rate):
    """theta_ema <- rate * theta_ema + (1 - rate) * theta, in place, tensor by tensor."""
    # --- solution ---
    for ema_p, p in zip(ema_params, params):
        ema_p.mul_(rate).add_(p, alpha=1.0 - rate)
    # --- end of solution ---


# %%
with torch.random.fork_rng(devices=[]):  # leave the global RNG of later cells untouched
    ema_net = create_model(MODEL_PRESETS["tiny"])
gcg_emas = {rate: copy.deepcopy(ema_net).requires_grad_(False) for rate in (0.9, 0.999)}
my_emas = {rate: params(ema_net) for rate in (0.9, 0.999)}
step_gen = torch.Generator().manual_seed(0)
for _ in range(3):
    with torch.no_grad():
        for p in ema_net.parameters():
            p.add_(torch.randn(p.shape, generator=step_gen))  # a stand-in for an optimizer step
    gcg_train.update_ema(gcg_emas, ema_net)
    for rate in my_emas:
        my_update_ema(my_emas[rate], list(ema_net.parameters()), rate)
for rate, ema in gcg_emas.items():
    for (name, want), got in zip(ema.named_parameters(), my_emas[rate]):
        torch.testing.assert_close(got, want, msg=lambda m, name=name, rate=rate: f"rate {rate}, {name}: {m}")
print("my_update_ema agrees with gcg.train.update_ema (3 steps, rates 0.9 and 0.999)")

# %% [markdown]
# ### Memory
#
# Per parameter, AdamW keeps the weight, its gradient and two moments; the EMA keeps one copy per
# rate. gcg's mixed precision is **autocast**: these *states* stay fp32 and each matrix product
# casts its inputs to 16 bits on the fly. (The ADM code keeps fp16 weights and gradients next to
# fp32 "master" copies: *more* state memory.) 16-bit arithmetic buys speed and smaller saved
# activations, and activations, not states, dominate at a useful batch size:
#
# $$ M \approx \underbrace{|\theta| \cdot b_\text{state}}_\text{weights, grads, Adam, EMA}
#    + \underbrace{m \cdot a}_\text{activations of a micro-batch of } m \text{ images} $$ (ch08-memory)

# %%
BYTES_PER_PARAM = {  # (weights, gradients, Adam m + v, EMA per rate)
    "fp32": (4, 4, 8, 4),
    "gcg mixed precision (autocast fp16/bf16)": (4, 4, 8, 4),
    "ADM reference fp16 (fp16 copy + fp32 master)": (2 + 4, 2 + 4, 8, 4),
}
lines = ["| training precision | weights | grads | Adam | EMA | bytes/param | GB for 295.9M |", "|---|---|---|---|---|---|---|"]
for name, parts in BYTES_PER_PARAM.items():
    lines.append(f"| {name} | " + " | ".join(str(b) for b in parts)
                 + f" | {sum(parts)} | {sum(parts) * n_params / 1e9:.2f} |")
micro = recipe.microbatch
lines.append(f"| activations, fp32, micro-batch {micro} | | | | | | {micro * act_bytes / 1e9:.1f} |")
Markdown("\n".join(lines))

# %%
state_bytes = sum(BYTES_PER_PARAM["fp32"]) * n_params
assert micro * act_bytes > 5 * state_bytes, (micro * act_bytes / 1e9, state_bytes / 1e9)

# %%
micro_sizes = np.arange(0, 129)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(micro_sizes, (state_bytes + micro_sizes * act_bytes) / 1e9, label="states (fp32 / autocast) + fp32 activations")
ax.axhline(state_bytes / 1e9, color="C1", ls="--", label="weights + grads + Adam + EMA")
for gb in (40, 80):
    ax.axhline(gb, color="0.6", lw=0.8)
    ax.text(micro_sizes[-1], gb - 3, f"{gb} GB GPU", fontsize=8, color="0.4", ha="right", va="top")
ax.axvline(micro, color="C2", lw=0.8)
ax.text(micro + 1, 5 + state_bytes / 1e9, f"imagenet64 microbatch={micro}", fontsize=8, color="C2")
ax.set_xlabel("images per forward pass (micro-batch)")
ax.set_ylabel("GB")
ax.set_title("64x64_diffusion: training memory per GPU", fontsize=10)
ax.legend(fontsize=8, loc="upper left")
plt.tight_layout()
plt.show()

# %% [markdown]
# So activation memory limits the images per forward pass: at ~0.8 GB per image in fp32, a
# micro-batch of 64 needs ~50 GB. Two knobs trade it off without changing the update: `microbatch`
# (gradient accumulation, section 3) and `--set model.use_checkpoint=true` (gradient
# checkpointing: recompute each block's activations in the backward pass, ≈ one extra forward,
# ~33% more FLOPs by {eq}`ch08-three`).
#
# ### Measuring speed
#
# `benchmarks/bench_train.py` times whole `gcg.train.train_step`s on random images, per precision
# and over `--ddp N` processes: images/s, peak memory, GFLOP per image and, with `--peak-tflops P`,
# the MFU. For the full preset on one GPU:
#
# ```bash
# python benchmarks/bench_train.py --device cuda --batch-size 64 --precisions fp32 bf16 fp16 --peak-tflops 989
# ```
#
# gcg's tests and this book run on CPUs; the CUDA-only paths (16-bit autocast with loss scaling,
# NCCL, `torch.cuda.max_memory_allocated`, MFU) are untested on GPU hardware. The numbers above
# are arithmetic, not measurements.

# %% [markdown]
# ## 3. Many GPUs: `torchrun`, DDP, sharding, accumulation
#
# On one machine with 8 GPUs, and on 4 such machines:
#
# ```bash
# torchrun --standalone --nproc_per_node 8 -m gcg.train --preset imagenet64 \
#     --data-dir /data/imagenet64 --out-dir runs/imagenet64
#
# # on each of the 4 nodes (same command; HEAD = the first node's address)
# torchrun --nnodes 4 --nproc_per_node 8 --rdzv_id adm64 --rdzv_backend c10d \
#     --rdzv_endpoint HEAD:29500 -m gcg.train --preset imagenet64 \
#     --data-dir /data/imagenet64 --out-dir runs/imagenet64
# ```
#
# `torchrun` starts one process per GPU and sets `RANK`, `WORLD_SIZE` and the rendezvous address;
# `gcg.dist.init_distributed` joins the process group (NCCL on GPUs, gloo on CPUs) and the trainer
# wraps the model in **DistributedDataParallel**: every rank holds a replica, computes the gradient of its
# share of the batch, and DDP all-reduces the gradients bucket by bucket during the backward pass,
# so that every rank ends with
#
# $$ g = \frac{1}{B} \sum_{r=0}^{W-1} \sum_{i \in \text{shard}_r} \nabla_\theta \ell_i ,$$ (ch08-ddp)
#
# the gradient of the whole global batch. All ranks apply the same AdamW step, so the replicas
# never drift apart; only rank 0 writes checkpoints, logs and images.
#
# **Sharding.** `batch_size` is the *global* batch $B$. `gcg.data.make_loader` gives rank $r$ of $W$
# the positions $r, r + W, r + 2W, \dots$ of the batch one process would draw, and $t$, $\epsilon$
# and label dropout are drawn for the global batch from generators shared by all ranks, each rank
# keeping its rows. Two ranks' shards, interleaved, are the single-process batch:

# %%
digits_train = load_digits_dataset("train")
single_x, single_y = next(make_loader(digits_train, batch_size=8, seed=0))
shards = [next(make_loader(digits_train, batch_size=4, seed=0, rank=r, world_size=2)) for r in range(2)]
print("single process labels:", single_y.tolist())
for r, (_, y) in enumerate(shards):
    print(f"rank {r} of 2 labels   :", y.tolist())
assert all(torch.equal(single_x[r::2], x) and torch.equal(single_y[r::2], y) for r, (x, y) in enumerate(shards))

# %% tags=["nbval-ignore-output"]
show(gcg_train._draw_global)

# %% [markdown]
# **Gradient accumulation.** If a rank's $B/W$ examples do not fit in memory, `microbatch=m` runs
# them as $\lceil B/(W m) \rceil$ forward/backward passes whose gradients add up before one
# optimizer step (DDP's `no_sync` skips the all-reduce on all but the last). Each micro-batch loss
# is divided by the per-rank batch, so the sum is {eq}`ch08-ddp`. For `imagenet64` ($m = 64$):

# %%
print(f"{'GPUs W':>7} {'per GPU B/W':>12} {'micro-batches':>14}")
for world in (8, 16, 32, 64, 128):
    per_gpu = B // world
    print(f"{world:>7} {per_gpu:>12} {-(-per_gpu // min(micro, per_gpu)):>14}")

# %% tags=["nbval-ignore-output"]
show(gcg_train.train_step)

# %% [markdown]
# Check: one step on a batch of 12 digits, as one pass and as micro-batches of 4 and 3, gives the
# same weights up to float rounding. (`tests/test_ddp.py` compares a real 2-process gloo run with
# one process.)

# %%
TOY = dict(model="tiny", image_size=8, batch_size=12, max_steps=1, dropout=0.0, p_uncond=0.0,
           log_every=1, sample_every=0, out_dir=None, device="cpu", ema_warmup=False)
after_one_step = {}
for m in (0, 4, 3):
    config = apply_overrides(get_preset("digits"), {**TOY, "microbatch": m})
    after_one_step[m] = params(gcg_train.train(config, progress=False).model)
for m in (4, 3):
    worst = max((a - b).abs().max().item() for a, b in zip(after_one_step[0], after_one_step[m]))
    print(f"micro-batch {m}: same weights as one pass (largest difference < 1e-6): {worst < 1e-6}")
    assert worst < 1e-6, worst

# %% [markdown]
# ## 4. Resuming
#
# A 540K-step run will be interrupted. The trainer writes `checkpoint_<step>.pt` every
# `save_every` steps (10K for `imagenet64`) **atomically**: to a temporary file, flushed, then
# renamed with `os.replace`, so a crash mid-write leaves the previous checkpoint intact:

# %% tags=["nbval-ignore-output"]
show(checkpoint.save_checkpoint)

# %% [markdown]
# A checkpoint holds everything the next step depends on: the weights, every EMA, the AdamW
# moments, the loss scale, the step, the importance sampler's history, and every random
# generator's state on every rank. So `--resume` continues *exactly* where the run stopped:
#
# ```bash
# python -m gcg.train --preset imagenet64 --data-dir /data/imagenet64 --out-dir runs/imagenet64 --resume
# ```
#
# (Under `torchrun` too; on another number of GPUs the per-rank generators are re-seeded, with a
# notice.) The check: $2N$ toy steps straight against $N$ steps, a checkpoint and $N$ more, with
# dropout, label dropout, two EMA rates and the importance sampler on.

# %%
N = 3
resume_config = apply_overrides(get_preset("digits"), dict(
    model="tiny", image_size=8, batch_size=8, microbatch=4, max_steps=2 * N, dropout=0.1, p_uncond=0.2,
    ema_rates="0.9,0.99", ema_warmup=False, schedule_sampler="loss-second-moment", log_every=N, sample_every=0,
    num_sample_images=4, sample_steps="ddim2", device="cpu"))
straight = gcg_train.train(dataclasses.replace(resume_config, out_dir=str(WORK / "straight")), progress=False)
run_dir = WORK / "resumed"
gcg_train.train(dataclasses.replace(resume_config, out_dir=str(run_dir), max_steps=N), progress=False)
payload = checkpoint.load_checkpoint(run_dir / "checkpoint.pt")
print("checkpoint at step", payload["step"], "holds", sorted(payload))
print("RNG states per rank:", sorted(payload["rng"]["per_rank"][0]))
resumed = gcg_train.train(dataclasses.replace(resume_config, out_dir=str(run_dir)), progress=False, resume=True)
print("resumed run reached step", resumed.step)

# %%
same_weights = all(torch.equal(a, b) for a, b in zip(params(straight.model), params(resumed.model)))
same_ema = all(torch.equal(a, b) for rate in (0.9, 0.99)
               for a, b in zip(params(straight.ema_models[rate]), params(resumed.ema_models[rate])))
print("bit-identical weights:", same_weights, "| bit-identical EMAs:", same_ema)
assert resumed.step == straight.step == 2 * N and same_weights and same_ema

# %% [markdown]
# ## 5. Sampling and evaluation
#
# The paper scores 50,000 samples per model with the ADM evaluation suite against a reference
# batch. gcg splits that into two tools that exchange `.npz` files in the suite's format (`arr_0`:
# uint8 images [N, H, W, C], `arr_1`: labels):
#
# ```bash
# # 50K class-conditional samples, 250 respaced DDPM steps, from the EMA weights
# python -m gcg.sample runs/imagenet64/checkpoint.pt --timestep-respacing 250 \
#     --num-samples 50000 --batch-size 256 --out-dir samples/imagenet64
# # FID, sFID, IS, precision, recall against the ADM reference batch, on Inception features
# python -m gcg.evaluate VIRTUAL_imagenet64_labeled.npz samples/imagenet64/samples_50000x64x64x3.npz \
#     --inception-weights pt_inception-2015-12-05-6726825d.pth
# ```
#
# Here both steps run on the toy model just trained (6 steps: its samples are mostly noise) and the
# 8×8 digits, with features from a small classifier trained on real digits (`gcg.features`): "FD
# on domain features", not comparable to published FID (chapter 07).

# %%
n_samples = int(64 * GCG_SCALE)
sample_dir = WORK / "samples"
log = io.StringIO()
with contextlib.redirect_stdout(log):
    code = gcg_sample.main([str(run_dir / "checkpoint.pt"), "--out-dir", str(sample_dir),
                            "--num-samples", str(n_samples), "--sampler", "ddim", "--steps", "10",
                            "--seed", "0", "--device", "cpu", "--no-progress"])
print(rel(log.getvalue()).strip())
with np.load(sample_dir / f"samples_{n_samples}x8x8x1.npz") as f:
    print("arr_0", f["arr_0"].shape, f["arr_0"].dtype, "| arr_1", f["arr_1"].shape, f["arr_1"].dtype)
assert code == 0


# %% [markdown]
# The reference is the digits' test split; as a yardstick, as many *real* training digits are
# scored as if they were samples. They must land far closer to the reference than the samples.

# %%
def to_npz(dataset, path, n=None):
    x, y = dataset.as_tensors()
    np.savez(path, arr_0=gcg_sample.to_uint8(x[:n]), arr_1=y[:n].numpy())
    return str(path)


digits_test = load_digits_dataset("test")
ref_npz = to_npz(digits_test, WORK / "digits_test.npz")
real_npz = to_npz(digits_train, WORK / "digits_train_subset.npz", n=n_samples)
train_x, train_y = digits_train.as_tensors()
feature_net = train_feature_net(train_x, train_y, epochs=3, seed=0)
save_feature_net(feature_net, WORK / "digits_features.pt")
assert feature_net.train_accuracy > 0.9, feature_net.train_accuracy

# %% tags=["nbval-ignore-output"]
scores = {}
for name, path in (("real digits", real_npz), ("6-step model", str(sample_dir / f"samples_{n_samples}x8x8x1.npz"))):
    print(f"--- {name}")
    scores[name] = evaluate.main([ref_npz, path, "--features", f"domain:{WORK / 'digits_features.pt'}",
                                  "--no-progress"])

# %%
fd_real, fd_model = scores["real digits"]["fid"], scores["6-step model"]["fid"]
assert fd_real < 0.5 * fd_model, (fd_real, fd_model)

# %% [markdown]
# ## 6. OpenAI's released checkpoints
#
# OpenAI released the paper's weights (`64x64_diffusion.pt`, `64x64_classifier.pt`, ..., linked
# from the `openai/guided-diffusion` README). Their state dicts name modules by position
# (`input_blocks.5.1.qkv.weight`), gcg's by role (`down_blocks.4.attn.qkv.weight`); `gcg.convert`
# derives the translation from a config's module structure:

# %%
key_map = convert.reference_key_map("64x64_diffusion")
for gcg_key in list(key_map)[:4] + [k for k in key_map if ".attn.qkv." in k][:1] + list(key_map)[-2:]:
    print(f"{gcg_key:<40} <- {key_map[gcg_key]}")
print(f"... {len(key_map)} tensors")

# %% [markdown]
# gcg's presets match the released files' parameter counts (built on the meta device: no memory):

# %%
RELEASED = {"64x64_diffusion": 295.90, "64x64_classifier": 65.44, "128x128_diffusion": 421.53,
            "128x128_classifier": 42.57, "256x256_diffusion": 553.84, "64_256_upsampler": 311.80}
counts = {}
for name in RELEASED:
    with torch.device("meta"):
        counts[name] = round(count_parameters(create_model(name)) / 1e6, 2)
    print(f"{name:<20} gcg preset {counts[name]:7.2f}M   released {RELEASED[name]:7.2f}M")
assert counts == RELEASED

# %% [markdown]
# `gcg.convert.load_openai_checkpoint(path, name)` renames every tensor, checks every shape against
# the preset (a mismatch names the tensor and both shapes) and assigns the weights. gcg does not
# ship the weights, so the round trip runs on a small random network written in the reference
# layout:

# %%
small = MODEL_PRESETS["tiny"]
torch.manual_seed(0)
original = create_model(small).eval()
torch.save(convert.gcg_to_openai(original.state_dict(), small), WORK / "tiny_openai_layout.pt")
loaded = convert.load_openai_checkpoint(WORK / "tiny_openai_layout.pt", small)
x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
t = torch.tensor([0, 10, 500, 999])
y = torch.tensor([0, 1, 2, 0])
with torch.no_grad():
    same_output = torch.equal(original(x, t, y=y), loaded(x, t, y=y))
print("reference-layout file -> gcg model, identical outputs:", same_output)
assert same_output

# %% [markdown]
# With a downloaded release, point `GCG_OPENAI_DIR` at its folder; the next cell then loads
# `64x64_diffusion.pt` and draws four samples with 25 DDIM steps (seconds on a GPU, minutes on a
# CPU). Without it, it prints what to do.

# %%
release_dir = os.environ.get("GCG_OPENAI_DIR")
release = Path(release_dir) / "64x64_diffusion.pt" if release_dir else None
if release is not None and release.is_file():
    from gcg.diffusion import DiffusionConfig

    adm = convert.load_openai_checkpoint(release, "64x64_diffusion").to(DEVICE)
    assert round(count_parameters(adm) / 1e6, 2) == 295.90
    adm_diffusion = DiffusionConfig(**convert.OPENAI_DIFFUSION["64x64_diffusion"]).build()
    images, labels = gcg_sample.sample(adm, adm_diffusion, 4, class_labels=[1, 88, 207, 980],
                                       timestep_respacing="ddim25", device=DEVICE, progress=False)
    grid = gcg_sample.save_grid(images, WORK / "adm64_samples.png", labels=labels)
    display(Image(filename=str(grid)))
else:
    print("No released checkpoint found (set GCG_OPENAI_DIR=/path/to/folder with 64x64_diffusion.pt).")
    print(f"Download it from {convert.RELEASES_URL}, then:")
    print("    model = gcg.convert.load_openai_checkpoint('64x64_diffusion.pt', '64x64_diffusion')")
    print("    diffusion = gcg.DiffusionConfig(**gcg.convert.OPENAI_DIFFUSION['64x64_diffusion']).build()")

# %%
shutil.rmtree(WORK)  # the checkpoints, samples and feature network written above

# %% [markdown]
# ## Summary
#
# $$ C = 3 F_\text{fwd} \cdot S \cdot B \approx 658\ \text{GFLOP} \times 540\text{K} \times 2048 \approx 7 \cdot 10^{20}\ \text{FLOP} $$
#
# Training at scale is the same `train_step` as on a CPU: arithmetic says what it costs, and exact
# accumulation, DDP and bit-exact resume make it fit on, and survive, any number of GPUs.
#
# | question | answer in gcg |
# |---|---|
# | the recipe | `python -m gcg.train --preset imagenet64`: every appendix value checked above |
# | compute | ≈ 658 GFLOP per training image, {eq}`ch08-compute` |
# | memory | 20 bytes/parameter of state (5.9 GB) ≪ activations (~0.8 GB per image in fp32) |
# | many GPUs | `torchrun --nproc_per_node N -m gcg.train ...`; global batch fixed, `microbatch` for memory |
# | interruptions | atomic checkpoints, `--resume` bit-exact |
# | results | `python -m gcg.sample` → `.npz` → `python -m gcg.evaluate` |
# | released weights | `gcg.convert.load_openai_checkpoint(path, name)` |
#
# This is the last chapter: the same trainer and commands, with the `imagenet64-classifier`,
# `imagenet64-base32` and `imagenet64-sr32` presets, train the guidance classifier and the cascade
# stages of chapters 04 and 06 at full scale.

# %% [markdown]
# ## Exercises
#
# 1. **FLOPs by hand.** Compute the forward FLOPs of the first residual block of `64x64_diffusion`
#    (two 3×3 convolutions, 192 → 192 channels, at 64×64) from $2k^2 C_\text{in} C_\text{out} HW$
#    and compare with `FlopCounterMode` on that block alone (`adm64.down_blocks[0].res` built on the
#    meta device). (Seconds on a CPU.)
#
#    ```{admonition} Hint
#    :class: dropdown
#    $k = 3$, $C_\text{in} = C_\text{out} = 192$, $HW = 4096$; GroupNorm and SiLU are not matrix
#    products.
#    ```
#
#    ```{admonition} Solution
#    :class: dropdown
#    One convolution costs $2 \cdot 9 \cdot 192^2 \cdot 4096 \approx 2.72$ GFLOP, the block
#    $\approx 5.44$ GFLOP (2.5% of the forward pass). The timestep-embedding projection
#    ($768 \to 384$) adds $\approx 0.6$ MFLOP: the counter agrees to well under 1%.
#    ```
#
# 2. **Where do the FLOPs go?** Repeat the count of Section 2 with `attention_resolutions=(16, 8)`
#    and with `num_res_blocks=2`. Which change saves more compute, and which did the paper's
#    Table 1 find costs more FID? (Seconds: the meta device allocates nothing.)
#
#    ```{admonition} Hint
#    :class: dropdown
#    Attention's products grow with the square of the positions (1024 at 32×32). Table 1
#    (ImageNet 128): attention at 32, 16, 8 improved FID by 0.72 at 700K steps.
#    ```
#
# 3. **Your cluster.** With your GPUs' measured images/s (`benchmarks/bench_train.py` on one GPU,
#    times the number of GPUs, times the DDP efficiency the script prints), how many days does the
#    `imagenet64` recipe take? How does the answer change for the 128×128 model (count its FLOPs)?
#    (Needs a GPU for the measurement; the FLOP count runs on the meta device.)
#
#    ```{admonition} Hint
#    :class: dropdown
#    Days $= S \cdot B / (86\,400 \cdot \text{images/s})$, {eq}`ch08-compute`. For 128×128, count
#    `MODEL_PRESETS["128x128_diffusion"]` on the meta device.
#    ```
#
# 4. **Gradient checkpointing.** Build the network with `use_checkpoint=True` on a small CPU
#    config and measure the activations saved for backward and the FLOPs of one training step with
#    the hooks of Section 2. Does the FLOP increase match the "one extra forward" estimate?
#    (≈ 1 min on a 2-core CPU.)
#
#    ```{admonition} Hint
#    :class: dropdown
#    A checkpointed block saves only its inputs and reruns its forward in the backward pass:
#    expect nearly $4F_\text{fwd}$ instead of $3F_\text{fwd}$.
#    ```
#
# 5. **Resume under a different world size.** Train the `digits` preset for 20 steps with
#    `torchrun --nproc_per_node 2 -m gcg.train --preset digits --max-steps 20 --out-dir runs/d`,
#    then resume it in one process to 40 steps. Compare the weights with a straight single-process
#    run of 40 steps: which random streams differ, and why is the difference small?
#    (A few minutes on a 2-core CPU.)
#
#    ```{admonition} Hint
#    :class: dropdown
#    $t$, $\epsilon$ and label dropout come from generators shared by all ranks (section 3); the
#    per-rank ones are re-seeded on resume, and two ranks sum gradients in a different
#    floating-point order than one.
#    ```
