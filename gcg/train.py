"""The trainer: ``python -m gcg.train --preset NAME`` and ``train(config)`` for the notebooks.

One loop for the three tasks of the book (`TrainConfig.task`):
  "diffusion"  L_simple / L_hybrid of `GaussianDiffusion.training_losses` (Ho et al. 2020 Eq. (14),
               Nichol & Dhariwal 2021 Eq. (16)), t from a `gcg.resample` schedule sampler;
  "classifier" the noise-aware classifier of Dhariwal & Nichol 2021 Sec. 4.1: t ~ U{0..T-1},
               x_t ~ q(x_t | x_0) (`q_sample`), cross-entropy, top-1/top-5 per timestep quartile;
  "super_res"  a diffusion model conditioned on an augmented low-resolution image
               (`gcg.cascade.super_res_kwargs`, Ho et al. 2021 Sec. 3.2).

Multi-device: ``torchrun --nproc_per_node N -m gcg.train ...`` (DDP; `gcg.dist`). Randomness that
defines the loss (t, noise, label dropout) is drawn for the GLOBAL batch from one generator shared
by all ranks, and each rank takes its rows, so N processes reproduce one process with the same
global batch. A step = `batch_size` examples, split into per-device micro-batches of `microbatch`.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import get_ema_multi_avg_fn
from tqdm.auto import tqdm

from gcg import dist
from gcg.checkpoint import (build_model, checkpoint_path, latest_checkpoint, list_checkpoints,
                            load_checkpoint, remove_stale_temp_files, save_checkpoint)
from gcg.images import downsample
from gcg.presets import TrainConfig, apply_overrides, describe_presets, get_preset, validate
from gcg.schedules import space_timesteps


class DataUnavailable(RuntimeError):
    """The data set could not be built (missing or malformed directory); the message says why."""


@dataclass
class TrainResult:
    """What `train` returns: the trained model, its EMA (first rate; the model itself if there are
    no EMA rates), the diffusion it was trained with, the logged history (list of dicts, one per
    `log_every` steps), every EMA by rate, and the step reached."""

    model: torch.nn.Module
    ema: torch.nn.Module
    diffusion: object
    history: list
    ema_models: dict = field(default_factory=dict)
    step: int = 0
    config: TrainConfig | None = None
    stopped_by: str | None = None  # "SIGINT" / "SIGTERM" (handle_signals), "max_seconds", None = max_steps
    checkpoint: Path | None = None  # the newest checkpoint of this run (saved or resumed from)


@dataclass
class TrainState:
    """Everything the loop mutates; `train_step` takes and updates one of these."""

    config: TrainConfig
    info: dist.DistInfo
    model: torch.nn.Module  # the raw module (saved, EMA'd)
    forward: torch.nn.Module  # what the loss calls: model, DDP(model) and/or torch.compile
    ddp: torch.nn.Module | None
    ema_models: dict
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    diffusion: object
    schedule_sampler: object
    generator: torch.Generator  # on the device, same on all ranks: noise of the global batch
    cpu_generator: torch.Generator  # same on all ranks: t and label dropout of the global batch
    rank_generator: torch.Generator  # per rank: super-resolution conditioning augmentation
    model_config: object
    data_shape: tuple  # one example's shape, e.g. (C, H, W) or (D,)
    num_classes: int | None
    step: int = 0
    precision: str = "fp32"  # what runs: config.precision on CUDA, "fp32" compute on a CPU


# ----------------------------------------------------------------------------- building
def diffusion_config(config: TrainConfig):
    """The `gcg.diffusion.DiffusionConfig` of a training config (stored in checkpoints)."""
    from gcg.diffusion import DiffusionConfig

    return DiffusionConfig(noise_schedule=config.noise_schedule, steps=config.diffusion_steps,
                           model_mean_type=config.model_mean_type,
                           model_var_type=config.model_var_type, loss_type=config.loss_type,
                           decoder="discretized" if config.dataset != "toy-gmm" else "gaussian")


def make_data(config: TrainConfig):
    """`gcg.data.make_dataset` for this config; failures become `DataUnavailable` (message kept)."""
    from gcg.data import make_dataset

    try:
        return make_dataset(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                            split="train")
    except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError, OSError) as exc:
        raise DataUnavailable(str(exc)) from exc


def data_properties(dataset) -> tuple[tuple, int | None]:
    """(shape of one example, number of classes or None) of a `gcg.data` data set."""
    x = dataset[0][0]
    num_classes = getattr(dataset, "num_classes", None)
    if num_classes is None and getattr(dataset, "toy", None) is not None:
        num_classes = getattr(dataset.toy, "num_classes", None)
    if num_classes is None and getattr(dataset, "class_names", None):
        num_classes = len(dataset.class_names)
    if num_classes is None and getattr(dataset, "labels", None) is not None:
        num_classes = int(torch.as_tensor(dataset.labels).max()) + 1
    return tuple(torch.as_tensor(x).shape), num_classes


def build_model_config(config: TrainConfig, data_shape: tuple, num_classes: int | None):
    """The network config: the `MODEL_PRESETS[config.model]` entry made consistent with the data
    (size, channels, classes) and the objective (learn_sigma, class_null, super_res), then patched
    with `config.model_overrides`."""
    from gcg.nn.config import MODEL_PRESETS, ClassifierConfig
    from gcg.nn.mlp import MLP_PRESETS, MLPConfig

    presets = {**MODEL_PRESETS, **MLP_PRESETS}
    if config.model not in presets:
        raise ValueError(f"unknown model preset {config.model!r}; valid: {', '.join(presets)}")
    base = presets[config.model]
    is_vector = isinstance(base, MLPConfig)
    if is_vector != (len(data_shape) == 1) or len(data_shape) not in (1, 3):
        raise ValueError(f"data set {config.dataset!r} yields examples of shape {data_shape} but model "
                         f"{config.model!r} expects {'vectors [D]' if is_vector else 'images [C, H, W]'}")
    channels = data_shape[0]
    changes = dict(dim=channels) if is_vector else dict(image_size=data_shape[-1], in_channels=channels)
    if isinstance(base, ClassifierConfig):
        if config.task != "classifier":
            raise ValueError(f"model {config.model!r} is a classifier; set task=classifier or pick a UNet")
        if num_classes is None:
            raise ValueError(f"data set {config.dataset!r} has no labels to train a classifier on")
        changes["num_classes"] = num_classes
    else:
        if config.task == "classifier":
            raise ValueError(f"task=classifier needs a classifier model preset, got UNet {config.model!r}")
        cond = config.class_cond and num_classes is not None
        changes.update(num_classes=num_classes if cond else None,
                       class_null=cond and (config.p_uncond > 0 or base.class_null),
                       learn_sigma=config.model_var_type in ("learned", "learned_range"))
        if is_vector and config.task != "diffusion":
            raise ValueError(f"model {config.model!r} supports task=diffusion only")
        if not is_vector:
            changes.update(out_channels=channels, super_res=config.task == "super_res",
                           aug_level_cond=config.task == "super_res" and config.augment == "gaussian")
        if config.p_uncond > 0 and not cond:
            raise ValueError("p_uncond > 0 needs a labelled data set and class_cond=True")
    if config.dropout is not None and not is_vector:
        changes["dropout"] = config.dropout
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(config.model_overrides) - names)
    if unknown:
        raise ValueError(f"unknown network fields {unknown} (from --set model.<field>); "
                         f"valid fields of {type(base).__name__}: {sorted(names)}")
    changes.update(config.model_overrides)
    return dataclasses.replace(base, **changes)


def make_schedule_sampler(config: TrainConfig, diffusion):
    from gcg.resample import create_named_schedule_sampler

    return create_named_schedule_sampler(config.schedule_sampler, diffusion)


def setup(config: TrainConfig, dataset=None) -> tuple[TrainState, object]:
    """Build model, EMA, optimizer, scaler, diffusion and generators; returns (state, dataset)."""
    validate(config)
    info = dist.init_distributed(config.device)
    if config.batch_size % info.world_size:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by world_size="
                         f"{info.world_size}; pick a global batch that splits evenly")
    if info.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.precision == "bf16" and info.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision=bf16 is not supported on this GPU; use precision=fp16")
    dataset = make_data(config) if dataset is None else dataset
    data_shape, num_classes = data_properties(dataset)
    model_config = build_model_config(config, data_shape, num_classes)
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = build_model(model_config).to(info.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema_models = {rate: copy.deepcopy(model).eval().requires_grad_(False) for rate in config.ema_rates}
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.999))
    # fp16 keeps its dynamic loss scaler on every device (on a CPU it scales fp32 gradients: the
    # skip-on-inf logic still runs); the autocast dtype itself follows the device (`compute_precision`).
    scaler = torch.amp.GradScaler(info.device.type, enabled=config.precision == "fp16")
    diffusion = diffusion_config(config).build()
    forward = ddp = None
    if info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda"
                                      else None)
    forward = ddp if ddp is not None else model
    if config.compile:
        forward = torch.compile(forward)
    generator = torch.Generator(info.device).manual_seed(config.seed)
    cpu_generator = torch.Generator().manual_seed(config.seed)
    rank_generator = torch.Generator(info.device).manual_seed(config.seed + 1 + info.rank)
    torch.manual_seed(config.seed + 7919 * (info.rank + 1))  # dropout differs across ranks
    np.random.seed(config.seed + info.rank)
    random.seed(config.seed + info.rank)
    state = TrainState(config, info, model, forward, ddp, ema_models, optimizer, scaler, diffusion,
                       make_schedule_sampler(config, diffusion), generator, cpu_generator, rank_generator,
                       model_config, data_shape, num_classes,
                       precision=compute_precision(config.precision, info.device))
    return state, dataset


def compute_precision(precision: str, device) -> str:
    """The precision the forward/backward runs in: `precision` on CUDA; "fp32" on any other device.

    fp16/bf16 autocast pays on GPUs (tensor cores); on a CPU without half-precision matmul units
    it runs several times slower than fp32 (benchmarks/README.md), so CPUs compute in fp32.
    """
    return precision if torch.device(device).type == "cuda" else "fp32"


def precision_notice(state: TrainState) -> str | None:
    """One line saying that the configured precision was replaced on this device, else None."""
    cfg = state.config
    if state.precision == cfg.precision:
        return None
    scaler = " (its dynamic loss scaler still runs)" if state.scaler.is_enabled() else ""
    return (f"gcg.train: precision={cfg.precision} autocast is for CUDA; computing in fp32 on "
            f"{state.info.device.type}{scaler}")


# ----------------------------------------------------------------------------- one step
def _rank_rows(state: TrainState) -> slice:
    """Rows of the global batch held by this rank: gcg.data.make_loader gives rank r the
    interleaved positions r, r + W, r + 2W, ... of the single-process batch."""
    return slice(state.info.rank, None, state.info.world_size)


def _autocast(state: TrainState):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(state.precision)
    return torch.autocast(state.info.device.type, dtype=dtype, enabled=dtype is not None)


def current_lr(config: TrainConfig, step: int) -> float:
    """Constant, or linear decay to 0 over `lr_anneal_steps` (ADM's --lr_anneal_steps)."""
    if config.lr_anneal_steps <= 0:
        return config.lr
    return config.lr * max(0.0, 1.0 - step / config.lr_anneal_steps)


def _draw_global(state: TrainState, n: int):
    """t, importance weights, noise (and label-dropout uniforms) for the global batch, sliced to this rank."""
    cfg, device, cpu_gen = state.config, state.info.device, state.cpu_generator
    if cfg.task == "classifier":
        t_high = max(1, int(round(cfg.classifier_t_max * state.diffusion.num_timesteps)))
        t = torch.randint(0, t_high, (n,), generator=cpu_gen).to(device)
        weights = torch.ones(n, device=device)
    else:
        t, weights = state.schedule_sampler.sample(n, device, generator=cpu_gen)
    drop = (torch.rand(n, generator=cpu_gen) < cfg.p_uncond).to(device)
    noise = torch.randn((n, *state.data_shape), generator=state.generator, device=device)
    rows = _rank_rows(state)
    return t[rows], weights[rows], noise[rows], drop[rows]


def train_step(state: TrainState, x: torch.Tensor, y: torch.Tensor | None) -> dict:
    """One optimizer step on this rank's share `x` [b, ...], `y` [b] of the global batch.

    Returns per-example statistics for logging (tensors on the device) and "skipped" (fp16 loss
    scaling found inf/NaN gradients, or a non-finite gradient norm in fp32/bf16: no update).
    """
    cfg, model = state.config, state.model
    x = x.to(state.info.device, non_blocking=True)
    y = None if y is None else y.to(state.info.device, non_blocking=True)
    t, weights, noise, drop = _draw_global(state, cfg.batch_size)
    if y is not None and cfg.p_uncond > 0:  # Ho & Salimans 2021, Algorithm 1: c <- null w.p. p_uncond
        y = torch.where(drop, torch.full_like(y, state.num_classes), y)
    b = x.shape[0]
    micro = cfg.microbatch or b
    for group in state.optimizer.param_groups:
        group["lr"] = current_lr(cfg, state.step)
    state.optimizer.zero_grad(set_to_none=True)
    model.train()
    stats = {"t": t, "loss": [], "mse": [], "vb": [], "correct1": [], "correct5": []}
    for start in range(0, b, micro):
        rows = slice(start, min(start + micro, b))
        last = rows.stop >= b
        sync = contextlib.nullcontext() if (state.ddp is None or last) else state.ddp.no_sync()
        with sync:
            with _autocast(state):
                losses = _losses(state, x[rows], t[rows], noise[rows], None if y is None else y[rows])
            loss = (losses["loss"].float() * weights[rows]).sum() / b
            state.scaler.scale(loss).backward()
        for key in ("loss", "mse", "vb", "correct1", "correct5"):
            if key in losses:
                stats[key].append(losses[key].detach().float())
    if cfg.task != "classifier" and hasattr(state.schedule_sampler, "update_with_local_losses"):
        state.schedule_sampler.update_with_local_losses(t, torch.cat(stats["loss"]))
    stats = {k: (torch.cat(v) if isinstance(v, list) else v) for k, v in stats.items() if len(v)}
    stats.update(_optimizer_step(state))
    return stats


def _losses(state: TrainState, x, t, noise, y) -> dict:
    cfg = state.config
    if cfg.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    if cfg.task == "classifier":  # Dhariwal & Nichol 2021 Sec. 4.1: classify x_t ~ q(x_t | x_0)
        logits = state.forward(state.diffusion.q_sample(x, t, noise=noise), t).float()
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        return {"loss": F.cross_entropy(logits, y, reduction="none"),
                "correct1": (top[:, 0] == y).float(), "correct5": (top == y[:, None]).any(-1).float()}
    kwargs = {} if y is None or state.model_config.num_classes is None else {"y": y}
    if cfg.task == "super_res":
        from gcg.cascade import super_res_kwargs

        kwargs.update(super_res_kwargs(x, low_res_size=cfg.low_res_size, augment=cfg.augment,
                                       max_aug_level=cfg.max_aug_level, diffusion=state.diffusion,
                                       generator=state.rank_generator))
        if kwargs.get("aug_level") is None:
            kwargs.pop("aug_level", None)
    return state.diffusion.training_losses(state.forward, x, t, model_kwargs=kwargs, noise=noise)


def _optimizer_step(state: TrainState) -> dict:
    """Unscale, clip, step (skipped on inf/NaN), update the EMAs."""
    cfg, scaler = state.config, state.scaler
    params = [p for p in state.model.parameters() if p.requires_grad]
    scale_before = scaler.get_scale() if scaler.is_enabled() else 1.0
    scaler.unscale_(state.optimizer)
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if scaler.is_enabled():
        scaler.step(state.optimizer)  # skipped internally when unscale_ found inf/NaN
        scaler.update()
        skipped = scaler.get_scale() < scale_before
    else:
        skipped = not torch.isfinite(grad_norm).item()
        if not skipped:
            state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    if not skipped:
        update_ema(state.ema_models, state.model, step=state.step if cfg.ema_warmup else None)
    state.step += 1
    return {"grad_norm": grad_norm.detach().float(), "skipped": skipped, "loss_scale": scale_before}


def ema_warmup_rate(rate: float, step: int) -> float:
    """The EMA rate of update number `step` (0-based) under warm-up: min(rate, (1 + step) / (10 + step)).

    TensorFlow's ``ExponentialMovingAverage(decay, num_updates)`` rule, kept by the LDM / Stable
    Diffusion (``LitEma``), score-SDE and diffusers trainers. The random initial weights are
    forgotten at once: after k updates their share of the average is
    prod_{n<k} (1 + n) / (10 + n) = 1 / C(k + 9, 9) (1e-5 at k = 10), against rate**k without
    warm-up (30 % for 0.999 after 1200 steps). Until the cap the weights of step n enter the
    average with weight proportional to (n + 2)(n + 3)...(n + 9) ~ n^8: the power-function EMA of
    Karras et al. 2024 with gamma = 8 (centred at 90 % of the run, relative width 0.09); from step
    (10 rate - 1) / (1 - rate) on (8990 for 0.999) it is the constant `rate`.
    """
    return min(rate, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema_models: dict, model: torch.nn.Module, step: int | None = None) -> None:
    """theta_ema <- rho * theta_ema + (1 - rho) * theta for every rate (buffers are copied).

    rho = rate when `step` is None (the constant-rate EMA of Ho et al. 2020 and ADM), else
    `ema_warmup_rate(rate, step)` with `step` = optimizer steps before this update
    (`TrainConfig.ema_warmup`; the step is in every checkpoint, so resume stays exact).
    """
    params = list(model.parameters())
    buffers = list(model.buffers())
    for rate, ema in ema_models.items():
        rho = rate if step is None else ema_warmup_rate(rate, step)
        get_ema_multi_avg_fn(rho)(list(ema.parameters()), params, None)  # a foreach lerp by 1 - rho
        for b_ema, b in zip(ema.buffers(), buffers):
            b_ema.copy_(b)


# ----------------------------------------------------------------------------- checkpoints
def _rng_state(state: TrainState) -> dict:
    """Every random stream of this rank, as tensors and plain values (``weights_only``-loadable)."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    rng = {"torch": torch.get_rng_state(),
           "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
           "python": random.getstate(),
           "generator": state.generator.get_state(), "cpu_generator": state.cpu_generator.get_state(),
           "rank_generator": state.rank_generator.get_state(),
           "data_step": state.step}  # the loader's position; its shuffles derive from (seed, epoch)
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng_state(state: TrainState, rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    n = rng["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(rng["python"])
    state.generator.set_state(rng["generator"])
    state.cpu_generator.set_state(rng["cpu_generator"])
    state.rank_generator.set_state(rng["rank_generator"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def make_checkpoint(state: TrainState) -> dict:
    """The checkpoint payload (collective under DDP: every rank must call it; rank 0 saves it)."""
    rng = _rng_state(state)
    per_rank = [rng]
    if state.info.world_size > 1:
        per_rank = [None] * state.info.world_size
        torch.distributed.all_gather_object(per_rank, rng)
    sampler = state.schedule_sampler
    return {
        "model_config": state.model_config.to_dict(),
        "diffusion_config": diffusion_config(state.config).to_dict(),
        "model": state.model.state_dict(),
        "ema": {rate: ema.state_dict() for rate, ema in state.ema_models.items()},
        "optimizer": state.optimizer.state_dict(),
        "scaler": state.scaler.state_dict(),
        "step": state.step,
        "rng": {"per_rank": per_rank, "world_size": state.info.world_size},
        "schedule_sampler": sampler.state_dict() if hasattr(sampler, "state_dict") else {},
        "train_config": state.config.to_dict(),
    }


# TrainConfig fields that may differ between a run and its resumption: its length, the cadence of
# logs, checkpoints and grids, where things live, and how (not what) a step computes. Every other
# field defines the objective, the data stream or the update rule, so a change on resume is an
# error (`check_resume_config`); a new TrainConfig field belongs to that group until listed here.
RESUMABLE_FIELDS = frozenset({
    "max_steps", "log_every", "save_every", "keep_checkpoints", "sample_every", "num_sample_images",
    "sample_steps", "description", "out_dir", "data_dir", "device", "compile", "channels_last", "log",
    "microbatch",  # gradient accumulation: the same sum, other float rounding
    "precision",  # autocast rounding, not the objective (e.g. a bf16 run resumed where bf16 is missing)
    "ema_rates",  # a new rate starts from the current weights; a dropped one is no longer kept
})
# compared as the network config they build (`restore`), which names the changed network field
NETWORK_FIELDS = frozenset({"model", "model_overrides", "dropout"})


def _set_value(value) -> str:
    """`value` as `--set key=VALUE` text."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def check_resume_config(stored: dict | None, config: TrainConfig, path) -> None:
    """Raise ValueError naming every field outside RESUMABLE_FIELDS / NETWORK_FIELDS whose value in
    `config` differs from the checkpoint's `train_config` (a field the checkpoint predates counts
    as its default), with both values and the `--set` that restores the checkpoint's."""
    if not stored:
        return
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(TrainConfig)}
    plain = lambda v: json.loads(json.dumps(v))  # noqa: E731  tuples -> lists, as stored
    changed = [(name, stored.get(name, defaults[name]), value) for name, value in config.to_dict().items()
               if name not in RESUMABLE_FIELDS | NETWORK_FIELDS
               and plain(stored.get(name, defaults[name])) != plain(value)]
    if changed:
        detail = "; ".join(f"{n}={before!r} in the checkpoint, {now!r} now" for n, before, now in changed)
        fix = " ".join(f"--set {n}={_set_value(before)}" for n, before, _ in changed)
        raise ValueError(f"cannot resume from {path}: {detail} (this changes what the run computes); "
                         f"resume with {fix}, or train into a new --out-dir")


