"""Time the sample-quality metrics on Inception-sized features (prints figures, asserts nothing).

    python benchmarks/bench_metrics.py                 # 10K x 10K features of dimension 2048
    python benchmarks/bench_metrics.py --n 50000       # the ADM evaluation size
    python benchmarks/bench_metrics.py --threads 2

Features are random (a correlated Gaussian, ReLU'd like pool3 activations); the time does not
depend on their values. Reports wall-clock and CPU seconds (all threads) for each metric, the
total, and peak RSS. On a shared machine the CPU seconds divided by the thread count estimate the
wall time an idle machine would take.
"""

import argparse
import resource
import time

import torch

from gcg.metrics import fid_from_features, inception_score, kid, precision_recall


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="features per set")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--block-size", type=int, default=5000)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--kid", action="store_true", help="also time KID (100 subsets of 1000)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    mix = torch.randn(args.dim, args.dim, generator=g) / args.dim**0.5
    real = torch.relu(torch.randn(args.n, args.dim, generator=g) @ mix)
    fake = torch.relu(torch.randn(args.n, args.dim, generator=g) @ mix + 0.05)
    logits = torch.randn(args.n, 1008, generator=g) * 3

    print(f"{args.n} x {args.n} features of dimension {args.dim}, {torch.get_num_threads()} torch threads")
    timings = {}

    t, c = time.perf_counter(), time.process_time()
    fid = fid_from_features(real, fake)
    timings["FID (covariances, 2 Cholesky, svdvals; float64)"] = (time.perf_counter() - t, time.process_time() - c)

    t, c = time.perf_counter(), time.process_time()
    pr = precision_recall(real, fake, k=args.k, block_size=args.block_size)
    timings[f"precision/recall (k={args.k}, float32 blocks of {args.block_size})"] = (time.perf_counter() - t, time.process_time() - c)

    t, c = time.perf_counter(), time.process_time()
    score = inception_score(logits, splits=10)
    timings["Inception Score (1008 classes, 10 splits)"] = (time.perf_counter() - t, time.process_time() - c)

    if args.kid:
        t, c = time.perf_counter(), time.process_time()
        kid(real, fake)
        timings["KID (100 subsets of 1000)"] = (time.perf_counter() - t, time.process_time() - c)

    print(f"  {'':55s} {'wall':>8s} {'CPU':>8s}")
    for name, (wall, cpu) in timings.items():
        print(f"  {name:55s} {wall:7.2f}s {cpu:7.2f}s")
    total_wall, total_cpu = (sum(v[i] for v in timings.values()) for i in (0, 1))
    print(f"  {'total':55s} {total_wall:7.2f}s {total_cpu:7.2f}s")
    print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    print(f"  (values: FID {fid:.3f}, precision {pr.precision:.3f}, recall {pr.recall:.3f}, IS {score.mean:.2f})")


if __name__ == "__main__":
    main()
