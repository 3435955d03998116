"""Training throughput (images/s) of the CPU presets at 8, 16 and 32 px, at 1 and 2 OpenMP threads.

Each (preset, thread count) runs in a fresh process with OMP_NUM_THREADS set before torch loads:
`gcg.train.setup` on the preset's own data set, then whole `gcg.train.train_step`s (timestep and
noise draws, forward, loss, backward, AdamW, EMA) on one fixed batch of real training images (the
data loader, sample grids and checkpoints are not timed). Prints a Markdown table and the load
average before and after, since other processes on the machine change the figures.

    python benchmarks/bench_presets.py                       # all presets below, 1 and 2 threads
    python benchmarks/bench_presets.py --presets digits glyphs16 --threads 1 --steps 10
    python benchmarks/bench_presets.py --precision bf16      # bf16 autocast (CPUs with bf16 units)
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PRESETS = ("photo8", "digits", "glyphs16", "photo32", "photo32-sr8", "glyphs32-sr16")


def measure(preset, steps, warmup, precision="fp32"):
    """{img/s, ms/step, params, ...} of `steps` train steps of `preset` in this process."""
    import torch

    from gcg.presets import get_preset
    from gcg.train import setup, train_step

    config = get_preset(preset)
    config.out_dir = None
    config.device = "cpu"
    config.precision = precision
    state, dataset = setup(config)
    if config.image_size is None:
        raise SystemExit(f"preset {preset!r} has no image size (not an image model); pick an image preset")
    examples = [dataset[i] for i in range(config.batch_size)]
    x = torch.stack([torch.as_tensor(e[0]) for e in examples])
    y = torch.stack([torch.as_tensor(e[1]) for e in examples]) if len(examples[0]) > 1 else None
    for _ in range(warmup):
        train_step(state, x, y)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        train_step(state, x, y)
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    return {"preset": preset, "px": config.image_size, "model": config.model, "batch": config.batch_size,
            "task": config.task, "params": sum(p.numel() for p in state.model.parameters()),
            "threads": torch.get_num_threads(), "img_s": config.batch_size * steps / wall,
            "ms_step": 1e3 * wall / steps, "cpu_per_wall": cpu / wall, "precision": state.precision}


def run_child(preset, threads, steps, warmup, precision="fp32"):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, __file__, "--child", preset, "--steps", str(steps), "--warmup", str(warmup),
           "--precision", precision]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{preset} at {threads} thread(s) failed:\n{out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=8, help="timed train steps per run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="the configs' precision (what runs on this CPU is printed)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or min(args.threads) < 1:
        parser.error("--steps and --threads must be >= 1 and --warmup >= 0")
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.warmup, args.precision)))
        return
    from gcg.presets import PRESETS

    unknown = [p for p in args.presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown presets {unknown}; valid presets: {', '.join(PRESETS)}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    rows = {}
    for preset in args.presets:
        for threads in args.threads:
            rows[preset, threads] = run_child(preset, threads, args.steps, args.warmup, args.precision)
            r = rows[preset, threads]
            print(f"  {preset} @ {threads} thread(s), {r['precision']}: {r['img_s']:.1f} img/s, "
                  f"{r['ms_step']:.0f} ms/step",
                  file=sys.stderr, flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    head = "| preset | px | network (params) | batch | " + " | ".join(
        f"img/s, {t} thread{'s' if t > 1 else ''}" for t in args.threads) + " |"
    print(head)
    print("|" + "---|" * (4 + len(args.threads)))
    for preset in args.presets:
        r = rows[preset, args.threads[0]]
        task = ", super-res" if r["task"] == "super_res" else ""
        cells = " | ".join(f"{rows[preset, t]['img_s']:.0f} ({rows[preset, t]['ms_step']:.0f} ms/step)"
                           for t in args.threads)
        print(f"| {preset} | {r['px']} | {r['model']}{task} ({r['params'] / 1e6:.2f}M) | {r['batch']} | {cells} |")


if __name__ == "__main__":
    main()
