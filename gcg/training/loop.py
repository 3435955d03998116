"""The training loop: ``train(config)``, read top to bottom.

  1. resume or start fresh    which checkpoint (`gcg.training.state.resolve_resume`), checked
                              against the config before anything is built
  2. build                    data, network, EMAs, optimizer, task (`gcg.training.build.setup`)
  3. prepare the run folder   config.json, metrics.jsonl up to the resumed step, TensorBoard
  4. loop                     stop? -> batch -> `train_step` -> log -> checkpoint -> sample grid
  5. finish                   last checkpoint, loss curve, final sample grid

Under DDP every rank runs the same loop; rank 0 alone writes files.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gcg.checkpoint import latest_checkpoint, load_checkpoint, remove_stale_temp_files
from gcg.data import make_loader
from gcg.training.build import precision_notice, setup
from gcg.training.config import TrainConfig, check_resume_config
from gcg.training.monitor import (MetricWindow, append_metrics, grid_budget, log_tensorboard, plot_loss_curve,
                                  tensorboard_writer, truncate_metrics, write_sample_grid)
from gcg.training.signals import StopSignals, _should_stop, stop_reason
from gcg.training.state import resolve_resume, restore, save
from gcg.training.step import current_lr, train_step


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


def train(
    config: TrainConfig,                # the run: a preset, perhaps with --set overrides
    progress: bool = True,              # a tqdm bar on rank 0
    max_seconds: float | None = None,   # stop (and checkpoint) after this long
    resume=None,                        # None: fresh; True: newest checkpoint in out_dir; or a path
    dataset=None,                       # an already-built data set instead of gcg.data.make_dataset
    handle_signals: bool = False,       # SIGINT / SIGTERM: finish the step, save, return
) -> TrainResult:
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
    # 1. resume or start fresh ----------------------------------------------------------------
    out_dir = Path(config.out_dir) if config.out_dir else None
    resume_path = resolve_resume(resume, out_dir)
    payload = None
    if resume_path is not None:
        payload = load_checkpoint(resume_path, map_location="cpu")  # RNG states must stay on the CPU
        check_resume_config(payload.get("train_config"), config, resume_path)
    elif out_dir is not None and (found := latest_checkpoint(out_dir)) is not None:
        raise ValueError(f"--out-dir {out_dir} already holds a run's checkpoints ({found.name}); continue "
                         "it with --resume, or start over in another --out-dir (or delete that one)")

    # 2. build ----------------------------------------------------------------------------------
    state, dataset = setup(config, dataset)
    cfg, info = state.config, state.info
    writes = out_dir is not None and info.is_main  # rank 0 writes files
    if payload is not None:
        restore(state, resume_path, payload)
        del payload
    notice = precision_notice(state)
    if notice and info.is_main:
        print(notice, file=sys.stderr)

    # 3. prepare the run folder -----------------------------------------------------------------
    history: list[dict] = []
    if writes:
        out_dir.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temp_files(out_dir)
        if removed:
            print(f"gcg.train: removed {len(removed)} temp file(s) of unfinished checkpoint writes "
                  f"({sum(n for _, n in removed) / 1e6:.1f} MB) from {out_dir}", file=sys.stderr)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        history = truncate_metrics(out_dir / "metrics.jsonl", state.step)
    board = tensorboard_writer(out_dir, state.step) if writes and cfg.log == "tensorboard" else None
    loader = make_loader(dataset, batch_size=cfg.batch_size // info.world_size, seed=cfg.seed,
                         rank=info.rank, world_size=info.world_size, start_step=state.step)
    start_step, start_time = state.step, time.perf_counter()
    bar = tqdm(total=cfg.max_steps, initial=state.step, disable=not (progress and info.is_main),
               desc=f"train {cfg.task}", dynamic_ncols=True)
    window, last_saved, checkpoint, stop = MetricWindow(), state.step, resume_path, 0
    grids = writes and state.task.makes_samples

    # 4. loop -----------------------------------------------------------------------------------
    signals = StopSignals(state, out_dir) if handle_signals else contextlib.nullcontext()
    with signals:
        while state.step < cfg.max_steps:
            # stop? (one collective per step under DDP, so every rank stops after the same step)
            if handle_signals or max_seconds is not None:
                timed_out = max_seconds is not None and time.perf_counter() - start_time > max_seconds
                stop = _should_stop(getattr(signals, "received", 0) or int(timed_out), info)
                if stop:
                    break

            # one optimizer step
            x, y = next(loader)
            stats = train_step(state, x, y if state.num_classes is not None else None)
            window.add(stats, state.diffusion.num_timesteps, cfg.batch_size)
            bar.update(1)

            # log
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                record = {"step": state.step, **window.summary(info.world_size),
                          "lr": current_lr(cfg, state.step - 1), "loss_scale": stats["loss_scale"],
                          "elapsed_s": time.perf_counter() - start_time}
                window = MetricWindow()
                history.append(record)
                bar.set_postfix(loss=f"{record.get('loss', math.nan):.4f}",
                                img_s=f"{record['images_per_s']:.0f}")
                if writes:
                    append_metrics(out_dir / "metrics.jsonl", record)
                    if board is not None:
                        log_tensorboard(board, record)

            # checkpoint (collective under DDP)
            if out_dir is not None and cfg.save_every and state.step % cfg.save_every == 0:
                checkpoint, last_saved = save(state, out_dir), state.step

            # sample grid (the last step's grid is samples_final.png, written once in 5.)
            if grids and cfg.sample_every and state.step % cfg.sample_every == 0 and state.step < cfg.max_steps \
                    and not getattr(signals, "received", 0):
                write_sample_grid(state, dataset, out_dir / f"samples_{state.step:07d}.png",
                                  budget=grid_budget(state, state.step - start_step))
        bar.close()
        if board is not None:
            board.close()
        if out_dir is not None and state.step > last_saved:
            checkpoint = save(state, out_dir)
        interrupted = bool(getattr(signals, "received", 0))

    # 5. finish ---------------------------------------------------------------------------------
    if writes and state.step > start_step:
        if history:
            plot_loss_curve(history, out_dir / "loss_curve.png")
        if grids and not interrupted:  # a pre-empted job has seconds, not minutes
            write_sample_grid(state, dataset, out_dir / "samples_final.png",
                              budget=grid_budget(state, state.step - start_step))
    model = state.model.eval()
    ema = next(iter(state.ema_models.values()), model)
    return TrainResult(model, ema, state.diffusion, history, state.ema_models, state.step, cfg,
                       stopped_by=stop_reason(stop), checkpoint=checkpoint)