def restore(state: TrainState, path, payload: dict | None = None) -> None:
    """Load model, EMA, optimizer, scaler, step, RNG and sampler state from `path` (or its already
    loaded `payload`) into `state`; a changed maths field or network is an error naming it."""
    from gcg.nn.config import load_state_dict_checked

    if payload is None:
        payload = load_checkpoint(path, map_location="cpu")  # RNG states must stay on the CPU
        check_resume_config(payload.get("train_config"), state.config, path)
    stored, current = payload["model_config"], state.model_config.to_dict()
    if stored != current:
        diff = {k: (stored.get(k), current.get(k)) for k in current if stored.get(k) != current.get(k)}
        raise ValueError(f"cannot resume from {path}: its network differs from this config "
                         f"(field: (checkpoint, now)) {diff}")
    load_state_dict_checked(state.model, payload["model"])
    for rate, ema in state.ema_models.items():
        if rate in payload["ema"]:
            load_state_dict_checked(ema, payload["ema"][rate])
        else:  # a new rate starts from the current weights
            ema.load_state_dict(state.model.state_dict())
    state.optimizer.load_state_dict(payload["optimizer"])
    if payload.get("scaler"):
        state.scaler.load_state_dict(payload["scaler"])
    state.step = int(payload["step"])
    sampler = state.schedule_sampler
    if hasattr(sampler, "load_state_dict"):
        sampler.load_state_dict(payload["schedule_sampler"])
    rng = payload["rng"]
    if rng["world_size"] == state.info.world_size:
        _set_rng_state(state, rng["per_rank"][state.info.rank])
    else:  # a different number of devices: same shared generator, fresh per-rank streams
        state.generator.set_state(rng["per_rank"][0]["generator"])
        state.cpu_generator.set_state(rng["per_rank"][0]["cpu_generator"])
        print(f"gcg.train: resuming {rng['world_size']}-process checkpoint on {state.info.world_size} "
              "processes; per-rank random streams (dropout, augmentation) are re-seeded", file=sys.stderr)


