"""The trainer's command line: ``python -m gcg.train --preset NAME`` (parser, config from the
arguments, the startup summary, exit codes). The trainer itself is the `gcg.training` package:

  "diffusion"  L_simple / L_hybrid of `GaussianDiffusion.training_losses` (Ho et al. 2020 Eq. (14),
               Nichol & Dhariwal 2021 Eq. (16)), t from a `gcg.resample` schedule sampler;
  "classifier" the noise-aware classifier of Dhariwal & Nichol 2021 Sec. 4.1: t ~ U{0..T-1},
               x_t ~ q(x_t | x_0) (`q_sample`), cross-entropy, top-1/top-5 per timestep quartile;
  "super_res"  a diffusion model conditioned on an augmented low-resolution image
               (`gcg.cascade.super_res_kwargs`, Ho et al. 2021 Sec. 3.2)

(`gcg.training.tasks`), one loop for the three (`gcg.training.loop.train`). Every name that code
imported from ``gcg.train`` before the package existed is still importable from here.

Multi-device: ``torchrun --nproc_per_node N -m gcg.train ...`` (DDP; `gcg.dist`). Randomness that
defines the loss (t, noise, label dropout) is drawn for the GLOBAL batch from one generator shared
by all ranks, and each rank takes its rows, so N processes reproduce one process with the same
global batch. A step = `batch_size` examples, split into per-device micro-batches of `microbatch`.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys

import torch

from gcg import dist
from gcg.checkpoint import build_model, list_checkpoints
from gcg.cli import (ArgumentParser, UsageError, add_threads_argument, check_device, check_output_dir,
                     machine_load, nonnegative_int, positive_float, positive_int, run, set_threads)
from gcg.training.build import (DataUnavailable, compute_precision, make_data, make_schedule_sampler,
                                precision_notice, setup)
from gcg.training.config import (NETWORK_FIELDS, RESUMABLE_FIELDS, TrainConfig, build_model_config,
                                 check_resume_config, data_properties, diffusion_config, validate)
from gcg.training.loop import TrainResult, train
from gcg.training.monitor import (MetricWindow, grid_budget, log_tensorboard, plot_loss_curve, sample_grid_plan,
                                  sampling_steps, tensorboard_available, tensorboard_writer, write_sample_grid)
from gcg.training.overrides import apply_overrides, load_config_file
from gcg.training.presets import describe_presets, get_preset
from gcg.training.signals import StopSignals, _should_stop  # noqa: F401  (re-exported)
from gcg.training.state import TrainState, make_checkpoint, resolve_resume, restore, save
from gcg.training.step import (_draw_global, _losses, _optimizer_step, current_lr,  # noqa: F401  (shown in ch. 04, 08)
                               ema_warmup_rate, train_step, update_ema)

__all__ = [  # the trainer's names, as imported from gcg.train before gcg.training existed
    "DataUnavailable", "MetricWindow", "NETWORK_FIELDS", "RESUMABLE_FIELDS", "StopSignals", "TrainConfig",
    "TrainResult", "TrainState", "build_model_config", "check_resume_config", "compute_precision",
    "current_lr", "data_properties", "diffusion_config", "ema_warmup_rate", "grid_budget", "log_tensorboard",
    "make_checkpoint", "make_data", "make_schedule_sampler", "plot_loss_curve", "precision_notice",
    "resolve_resume", "restore", "sample_grid_plan", "sampling_steps", "save", "setup", "tensorboard_available",
    "tensorboard_writer", "train", "train_step", "update_ema", "validate", "write_sample_grid",
    # the command line
    "BUILT_IN_DATA", "build_parser", "check_before_training", "config_from_args", "interrupted_message", "main",
    "startup_summary",
]


# ----------------------------------------------------------------------------- command line
# data sets gcg builds itself: they read no --data-dir
BUILT_IN_DATA = ("digits", "photo-patches", "glyphs", "toy-gmm")


def build_parser() -> argparse.ArgumentParser:
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
    return run("gcg.train", _main, argv)


def _main(argv) -> int:
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
