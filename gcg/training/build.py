"""From a `TrainConfig` to a ready `TrainState`: data, network, EMAs, AdamW, loss scaler,
diffusion, schedule sampler, task, DDP wrapper and the seeded random generators (`setup`)."""
from __future__ import annotations

import copy
import random

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from gcg import dist
from gcg.checkpoint import build_model
from gcg.data import DataError, DataUnavailable, make_dataset
from gcg.nn.precision import resolve_precision
from gcg.resample import create_named_schedule_sampler
from gcg.training.config import TrainConfig, build_model_config, data_properties, diffusion_config, validate
from gcg.training.state import TrainState
from gcg.training.tasks import make_task


def make_data(config: TrainConfig):
    """`gcg.data.make_dataset` for this config. `gcg.data`'s own errors pass through (`DataError`:
    malformed or misconfigured; `DataUnavailable`: files missing); any other failure to read the
    data becomes `DataUnavailable` (message kept)."""
    try:
        return make_dataset(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                            split="train")
    except DataError:
        raise
    except (FileNotFoundError, NotADirectoryError, ValueError, RuntimeError, OSError) as exc:
        raise DataUnavailable(str(exc)) from exc


def make_schedule_sampler(config: TrainConfig, diffusion):
    return create_named_schedule_sampler(config.schedule_sampler, diffusion)


def compute_precision(precision: str, device) -> str:
    """The precision the forward/backward runs in: `precision` on CUDA; on a CPU, bf16 where the
    CPU has bf16 units (`gcg.nn.precision.resolve_precision`), else "fp32".

    fp16 autocast, and bf16 without bf16 units, run several times slower than fp32 on a CPU
    (benchmarks/README.md), so those compute in fp32.
    """
    return resolve_precision(precision, device)[0]


def precision_notice(state: TrainState) -> str | None:
    """One line saying that the configured precision was replaced on this device (and why), else None."""
    cfg = state.config
    if state.precision == cfg.precision:
        return None
    reason = resolve_precision(cfg.precision, state.info.device)[1]
    scaler = " (its dynamic loss scaler still runs)" if state.scaler.is_enabled() else ""
    return f"gcg.train: {reason}{scaler}"


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
    ddp = None
    if info.world_size > 1:
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
                       make_schedule_sampler(config, diffusion), make_task(config.task), generator,
                       cpu_generator, rank_generator, model_config, data_shape, num_classes,
                       precision=compute_precision(config.precision, info.device))
    return state, dataset