def save(state: TrainState, out_dir: Path) -> Path:
    """Rank 0 writes checkpoint_<step>.pt atomically, links checkpoint.pt to it, prunes old ones.
    Collective under DDP (every rank calls it); returns the checkpoint's path on every rank."""
    payload = make_checkpoint(state)
    if not state.info.is_main:
        return checkpoint_path(out_dir, state.step)
    path = save_checkpoint(checkpoint_path(out_dir, state.step), payload)
    latest = out_dir / "checkpoint.pt"
    tmp = out_dir / f".checkpoint.pt.link-{state.step}"
    tmp.unlink(missing_ok=True)
    try:
        tmp.hardlink_to(path)
        tmp.replace(latest)
    except OSError:  # no hard links on this file system: write the latest copy too
        save_checkpoint(latest, payload)
    for old in list_checkpoints(out_dir)[:-max(1, state.config.keep_checkpoints)]:
        old.unlink(missing_ok=True)
    return path


def resolve_resume(resume, out_dir) -> Path | None:
    """`resume`: None/False (fresh), True (the newest complete checkpoint in `out_dir`,
    `gcg.checkpoint.latest_checkpoint`; None, with a one-line warning, when there is none yet), a
    run directory (its newest checkpoint) or a checkpoint file."""
    if not resume:
        return None
    if resume is True:
        if out_dir is None:
            raise ValueError("--resume without a path needs --out-dir (the run directory to continue)")
        path = latest_checkpoint(out_dir)
        if path is None and int(os.environ.get("RANK", "0")) == 0:
            print(f"gcg.train: warning: --resume: no checkpoint in {out_dir} yet; starting a fresh run",
                  file=sys.stderr)
        return path
    path = Path(resume)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"--resume {path}: no checkpoint_*.pt or checkpoint.pt in that directory")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"--resume {path}: no such checkpoint; pass a checkpoint_*.pt file, or "
                                "--resume alone to continue from the newest one in --out-dir")
    return path


