"""Training throughput of the imagenet64 recipe: images/s, peak memory, GFLOP/image (and MFU on CUDA).

Runs `gcg.train.train_step` on random 64x64 images (no data set needed) for each precision, then the
same global batch split over 2 gloo processes (DDP overhead). On CPU the network is scaled down
through the same `--set` overrides the trainer takes; on a GPU run the full preset.

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py --device cpu --batch-size 8 --image-size 32 \
        --set model.model_channels=64 --set model.num_res_blocks=1 --ddp 2
    python benchmarks/bench_train.py --device cuda --batch-size 64 --precisions fp32 bf16 fp16 \
        --peak-tflops 989   # H100 SXM dense bf16
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gcg.data import TensorImageDataset  # noqa: E402
from gcg.presets import apply_overrides, get_preset  # noqa: E402
from gcg.train import setup, train_step  # noqa: E402


def make_config(args, precision, world_size=1):
    sets = {"precision": precision, "batch_size": args.batch_size, "microbatch": args.microbatch,
            "device": args.device, "image_size": args.image_size, "out_dir": None,
            "compile": args.compile, "channels_last": args.channels_last}
    config = apply_overrides(get_preset(args.preset), sets)
    return apply_overrides(config, args.set)


def random_dataset(args, num_classes=1000):
    g = torch.Generator().manual_seed(0)
    n = max(4 * args.batch_size, 64)
    images = torch.rand(n, 3, args.image_size, args.image_size, generator=g) * 2 - 1
    labels = torch.randint(0, num_classes, (n,), generator=g)
    labels[0] = num_classes - 1  # the label count the trainer infers
    return TensorImageDataset(images, labels)


def flops_per_image(state, x, y):
    """Forward + backward FLOPs of one training example (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    t = torch.zeros(1, dtype=torch.long, device=x.device)
    with counter:
        out = state.model(x[:1].to(state.info.device), t, y=y[:1].to(state.info.device))
        out.float().square().mean().backward()
    state.model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(args, precision, world_size=1):
    """(images/s over the global batch, peak memory MiB, GFLOP/img) on this process."""
    config = make_config(args, precision, world_size)
    state, dataset = setup(config, random_dataset(args))
    device = state.info.device
    per_rank = config.batch_size // world_size
    x = torch.stack([dataset[i][0] for i in range(per_rank)])
    y = torch.stack([dataset[i][1] for i in range(per_rank)])
    for _ in range(args.warmup):
        train_step(state, x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step(state, x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS
    gflop = flops_per_image(state, x, y) / 1e9 if state.info.rank == 0 else float("nan")
    params = sum(p.numel() for p in state.model.parameters())
    return config.batch_size * args.steps / seconds, peak, gflop, params


def _ddp_worker(rank, world_size, port, args, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, args.threads // world_size))
    result = measure(args, args.precisions[0], world_size)
    if rank == 0:
        queue.put(result)
    torch.distributed.destroy_process_group()


def run_ddp(args):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    torch.multiprocessing.start_processes(_ddp_worker, args=(args.ddp, port, args, queue),
                                          nprocs=args.ddp, start_method="spawn")
    return queue.get()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="imagenet64")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=8, help="global batch")
    p.add_argument("--microbatch", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--precisions", nargs="+", default=None, help="default: fp32 bf16 fp16 on cuda, fp32 on cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--ddp", type=int, default=0, help="also run N gloo/NCCL processes (CPU: 2)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak, for MFU")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    # gcg.train computes in fp32 on a CPU whatever the config says (gcg.train.compute_precision)
    args.precisions = args.precisions or (["fp32", "bf16", "fp16"] if args.device == "cuda" else ["fp32"])
    args.threads = torch.get_num_threads()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({args.threads} threads)"
    print(f"preset {args.preset}, {device_name}, global batch {args.batch_size}, "
          f"{args.image_size}x{args.image_size}, overrides {args.set or 'none'}")
    rows = []
    for precision in args.precisions:
        rows.append((f"1 process, {precision}", *measure(args, precision)))
    if args.ddp:
        rows.append((f"DDP {args.ddp} x {max(1, args.threads // args.ddp)} threads, {args.precisions[0]}",
                     *run_ddp(args)))
    print(f"{'run':<34} {'params':>10} {'img/s':>9} {'peak MiB':>9} {'GFLOP/img':>10} {'MFU':>6}")
    for name, rate, peak, gflop, params in rows:
        mfu = (f"{rate * gflop / 1e3 / args.peak_tflops:6.1%}" if args.peak_tflops else "     -")
        print(f"{name:<34} {params / 1e6:9.2f}M {rate:9.2f} {peak:9.0f} {gflop:10.2f} {mfu}")
    if args.ddp:
        base = next(r for r in rows if r[0].endswith(args.precisions[0]))
        print(f"DDP throughput / single-process throughput: {rows[-1][1] / base[1]:.2f}")


if __name__ == "__main__":
    main()
