"""Training checkpoints: atomic save, load, and ``load_model`` rebuilding a network from the file alone.

A checkpoint is a dict (saved with ``torch.save``) holding:
  "model_config"     network config dict (``gcg.nn.config`` ``to_dict()``, with "kind": "unet" | "classifier")
  "diffusion_config" ``gcg.diffusion.DiffusionConfig`` fields as a dict
  "model"            the trained weights (state dict)
  "ema"              {rate: state dict} exponential moving averages
  "optimizer", "scaler", "step", "rng" (torch, cuda, numpy, python, data position), "train_config"
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from gcg.diffusion import DiffusionConfig
from gcg.nn import config_from_dict, create_model, load_state_dict_checked

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d+)\.pt$")


def save_checkpoint(path, payload: dict) -> Path:
    """Write `payload` to `path` atomically: a temp file in the same directory, fsync, os.replace.

    A crash while writing leaves any previous file at `path` untouched (the rename is atomic on
    POSIX and Windows when source and target share a file system).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # some file systems do not allow fsync on directories
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint dict; a missing or unreadable file raises a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found (train one with `python -m gcg.train "
                                "--preset NAME --out-dir DIR`; checkpoints are DIR/checkpoint_*.pt)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated / not a torch file
        raise ValueError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); "
                         "it may be truncated: use an earlier checkpoint_*.pt") from None
    if not isinstance(payload, dict) or "model" not in payload or "model_config" not in payload:
        raise ValueError(f"{path} is not a gcg training checkpoint (expected a dict with 'model' and "
                         "'model_config'); for OpenAI's released weights use "
                         "gcg.convert.load_openai_checkpoint")
    return payload


def list_checkpoints(directory) -> list[Path]:
    """The ``checkpoint_<step>.pt`` files in ``directory``, oldest step first (temp files ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def checkpoint_path(directory, step: int) -> Path:
    return Path(directory) / f"checkpoint_{step:07d}.pt"


def build_model(model_config: dict) -> torch.nn.Module:
    """Instantiate the network described by a config dict or config object (no weights)."""
    if not isinstance(model_config, dict):
        model_config = model_config.to_dict()
    return create_model(config_from_dict(dict(model_config)))


def build_diffusion(diffusion_config: dict, timestep_respacing=None):
    return DiffusionConfig(**diffusion_config).build(timestep_respacing=timestep_respacing)


def load_model(path, use_ema: bool = True, ema_rate: float | None = None, device="cpu"):
    """Rebuild `(model, diffusion)` from a checkpoint's stored configs alone; model in eval mode.

    use_ema: load the EMA weights (rate ``ema_rate``, default the first stored rate) when the
    checkpoint has any, else the raw weights. ``diffusion`` is the GaussianDiffusion the network (or
    noise-aware classifier) was trained with, or None when the checkpoint stores no diffusion config.
    """
    payload = load_checkpoint(path)
    model = build_model(payload["model_config"])
    state = payload["model"]
    emas = payload.get("ema") or {}
    if use_ema and emas:
        if ema_rate is None:
            ema_rate = next(iter(emas))
        if ema_rate not in emas:
            raise KeyError(f"{path} has no EMA at rate {ema_rate}; stored rates: {list(emas)}")
        state = emas[ema_rate]
    load_state_dict_checked(model, state)
    model.to(device).eval()
    diffusion = build_diffusion(payload["diffusion_config"]) if payload.get("diffusion_config") else None
    return model, diffusion
