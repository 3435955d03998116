"""ADM's depth and heads ablations (Dhariwal & Nichol 2021, Table 1 row 1, Table 2, Fig. 2) as runs at 8x8.

Trains chapter 05's digit baseline and its variants (`gcg.ablation`) for more steps and seeds than
the chapter can afford, and stores per (variant, seed): parameters, GFLOP per training step, seconds
per step (one thread), the held-out L_simple with fixed t and noise, and the training-loss history
against step and wall-clock seconds. The JSON is resumable: entries already present are skipped, so
the sweep runs as many short jobs (`--max-runs`), e.g.

    for i in $(seq 8); do python benchmarks/adm_ablation.py --max-runs 2; done
    python benchmarks/adm_ablation.py --time      # s/step with one thread, on an otherwise idle machine
    python benchmarks/adm_ablation.py --summary   # the table, nothing trained
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gcg import ablation  # noqa: E402

VARIANTS = {
    "baseline": {},  # 1 head x 64 channels at 4x4
    "2 heads": dict(num_heads=2),
    "4 heads": dict(num_heads=4),
    "8 heads": dict(num_heads=8),
    "depth 2": dict(num_res_blocks=2),
}
# the paper's FID change at 700K (Table 1 row 1: "128 channels, depth 4" vs 160 channels, depth 2;
# Table 2: heads on a 128-channel network whose 1-head FID is 14.08)
PAPER = {"baseline": "—", "2 heads": "−0.50 (Table 2)", "4 heads": "−0.97 (Table 2)", "8 heads": "−1.17 (Table 2)",
         "depth 2": "−0.21 (Table 1, deeper and narrower)"}
DEFAULT_OUT = Path(__file__).resolve().parent / "adm_ablation.json"


def training_step_flops(change: dict, batch_size: int = 32) -> float:
    """FLOPs of one forward + backward of the network on a batch of 8x8 digits (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from gcg.nn.config import UNetConfig
    from gcg.nn.unet import UNetModel

    net = UNetModel(UNetConfig(**{**ablation.BASELINE, **change}))
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(batch_size, 1, 8, 8, generator=g), torch.randint(0, 1000, (batch_size,), generator=g)
    with FlopCounterMode(display=False) as counter:
        net(x, t, y=torch.arange(batch_size) % 10).square().mean().backward()
    return counter.get_total_flops()


def one_run(variant: str, seed: int, steps: int, log_every: int, train_set, x_test, y_test) -> dict:
    from gcg.nn.config import count_parameters

    change = VARIANTS[variant]
    result, _ = ablation.train_variant(change, seed, steps, train_set, log_every=log_every)
    history = [[h["step"], round(h["loss"], 6), round(h["elapsed_s"], 3)] for h in result.history]
    return dict(variant=variant, seed=seed, steps=result.step, params=count_parameters(result.model),
                gflop_per_step=training_step_flops(change) / 1e9,
                seconds_per_step=history[-1][2] / result.step,
                heldout=ablation.heldout_loss(result.model, result.diffusion, x_test, y_test),
                history=history)


def time_variants(variants, steps: int = 60, skip: int = 10) -> dict:
    """Seconds per training step of each variant (train for `steps`, time all after the first `skip`):
    run on an otherwise idle machine, this is the clean s/step; the sweep's own runs share the cores."""
    from gcg.data import load_digits_dataset

    train_set, out = load_digits_dataset("train"), {}
    for v in variants:
        result, _ = ablation.train_variant(VARIANTS[v], 0, steps, train_set, log_every=skip)
        first, last = result.history[0], result.history[-1]
        out[v] = (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])
        print(f"{v}: {out[v]:.4f} s/step", flush=True)
    return out


def summary_table(runs: list[dict], timing: dict | None = None) -> str:
    """A Markdown table: variant, params, GFLOP/step, s/step (from `timing` if given, else the runs'
    own), held-out loss mean ± se, Δ vs baseline ± se."""
    stats = ablation.paired_summary(runs)
    rows = ["| variant | seeds | params | GFLOP / step | s / step | held-out loss | Δ vs baseline | paper ΔFID |",
            "|---|---|---|---|---|---|---|---|"]
    for v, s in stats.items():
        mine = [r for r in runs if r["variant"] == v]
        sec = (timing or {}).get(v, sum(r["seconds_per_step"] for r in mine) / len(mine))
        delta = "—" if v == "baseline" else f"{s['delta']:+.4f} ± {s['delta_se']:.4f}"
        rows.append(f"| {v} | {s['n']} | {mine[0]['params']:,} | {mine[0]['gflop_per_step']:.3f} | {sec:.3f} | "
                    f"{s['mean']:.4f} ± {s['se']:.4f} | {delta} | {PAPER.get(v, '')} |")
    return "\n".join(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the resumable JSON (default: %(default)s)")
    p.add_argument("--steps", type=int, default=600, help="optimizer steps per run, batch 32 (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds (default: 0 1 2 3 4)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="NAME",
                   help=f"a subset of: {', '.join(repr(v) for v in VARIANTS)}")
    p.add_argument("--log-every", type=int, default=20, help="steps per logged training-loss mean (default: 20)")
    p.add_argument("--max-runs", type=int, default=None, help="train at most this many missing runs, then exit")
    p.add_argument("--threads", type=int, default=1, help="torch threads; s/step is reported for 1 (default: 1)")
    p.add_argument("--time", action="store_true",
                   help="only time each variant's training step (store under 'timing'); run it on an idle machine")
    p.add_argument("--summary", action="store_true", help="print the table of the stored runs, train nothing")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)} (quote names with spaces)")
    if args.steps < 1 or args.log_every < 1 or args.threads < 1 or (args.max_runs is not None and args.max_runs < 1):
        p.error("--steps, --log-every, --threads and --max-runs must be positive integers")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = ablation.load_runs(args.out)
    if args.summary:
        timing = json.loads(args.out.read_text()).get("timing", {}).get("seconds_per_step") if runs else None
        print(summary_table(runs, timing) if runs else f"{args.out}: no runs stored yet")
        return 0
    if args.time:
        torch.set_num_threads(args.threads)
        timing = dict(threads=args.threads, seconds_per_step=time_variants(args.variants))
        ablation.save_meta(args.out, dict(timing=timing))
        return 0
    other = sorted({r["steps"] for r in runs} - {args.steps})
    if other:
        raise SystemExit(f"{args.out} holds runs of {other} steps; pass --steps {other[0]} to add to it, "
                         "or another --out")
    todo = ablation.missing_runs(runs, args.variants, args.seeds)[:args.max_runs]
    if not todo:
        print(f"{args.out}: all {len(args.variants) * len(args.seeds)} runs present")
        return 0
    torch.set_num_threads(args.threads)
    from gcg.data import load_digits_dataset

    train_set = load_digits_dataset("train")
    x_test, y_test = load_digits_dataset("test").as_tensors()
    command = " ".join(["python benchmarks/adm_ablation.py"] + (argv if argv is not None else sys.argv[1:]))
    meta = dict(torch=torch.__version__, threads=args.threads, steps=args.steps, log_every=args.log_every,
                variants={v: VARIANTS[v] for v in VARIANTS}, paper=PAPER)
    for variant, seed in todo:
        start = time.perf_counter()
        run = {**one_run(variant, seed, args.steps, args.log_every, train_set, x_test, y_test), "command": command}
        runs = ablation.save_run(args.out, run, meta)
        print(f"{variant} seed {seed}: held-out {run['heldout']:.4f}, {run['seconds_per_step']:.3f} s/step "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    print(summary_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
