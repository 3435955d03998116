"""What a run shows while it trains: metric windows (metrics.jsonl), TensorBoard scalars, the
loss curve and sample grids from the EMA model.

TensorBoard and matplotlib are imported inside the functions that use them: TensorBoard is an
optional extra, and neither should load for a run that logs neither.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import torch

from gcg import dist
from gcg.sample import generate, save_grid
from gcg.schedules import space_timesteps
from gcg.training.state import TrainState

# per-example statistics a step may return (`gcg.training.tasks`), as named in the log
LOG_NAMES = {"loss": "loss", "mse": "mse", "vb": "vb", "correct1": "acc1", "correct5": "acc5"}


class MetricWindow:
    """Running sums of per-example statistics between two log lines (per timestep quartile too)."""

    def __init__(self):
        self.sums, self.counts, self.images, self.skipped, self.start = {}, {}, 0, 0, time.perf_counter()

    def add(self, stats: dict, num_timesteps: int, global_batch: int) -> None:
        quartile = (stats["t"] * 4 // num_timesteps).clamp(max=3)
        for key, name in LOG_NAMES.items():
            if key not in stats:
                continue
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


def truncate_metrics(path: Path, step: int) -> list[dict]:
    """Keep the log records up to `step` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records = [r for r in records if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def append_metrics(path: Path, record: dict) -> None:
    """One record as a line of metrics.jsonl."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- TensorBoard
def tensorboard_available() -> None:
    """Raise ValueError (one line, naming the install) unless the tensorboard package is installed."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError("log=tensorboard needs the tensorboard package: pip install tensorboard "
                         "(or pip install -e '.[tensorboard]'), or drop --set log=tensorboard")


def tensorboard_writer(out_dir: Path, step: int):
    """A SummaryWriter on out_dir/tensorboard; events after `step` (a resumed run's redone steps)
    are purged so TensorBoard shows each step once."""
    tensorboard_available()
    from torch.utils.tensorboard import SummaryWriter  # the optional tensorboard package

    return SummaryWriter(str(out_dir / "tensorboard"), purge_step=step or None)


def log_tensorboard(writer, record: dict) -> None:
    """Every number of a metrics.jsonl record as a scalar at its step (loss_q0 -> loss/q0)."""
    for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
            name, _, quartile = key.partition("_q")
            tag = f"{name}/q{quartile}" if quartile.isdigit() else key
            writer.add_scalar(tag, value, record["step"])


# ----------------------------------------------------------------------------- pictures
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
    cfg = state.config
    model = next(iter(state.ema_models.values()), state.model)
    n, spec = cfg.num_sample_images, cfg.sample_steps
    if budget is not None:
        n, spec = sample_grid_plan(n, spec, state.diffusion.num_timesteps, budget)
        if (n, spec) != (cfg.num_sample_images, cfg.sample_steps):
            print(f"gcg.train: {path.name}: {n} images x {sampling_steps(spec, state.diffusion.num_timesteps)}"
                  f" steps, scaled to this short run (configured: {cfg.num_sample_images} x "
                  f"{cfg.sample_steps})", file=sys.stderr)
    n, labels, low_res = state.task.grid_conditioning(state, dataset, n)
    generator = torch.Generator(state.info.device).manual_seed(cfg.seed)
    images = generate(model, state.diffusion, n, state.data_shape, class_labels=labels,
                      timestep_respacing=spec, low_res=low_res,
                      aug_level=0.0 if getattr(state.model_config, "aug_level_cond", False) else None,
                      generator=generator, device=state.info.device, progress=False)
    save_grid(images, path, labels=None if labels is None else labels.cpu())
