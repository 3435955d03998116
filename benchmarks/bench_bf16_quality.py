"""Sample quality of bf16 vs fp32 sampling: one trained checkpoint, the same noise, the same labels.

Samples `--num-samples` class-conditional images (labels 0..9 in turn, DDIM-50, no guidance) in
fp32 and under bf16 autocast (`gcg.sample(..., precision="bf16")`) from each seed, and scores both
as `bench_digits.py` does: the accuracy a logistic regression trained on the real digits gives
the samples, and Fréchet distance / precision on `gcg.features` domain features. The fp32 scores
of two seeds show the sampling noise a bf16 difference must be compared with. Also prints the
relative L2 difference of the bf16 samples from the fp32 ones and the sampling wall time.

    python -m gcg.train --preset digits --out-dir /tmp/digits
    OMP_NUM_THREADS=1 python benchmarks/bench_bf16_quality.py /tmp/digits/checkpoint.pt --seeds 0,1
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_digits import Judge  # noqa: E402

from gcg.checkpoint import load_model  # noqa: E402
from gcg.nn.precision import resolve_precision  # noqa: E402
from gcg.sample import sample  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a digits diffusion checkpoint (python -m gcg.train --preset digits)")
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--seeds", default="0,1", help="sampling seeds, comma-separated")
    p.add_argument("--steps", default="ddim50", help="respacing")
    args = p.parse_args(argv)
    runs, reason = resolve_precision("bf16", "cpu")
    if reason:
        p.error(f"{reason}: nothing to compare on this CPU")
    model, diffusion = load_model(args.checkpoint)
    judge = Judge()
    labels = torch.arange(args.num_samples) % 10
    print(f"{'seed':>4} {'precision':>9} {'seconds':>8} {'accuracy':>9} {'FD100':>7} {'P100':>6} {'FD':>7} "
          f"{'rel L2 vs fp32':>15}")
    print(f"{'test':>4} {'real':>9} {'':>8} " + " ".join(f"{judge.reference[k]:{w}.3f}" for k, w in
                                                          (("accuracy", 9), ("FD100", 7), ("P100", 6), ("FD", 7))))
    for seed in (int(s) for s in args.seeds.split(",")):
        fp32 = None
        for precision in ("fp32", "bf16"):
            start = time.perf_counter()
            x, _ = sample(model, diffusion, args.num_samples, batch_size=500, class_labels=labels,
                          timestep_respacing=args.steps, seed=seed, progress=False, precision=precision)
            seconds = time.perf_counter() - start
            s = judge.scores(x, labels)
            fp32 = x if fp32 is None else fp32
            rel = float((x - fp32).norm() / fp32.norm())
            print(f"{seed:>4} {precision:>9} {seconds:8.1f} {s['accuracy']:9.3f} {s['FD100']:7.3f} {s['P100']:6.3f} "
                  f"{s['FD']:7.3f} {rel:15.2e}", flush=True)


if __name__ == "__main__":
    main()
