"""Architecture ablations at 8x8 (Dhariwal & Nichol 2021, Sec. 3, Tables 1-3 and Fig. 2).

The shared pieces of chapter 05's experiment and `benchmarks/adm_ablation.py`: the small
baseline network for the sklearn digits, one training run of a variant (`train_variant`), the
held-out L_simple with timesteps and noise fixed once (`heldout_loss`), a resumable JSON of
runs (`load_runs`, `save_run`) and the paired comparison against the baseline (`paired_summary`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch

from gcg.training.config import TrainConfig
from gcg.training.loop import TrainResult, train

# the 8x8 baseline of chapter 05 (a UNetConfig's fields): 32 channels, mult (1, 2), 1 res block,
# 1 head, attention at 4x4, conv resampling, AdaGN
BASELINE = dict(image_size=8, in_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), num_heads=1, num_head_channels=-1, resblock_updown=False,
                use_scale_shift_norm=True, resblock_rescale=False, num_classes=10)
# the network fields a TrainConfig's model_overrides take (image size, channels, classes come from the data)
NETWORK = {k: v for k, v in BASELINE.items() if k not in ("image_size", "in_channels", "num_classes")}


def ablation_config(change: dict, seed: int, steps: int, log_every: int = 10) -> TrainConfig:
    """The TrainConfig of one run: the baseline with `change` (UNetConfig fields) applied, batch 32,
    lr 2e-3, cosine schedule, class-conditional, no EMA, no dropout; `steps` optimizer steps."""
    unknown = sorted(set(change) - set(NETWORK))
    if unknown:
        raise ValueError(f"unknown network field(s) {unknown} in the variant; use UNetConfig fields "
                         f"such as {sorted(NETWORK)}")
    if steps < 1 or log_every < 1:
        raise ValueError(f"steps ({steps}) and log_every ({log_every}) must be positive integers")
    return TrainConfig(model="digits8_small", dataset="digits", image_size=8, noise_schedule="cosine",
                       batch_size=32, lr=2e-3, max_steps=steps, ema_rates=(), dropout=0.0, p_uncond=0.0,
                       log_every=log_every, seed=seed,
                       model_overrides={**NETWORK, "class_null": False, **change})


def train_variant(change: dict, seed: int, steps: int, dataset, log_every: int = 10) -> tuple[TrainResult, float]:
    """Train the baseline with `change` for `steps` steps on `dataset` (a gcg.data data set).
    With the same seed every variant sees the same batches, timesteps and noise (paired runs).
    Returns (the TrainResult, wall-clock seconds per step)."""
    config = ablation_config(change, seed, steps, log_every)
    start = time.perf_counter()
    result = train(config, progress=False, dataset=dataset)
    return result, (time.perf_counter() - start) / result.step


def heldout_loss(model, diffusion, x: torch.Tensor, y: torch.Tensor | None, seed: int = 1234,
                 repeats: int = 4) -> float:
    """Mean L_simple (Ho et al. 2020 Eq. 14) of `model` on held-out images x [N, C, H, W] with labels
    y [N] (or None), averaged over `repeats` draws of t [N] and noise [N, C, H, W] from a generator
    seeded with `seed`: every model is scored on the same t and noise."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    kwargs = {} if y is None else {"y": y.to(device)}
    total = 0.0
    with torch.no_grad():
        for _ in range(repeats):
            t = torch.randint(0, diffusion.num_timesteps, (len(x),), generator=g)
            noise = torch.randn(x.shape, generator=g)
            losses = diffusion.training_losses(model, x.to(device), t.to(device), model_kwargs=kwargs,
                                               noise=noise.to(device))
            total += losses["loss"].mean().item() / repeats
    return total


# ------------------------------------------------------------------ a resumable JSON of runs

def load_runs(path) -> list[dict]:
    """The runs stored in the JSON at `path` (a list of dicts with "variant" and "seed"); [] if absent."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it or pass another --out") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "variant" in r and "seed" in r for r in runs):
        raise ValueError(f"{path} holds no list of runs under 'runs'; delete it or pass another --out")
    return runs


def save_run(path, run: dict, meta: dict | None = None) -> list[dict]:
    """Add `run` to the JSON at `path` (replacing a stored run of the same variant and seed), write it
    atomically (a crash leaves the old file) and return all runs."""
    def add(data, runs):
        data.update(meta or {})
        data["runs"] = [r for r in runs if (r["variant"], r["seed"]) != (run["variant"], run["seed"])] + [run]

    return _update_json(path, add)["runs"]


def save_meta(path, meta: dict) -> None:
    """Set top-level fields of the JSON at `path` (keeping its runs), atomically."""
    def set_fields(data, runs):
        data.setdefault("runs", runs)
        data.update(meta)

    _update_json(path, set_fields)


def _update_json(path, change) -> dict:
    """Read the runs JSON at `path` (refusing a malformed one), apply change(data, runs) under the lock
    and write the result atomically; returns the new data."""
    path = Path(path)
    with _locked(path):  # processes that share the file change it one at a time
        runs = load_runs(path)
        data = json.loads(path.read_text()) if path.exists() else {}
        change(data, runs)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    return data


@contextlib.contextmanager
def _locked(path: Path):
    """Hold an exclusive lock on the folder of `path` (no lock file left behind). POSIX only;
    elsewhere (Windows) no lock: run one writer at a time."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(path.resolve().parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def missing_runs(runs: list[dict], variants, seeds) -> list[tuple[str, int]]:
    """The (variant, seed) pairs, seed-major, that `runs` does not hold yet."""
    present = {(r["variant"], r["seed"]) for r in runs}
    return [(v, s) for s in seeds for v in variants if (v, s) not in present]


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error (sample standard deviation / sqrt(n); nan for n = 1)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("mean_se needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def paired_summary(runs: list[dict], key: str = "heldout", baseline: str = "baseline") -> dict:
    """Per variant: {"n", "mean", "se", "delta", "delta_se"} of `key` over seeds, where delta is the
    mean over seeds of (variant - baseline of the same seed) and delta_se its standard error. Only
    seeds that the baseline also has are paired."""
    base = {r["seed"]: r[key] for r in runs if r["variant"] == baseline}
    if not base:
        raise ValueError(f"no '{baseline}' run to pair against; run the baseline first")
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = {r["seed"]: r[key] for r in runs if r["variant"] == variant}
        mean, se = mean_se(mine.values())
        seeds = sorted(set(mine) & set(base))
        delta, delta_se = mean_se([mine[s] - base[s] for s in seeds]) if seeds else (math.nan, math.nan)
        out[variant] = dict(n=len(mine), mean=mean, se=se, delta=delta, delta_se=delta_se)
    return out
