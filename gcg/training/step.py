"""One optimizer step: draw t and noise for the global batch, accumulate the task's loss over
micro-batches, then unscale, clip, step AdamW and update the EMAs.

Randomness that defines the loss (t, noise, label dropout) is drawn for the GLOBAL batch from
generators shared by all ranks, and each rank keeps its rows, so N processes reproduce one
process with the same global batch. A step = `batch_size` examples, split into per-device
micro-batches of `microbatch`.
"""
from __future__ import annotations

import contextlib

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

from gcg.nn.precision import autocast
from gcg.training.config import TrainConfig
from gcg.training.state import TrainState


def _rank_rows(state: TrainState) -> slice:
    """Rows of the global batch held by this rank: gcg.data.make_loader gives rank r the
    interleaved positions r, r + W, r + 2W, ... of the single-process batch."""
    return slice(state.info.rank, None, state.info.world_size)


def _autocast(state: TrainState):
    return autocast(state.precision, state.info.device)


def current_lr(config: TrainConfig, step: int) -> float:
    """Constant, or linear decay to 0 over `lr_anneal_steps` (ADM's --lr_anneal_steps)."""
    if config.lr_anneal_steps <= 0:
        return config.lr
    return config.lr * max(0.0, 1.0 - step / config.lr_anneal_steps)


def _draw_global(state: TrainState, n: int):
    """t, importance weights, noise (and label-dropout uniforms) for the global batch, sliced to this rank."""
    cfg, device = state.config, state.info.device
    t, weights = state.task.draw_t(state, n)  # on state.cpu_generator
    drop = (torch.rand(n, generator=state.cpu_generator) < cfg.p_uncond).to(device)
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
    stats = {"t": t, **{key: [] for key in state.task.stats}}
    for start in range(0, b, micro):
        rows = slice(start, min(start + micro, b))
        last = rows.stop >= b
        sync = contextlib.nullcontext() if (state.ddp is None or last) else state.ddp.no_sync()
        with sync:
            with _autocast(state):
                losses = _losses(state, x[rows], t[rows], noise[rows], None if y is None else y[rows])
            loss = (losses["loss"].float() * weights[rows]).sum() / b
            state.scaler.scale(loss).backward()
        for key in state.task.stats:
            if key in losses:
                stats[key].append(losses[key].detach().float())
    state.task.observe(state, t, torch.cat(stats["loss"]))
    stats = {k: (torch.cat(v) if isinstance(v, list) else v) for k, v in stats.items() if len(v)}
    stats.update(_optimizer_step(state))
    return stats


def _losses(state: TrainState, x, t, noise, y) -> dict:
    """The task's per-example losses of one micro-batch (`gcg.training.tasks`)."""
    if state.config.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return state.task.loss(state, x, t, noise, y)


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


# ----------------------------------------------------------------------------- EMA
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