# ----------------------------------------------------------------------------- observability
class MetricWindow:
    """Running sums of per-example statistics between two log lines (per timestep quartile too)."""

    def __init__(self):
        self.sums, self.counts, self.images, self.skipped, self.start = {}, {}, 0, 0, time.perf_counter()

    def add(self, stats: dict, num_timesteps: int, global_batch: int) -> None:
        quartile = (stats["t"] * 4 // num_timesteps).clamp(max=3)
        for key in ("loss", "mse", "vb", "correct1", "correct5"):
            if key not in stats:
                continue
            name = {"correct1": "acc1", "correct5": "acc5"}.get(key, key)
            values = stats[key]
            self._add(name, values.sum(), values.numel())
            for q in range(4):
                mask = quartile == q
                self._add(f"{name}_q{q}", values[mask].sum(), mask.sum())
        self._add("grad_norm", stats["grad_norm"], 1)
        self.images += global_batch
        self.skipped += int(stats["skipped"])

    def _add(self, name, total, count):
        self.sums[name] = self.sums.get(name, 0.0) + torch.as_tensor(total, dtype=torch.float64)
        self.counts[name] = self.counts.get(name, 0.0) + torch.as_tensor(count, dtype=torch.float64)

    def summary(self, world_size: int) -> dict:
        names = sorted(self.sums)
        if not names:
            return {}
        sums = torch.stack([torch.as_tensor(self.sums[n]).cpu() for n in names])
        counts = torch.stack([torch.as_tensor(self.counts[n]).cpu() for n in names])
        if world_size > 1:  # average over all ranks' examples (grad_norm is identical on every rank)
            both = torch.stack([sums, counts])
            dist.all_reduce_mean(both)
            sums, counts = both[0], both[1]
        seconds = time.perf_counter() - self.start
        out = {n: float(s / c) for n, s, c in zip(names, sums, counts) if c > 0}
        out.update(images_per_s=self.images / max(seconds, 1e-9), skipped=self.skipped)
        return out


def tensorboard_available() -> None:
    """Raise ValueError (one line, naming the install) unless the tensorboard package is installed."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError("log=tensorboard needs the tensorboard package: pip install tensorboard "
                         "(or pip install -e '.[tensorboard]'), or drop --set log=tensorboard")


def tensorboard_writer(out_dir: Path, step: int):
    """A SummaryWriter on out_dir/tensorboard; events after `step` (a resumed run's redone steps)
    are purged so TensorBoard shows each step once."""
    tensorboard_available()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out_dir / "tensorboard"), purge_step=step or None)


def log_tensorboard(writer, record: dict) -> None:
    """Every number of a metrics.jsonl record as a scalar at its step (loss_q0 -> loss/q0)."""
    for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            name, _, quartile = key.partition("_q")
            tag = f"{name}/q{quartile}" if quartile.isdigit() else key
            writer.add_scalar(tag, value, record["step"])


def plot_loss_curve(history: list, path: Path) -> None:
    """loss (and vb / accuracy when present) against step, as a PNG."""
    from matplotlib.figure import Figure  # not pyplot: leaves a notebook's inline backend alone

    steps = [h["step"] for h in history]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(steps, [h.get("loss", math.nan) for h in history], label="loss")
    if any("acc1" in h for h in history):
        ax2 = ax.twinx()
        ax2.plot(steps, [h.get("acc1", math.nan) for h in history], color="C1", label="top-1")
        ax2.set_ylabel("top-1 accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def sampling_steps(spec, num_timesteps: int) -> int:
    """Number of network evaluations of a respacing spec: "250" -> 250, "ddim50" -> 50,
    "10,15,20" -> 45, None/"" -> num_timesteps."""
    return len(space_timesteps(num_timesteps, str(spec))) if spec else num_timesteps


def sample_grid_plan(num_images: int, spec, num_timesteps: int, budget: int) -> tuple[int, str]:
    """(images, respacing) of a sample grid costing at most `budget` one-image network forwards.

    A grid of n images over S steps costs n * S forwards. Within budget the configured grid is kept;
    otherwise n = min(num_images, floor(sqrt(budget))) and S = max(2, min(S, budget // n)), keeping
    the spec's kind ("ddimS" or "S"), so a 2-step smoke run still samples (every code path runs)
    without paying for the recipe's 64 images x 250 steps.
    """
    steps = sampling_steps(spec, num_timesteps)
    if num_images * steps <= budget:
        return num_images, spec
    n = max(1, min(num_images, math.isqrt(max(budget, 1))))
    s = max(2, min(steps, budget // n))
    return n, (f"ddim{s}" if str(spec or "").startswith("ddim") else str(s))


def grid_budget(state: TrainState, steps_this_run: int) -> int:
    """Forward passes a sample grid may cost: what the run's training did (forward + backward ~ 3
    forwards per example, `steps_this_run` global batches), and at least 16."""
    return max(16, 3 * steps_this_run * state.config.batch_size)


def write_sample_grid(state: TrainState, dataset, path: Path, budget: int | None = None) -> None:
    """Samples of the first EMA model (or the model) as a PNG grid (rank 0; diffusion tasks only).

    budget: at most this many one-image network forwards (`sample_grid_plan`; None = the config's
    grid, `num_sample_images` x `sample_steps`); a smaller grid than configured is announced.
    """
    from gcg.sample import generate, save_grid

    cfg = state.config
    model = next(iter(state.ema_models.values()), state.model)
    n, spec = cfg.num_sample_images, cfg.sample_steps
    if budget is not None:
        n, spec = sample_grid_plan(n, spec, state.diffusion.num_timesteps, budget)
        if (n, spec) != (cfg.num_sample_images, cfg.sample_steps):
            print(f"gcg.train: {path.name}: {n} images x {sampling_steps(spec, state.diffusion.num_timesteps)}"
                  f" steps, scaled to this short run (configured: {cfg.num_sample_images} x "
                  f"{cfg.sample_steps})", file=sys.stderr)
    labels = None
    if state.model_config.num_classes is not None:
        labels = torch.arange(n, device=state.info.device) % state.model_config.num_classes
    low_res = None
    if cfg.task == "super_res":
        reference = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(min(n, len(dataset)))])
        low_res = downsample(reference, cfg.low_res_size).to(state.info.device)
        labels = None if labels is None else torch.as_tensor(
            [int(dataset[i][1]) for i in range(len(reference))], device=state.info.device)
        n = len(reference)
    generator = torch.Generator(state.info.device).manual_seed(cfg.seed)
    images = generate(model, state.diffusion, n, state.data_shape, class_labels=labels,
                      timestep_respacing=spec, low_res=low_res,
                      aug_level=0.0 if getattr(state.model_config, "aug_level_cond", False) else None,
                      generator=generator, device=state.info.device, progress=False)
    save_grid(images, path, labels=None if labels is None else labels.cpu())


# ----------------------------------------------------------------------------- the loop
def train(config: TrainConfig, progress: bool = True, max_seconds: float | None = None,
          resume=None, dataset=None, handle_signals: bool = False) -> TrainResult:
    """Train `config` until `config.max_steps` (total, counting resumed steps) or `max_seconds`.

    resume: None (fresh), True (the newest complete checkpoint in ``out_dir``; a fresh run with a
    warning when there is none) or a checkpoint path. A fresh run refuses an ``out_dir`` that
    already holds checkpoints. `dataset`: an already-built data set to use instead of
    ``gcg.data.make_dataset`` (notebooks).
    With `config.out_dir` set, rank 0 writes config.json, metrics.jsonl, checkpoints (every
    `save_every` steps and at the end), sample grids and loss_curve.png there, after removing the
    temp files of writes an earlier run left unfinished; with None nothing is written. A sample grid
    never costs more network forwards than the run's training did (`sample_grid_plan`: a 2-step
    smoke run of the 296M recipe samples 4 images x 4 steps, not 64 x 250). On a CPU, fp16/bf16
    configs compute in fp32 (`compute_precision`; one line on stderr says so). The global torch /
    numpy / random generators are re-seeded from `config.seed` (so a run is reproducible in a
    notebook too).
    handle_signals (the command line): SIGINT / SIGTERM finish the current step, save a checkpoint
    and return with `TrainResult.stopped_by` set; under DDP every rank stops after the same step.
    A second signal acts at once (Ctrl-C twice: KeyboardInterrupt, nothing saved).
    Returns a `TrainResult`.
    """
    from gcg.data import make_loader

    out_dir = Path(config.out_dir) if config.out_dir else None
    resume_path = resolve_resume(resume, out_dir)
    payload = None
    if resume_path is not None:
        payload = load_checkpoint(resume_path, map_location="cpu")  # RNG states must stay on the CPU
        check_resume_config(payload.get("train_config"), config, resume_path)
    elif out_dir is not None and (found := latest_checkpoint(out_dir)) is not None:
        raise ValueError(f"--out-dir {out_dir} already holds a run's checkpoints ({found.name}); continue "
                         "it with --resume, or start over in another --out-dir (or delete that one)")
    state, dataset = setup(config, dataset)
    cfg, info = state.config, state.info
    writes = out_dir is not None and info.is_main
    history: list[dict] = []
    if payload is not None:
        restore(state, resume_path, payload)
        del payload
    notice = precision_notice(state)
    if notice and info.is_main:
        print(notice, file=sys.stderr)
    if writes:
        out_dir.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temp_files(out_dir)
        if removed:
            print(f"gcg.train: removed {len(removed)} temp file(s) of unfinished checkpoint writes "
                  f"({sum(n for _, n in removed) / 1e6:.1f} MB) from {out_dir}", file=sys.stderr)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        history = _truncate_metrics(out_dir / "metrics.jsonl", state.step)
    board = tensorboard_writer(out_dir, state.step) if writes and cfg.log == "tensorboard" else None
    loader = make_loader(dataset, batch_size=cfg.batch_size // info.world_size, seed=cfg.seed,
                         rank=info.rank, world_size=info.world_size, start_step=state.step)
    start_step, start_time = state.step, time.perf_counter()
    bar = tqdm(total=cfg.max_steps, initial=state.step, disable=not (progress and info.is_main),
               desc=f"train {cfg.task}", dynamic_ncols=True)
    window, last_saved, checkpoint, stop = MetricWindow(), state.step, resume_path, 0
    signals = StopSignals(state, out_dir) if handle_signals else contextlib.nullcontext()
    with signals:
        while state.step < cfg.max_steps:
            if handle_signals or max_seconds is not None:  # one collective per step under DDP
                timed_out = max_seconds is not None and time.perf_counter() - start_time > max_seconds
                stop = _should_stop(getattr(signals, "received", 0) or int(timed_out), info)
                if stop:
                    break
            x, y = next(loader)
            stats = train_step(state, x, y if state.num_classes is not None else None)
            window.add(stats, state.diffusion.num_timesteps, cfg.batch_size)
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                record = {"step": state.step, **window.summary(info.world_size),
                          "lr": current_lr(cfg, state.step - 1), "loss_scale": stats["loss_scale"],
                          "elapsed_s": time.perf_counter() - start_time}
                window = MetricWindow()
                history.append(record)
                bar.set_postfix(loss=f"{record.get('loss', math.nan):.4f}",
                                img_s=f"{record['images_per_s']:.0f}")
                if writes:
                    with open(out_dir / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
                    if board is not None:
                        log_tensorboard(board, record)
            if out_dir is not None and cfg.save_every and state.step % cfg.save_every == 0:
                checkpoint, last_saved = save(state, out_dir), state.step
            if writes and cfg.task != "classifier" and cfg.sample_every and \
                    state.step % cfg.sample_every == 0 and not getattr(signals, "received", 0):
                write_sample_grid(state, dataset, out_dir / f"samples_{state.step:07d}.png",
                                  budget=grid_budget(state, state.step - start_step))
        bar.close()
        if board is not None:
            board.close()
        if out_dir is not None and state.step > last_saved:
            checkpoint = save(state, out_dir)
        interrupted = bool(getattr(signals, "received", 0))
    if writes and state.step > start_step:
        if history:
            plot_loss_curve(history, out_dir / "loss_curve.png")
        if cfg.task != "classifier" and not interrupted:  # a pre-empted job has seconds, not minutes
            write_sample_grid(state, dataset, out_dir / "samples_final.png",
                              budget=grid_budget(state, state.step - start_step))
    model = state.model.eval()
    ema = next(iter(state.ema_models.values()), model)
    stopped_by = signal.Signals(stop).name if stop > 1 else ("max_seconds" if stop == 1 else None)
    return TrainResult(model, ema, state.diffusion, history, state.ema_models, state.step, cfg,
                       stopped_by=stopped_by, checkpoint=checkpoint)


class StopSignals:
    """While active, SIGINT and SIGTERM only set `received` (the signal number): the loop then
    finishes its step, saves and returns. The first signal restores the previous handlers, so a
    second one acts at once (Ctrl-C: KeyboardInterrupt; SIGTERM: termination), unsaved.
    Outside the main thread (where Python cannot install handlers) it does nothing."""

    def __init__(self, state: TrainState, out_dir: Path | None):
        self.state, self.out_dir, self.received, self.previous = state, out_dir, 0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum
        self._restore()
        if self.state.info.is_main:
            then = "saving a checkpoint" if self.out_dir is not None else "returning (out_dir=None: nothing saved)"
            again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
            tqdm.write(f"gcg.train: {signal.Signals(signum).name}: finishing step {self.state.step + 1}, then "
                       f"{then}; {again} again stops at once without saving", file=sys.stderr)

    def _restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def __exit__(self, *exc):
        self._restore()
        return False


def _should_stop(local_code: int, info: dist.DistInfo) -> int:
    """The stop code every rank agrees on: the largest over ranks (0 = go on, 1 = time limit,
    else a signal number), so a signal that reached any one rank stops all after the same step."""
    if info.world_size == 1:
        return int(local_code)
    code = torch.tensor([float(local_code)], device=info.device)
    torch.distributed.all_reduce(code, op=torch.distributed.ReduceOp.MAX)
    return int(code.item())


def _truncate_metrics(path: Path, step: int) -> list[dict]:
    """Keep the log records up to `step` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records = [r for r in records if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


# ----------------------------------------------------------------------------- command line
# data sets gcg builds itself: they read no --data-dir
BUILT_IN_DATA = ("digits", "photo-patches", "glyphs", "toy-gmm")


def build_parser() -> argparse.ArgumentParser:
    from gcg.cli import ArgumentParser, add_threads_argument, nonnegative_int, positive_float, positive_int

    parser = ArgumentParser(
        prog="python -m gcg.train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a diffusion model, a noise-aware classifier or a super-resolution stage.\n"
                    "Multi-GPU: torchrun --nproc_per_node N -m gcg.train --preset NAME ...",
        epilog="presets:\n" + describe_presets() +
               "\n\nany TrainConfig field: --set key=value (network fields: --set model.<field>=value)"
               "\nTensorBoard logging beside metrics.jsonl: --set log=tensorboard")
    recipe = parser.add_mutually_exclusive_group(required=True)
    recipe.add_argument("--preset", help="a recipe name (listed below)")
    recipe.add_argument("--config", metavar="CONFIG_JSON",
                        help="re-run a saved run: the config.json a run wrote in its out-dir")
    parser.add_argument("--data-dir", help="where the data set lives (ImageNet etc.)")
    parser.add_argument("--out-dir", help="checkpoints, logs and samples (default runs/<preset>)")
    parser.add_argument("--batch-size", type=positive_int, help="global batch size")
    parser.add_argument("--max-steps", type=positive_int, help="total optimizer steps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field; repeatable")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                        help="continue from OUT_DIR/checkpoint.pt (or the given checkpoint)")
    parser.add_argument("--save-every", type=nonnegative_int, metavar="N",
                        help="checkpoint every N steps (0 = only at the end; default: the preset's)")
    parser.add_argument("--max-seconds", type=positive_float, help="stop (and checkpoint) after this long")
    add_threads_argument(parser)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return parser


def config_from_args(args) -> TrainConfig:
    """The preset (or the --config file), then --data-dir/--out-dir/--batch-size/--max-steps, then
    every --set, in that order; bad values raise ValueError naming the field."""
    from gcg.cli import UsageError
    from gcg.presets import load_config_file

    if getattr(args, "config", None):
        config = load_config_file(args.config)
        overrides = {"out_dir": args.out_dir} if args.out_dir else {}
    else:
        config = get_preset(args.preset)
        overrides = {"out_dir": args.out_dir or f"runs/{args.preset}"}
    for flag, key in (("data_dir", "data_dir"), ("batch_size", "batch_size"), ("max_steps", "max_steps"),
                      ("save_every", "save_every")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    config = apply_overrides(config, overrides)
    config = apply_overrides(config, args.set)
    if args.data_dir is not None and config.dataset in BUILT_IN_DATA:
        raise UsageError(f"--data-dir {args.data_dir}: data set {config.dataset!r} is built in and reads "
                         "no directory; drop --data-dir (or --set dataset=NAME to use a data set on disk)")
    return config


def check_before_training(config: TrainConfig, args) -> None:
    """Everything that can be checked before the work: the device exists, the out-dir can be
    written, --config does not overwrite the run it came from, TensorBoard is installed if asked."""
    from gcg.cli import UsageError, check_device, check_output_dir

    check_device(config.device, "--set device=")
    if config.out_dir:
        check_output_dir(config.out_dir, "--out-dir")
        if (getattr(args, "config", None) and not args.out_dir and not args.resume
                and list_checkpoints(config.out_dir)):
            raise UsageError(f"{config.out_dir} already holds the run of {args.config}; pass --out-dir NEW "
                             "to re-run it elsewhere, or --resume to continue it")
    if config.log == "tensorboard":
        tensorboard_available()


def startup_summary(config: TrainConfig, dataset, threads: int) -> list[str]:
    """Lines printed before training: parameters, data, device, precision, threads, machine load."""
    from gcg.cli import check_device, machine_load

    data_shape, num_classes = data_properties(dataset)
    model_config = build_model_config(config, data_shape, num_classes)
    with torch.device("meta"):  # count parameters without allocating them
        params = sum(p.numel() for p in build_model(model_config).parameters())
    device = check_device(config.device, "--set device=")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    classes = f", {num_classes} classes" if num_classes else ""
    load, hint = machine_load(threads)
    lines = [f"gcg.train: {config.task} {config.model}: {params / 1e6:.2f}M parameters; data {config.dataset}: "
             f"{len(dataset):,} examples of shape {list(data_shape)}{classes}; batch {config.batch_size}, "
             f"{config.max_steps:,} steps",
             f"gcg.train: device {device.type}" + (f" x {world} processes" if world > 1 else "") +
             f", precision {compute_precision(config.precision, device)}, {threads} torch threads, {load}"]
    return lines + ([f"gcg.train: {hint}"] if hint else [])


def main(argv=None) -> int:
    """``python -m gcg.train``; user errors print one line and return 2 (`gcg.cli.run`)."""
    from gcg.cli import run

    return run("gcg.train", _main, argv)


def _main(argv) -> int:
    from gcg.cli import UsageError, set_threads

    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    check_before_training(config, args)
    threads = set_threads(args.threads)
    try:
        dataset = make_data(config)
    except DataUnavailable as exc:
        raise UsageError(f"cannot load data set {config.dataset!r}: {exc}") from None
    if int(os.environ.get("RANK", "0")) == 0:
        print("\n".join(startup_summary(config, dataset, threads)), file=sys.stderr)
    try:
        result = train(config, progress=not args.no_progress, max_seconds=args.max_seconds,
                       resume=args.resume, dataset=dataset, handle_signals=True)
    except KeyboardInterrupt:  # Ctrl-C twice (or before training began): stop at once
        print("gcg.train: interrupted; stopped at once, without saving the current step", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        dist.cleanup()
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if result.stopped_by in ("SIGINT", "SIGTERM"):
        if main_rank:
            print(interrupted_message(result, sys.argv[1:] if argv is None else argv), file=sys.stderr)
        return 128 + signal.Signals[result.stopped_by]
    if main_rank:
        print(f"gcg.train: {result.step} steps; outputs in {result.config.out_dir}")
    return 0


def interrupted_message(result: TrainResult, argv: list[str]) -> str:
    """One line: the signal, the step reached, the checkpoint and the command that resumes."""
    args, skip = [], False
    for a in argv:  # the same command without its --resume [CKPT]
        if skip and not a.startswith("-"):
            skip = False
            continue
        skip = a == "--resume"
        if not skip and not a.startswith("--resume="):
            args.append(a)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = f"torchrun --nproc_per_node {world} -m gcg.train" if world > 1 else "python -m gcg.train"
    where = f"saved {result.checkpoint}" if result.checkpoint else "no step completed, nothing saved"
    return (f"gcg.train: stopped by {result.stopped_by} at step {result.step}/{result.config.max_steps}; "
            f"{where}; resume with: {launcher} {shlex.join(args)} --resume")


if __name__ == "__main__":
    sys.exit(main())
