"""What a run carries from step to step, and how it survives a restart.

`TrainState` holds everything the loop mutates. A checkpoint (`make_checkpoint`) is that state
as tensors and plain values: weights, EMAs, optimizer, loss scaler, step, every random stream
of every rank, the schedule sampler's history and the config. `restore` puts it back (refusing a
config that changes the maths, `gcg.training.config.check_resume_config`), so a resumed run
continues bit for bit; `save` writes it atomically and keeps the newest few; `resolve_resume`
finds the checkpoint ``--resume`` means.
"""
from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gcg import dist
from gcg.checkpoint import checkpoint_path, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from gcg.nn import load_state_dict_checked
from gcg.training.config import TrainConfig, check_resume_config, diffusion_config


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
    task: object  # the objective: a gcg.training.tasks task (draw t, per-example losses, log keys)
    generator: torch.Generator  # on the device, same on all ranks: noise of the global batch
    cpu_generator: torch.Generator  # same on all ranks: t and label dropout of the global batch
    rank_generator: torch.Generator  # per rank: super-resolution conditioning augmentation
    model_config: object
    data_shape: tuple  # one example's shape, e.g. (C, H, W) or (D,)
    num_classes: int | None
    step: int = 0
    precision: str = "fp32"  # what runs: config.precision on CUDA; on a CPU bf16 with bf16 units, else fp32


# ----------------------------------------------------------------------------- random streams
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


# ----------------------------------------------------------------------------- checkpoints
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


def restore(state: TrainState, path, payload: dict | None = None) -> None:
    """Load model, EMA, optimizer, scaler, step, RNG and sampler state from `path` (or its already
    loaded `payload`) into `state`; a changed maths field or network is an error naming it."""
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
