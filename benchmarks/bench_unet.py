"""Forward+backward throughput and peak memory of a gcg UNet preset under several execution choices.

Compares the attention kernel (SDPA vs an explicit softmax), channels_last, torch.compile and
fp32 vs bf16 autocast; prints a table. Examples:

    python benchmarks/bench_unet.py --preset patch32_small --batch 32            # CPU
    python benchmarks/bench_unet.py --preset 64x64_diffusion --batch 32 --device cuda
    python benchmarks/bench_unet.py --preset 64x64_diffusion --scale 0.25 --batch 8   # scaled down

``--scale`` multiplies model_channels (rounded to a multiple of 32) so a paper preset fits a CPU.
"""

import argparse
import dataclasses
import multiprocessing
import time

import torch

from gcg.nn.config import count_parameters, create_model, get_preset
from gcg.nn.layers import set_attention_backend

VARIANTS = {  # name -> (attention backend, channels_last, compile, autocast dtype or None)
    "sdpa fp32": ("sdpa", False, False, None),
    "explicit-softmax fp32": ("explicit", False, False, None),
    "sdpa fp32 channels_last": ("sdpa", True, False, None),
    "sdpa bf16 autocast": ("sdpa", False, False, torch.bfloat16),
    "sdpa fp32 torch.compile": ("sdpa", False, True, None),
}


def scaled_config(name, scale):
    cfg = get_preset(name)
    if scale != 1.0:
        cfg = dataclasses.replace(cfg, model_channels=max(32, int(round(cfg.model_channels * scale / 32)) * 32))
    return cfg


def make_batch(cfg, batch, device):
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    if cfg.kind == "classifier":
        return x, t, {}
    kw = {}
    if cfg.num_classes is not None:
        kw["y"] = torch.randint(0, cfg.num_classes, (batch,), device=device)
    if cfg.super_res:
        kw["low_res"] = torch.randn(batch, cfg.in_channels, cfg.image_size // 4, cfg.image_size // 4, device=device)
    if cfg.aug_level_cond:
        kw["aug_level"] = torch.zeros(batch, device=device)
    return x, t, kw


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        import resource

        # high-water mark of this process (Linux: KiB); each CPU variant runs in a fresh process
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:
        return float("nan")


def run_variant(cfg, variant, batch, device, warmup, iters):
    backend, channels_last, compile_, amp_dtype = VARIANTS[variant]
    torch.manual_seed(0)
    model = set_attention_backend(create_model(cfg).to(device), backend).train()
    x, t, kw = make_batch(cfg, batch, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile_ else model

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = step_model(x, t, **kw)
        out.float().square().mean().backward()
        for p in model.parameters():
            p.grad = None

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return batch * iters / seconds, 1000 * seconds / iters, peak_memory_mb(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="patch32_small")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply model_channels (scaled-down runs)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cfg = scaled_config(args.preset, args.scale)
    with torch.device("meta"):
        n_params = count_parameters(create_model(cfg))
    print(f"preset {args.preset} (model_channels={cfg.model_channels}, {n_params / 1e6:.2f}M params), "
          f"batch {args.batch}, {cfg.image_size}x{cfg.image_size}, device {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    mem_label = "peak MB" if device.type == "cuda" else "peak RSS MB"
    print(f"{'variant':<26} {'images/s':>10} {'ms/step':>10} {mem_label:>11}")
    for variant in args.variants:
        try:
            job = (cfg, variant, args.batch, device, args.warmup, args.iters)
            if device.type == "cpu":  # a fresh process per variant, so the peak RSS is its own
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    ips, ms, mem = pool.apply(run_variant, job)
            else:
                ips, ms, mem = run_variant(*job)
            print(f"{variant:<26} {ips:>10.1f} {ms:>10.1f} {mem:>11.0f}", flush=True)
        except Exception as err:  # e.g. torch.compile without a working compiler toolchain
            print(f"{variant:<26} failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}", flush=True)


if __name__ == "__main__":
    main()
