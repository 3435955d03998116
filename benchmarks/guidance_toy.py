"""Classifier guidance against exact ground truth on the class-labelled Gaussian-mixture toy.

The unconditional exact eps-model of ``gcg.toy`` plus the exact noisy classifier p(y | x_t) should,
at scale s = 1, sample the exact conditional p(x | y) = N(mu_y, std^2 I) as the number of steps grows.
Prints three tables (numbers are Monte Carlo estimates; the energy-distance noise floor is printed):

1. s = 1, purity E p(y | x) and energy distance to exact conditional samples vs steps, for
   DDPM guidance with the gradient at x_t (reference code), at the mean mu (classifier still at the
   noise level of x_t), at mu with the classifier at the noise level of x_{t-1} (the derivation),
   DDIM-form guidance (eta = 0), and the exact conditional model without guidance (baseline);
2. s sweep: purity, spread (covariance trace), offset of the class mean, k-NN precision/recall vs exact
   samples, and the energy distance to the tilted target p(x) p(y | x)^s (importance-resampled);
3. pathwise differences with shared noise: DDPM-form vs DDIM-form (eta = 1) guidance, and x_t vs
   mean evaluation, vs steps.

    python benchmarks/guidance_toy.py            # n = 1000, up to 1000 steps: ~10 min on 2 busy cores
    python benchmarks/guidance_toy.py --n 600 --max-steps 250   # quick look, ~3 min
"""

import argparse
import time

import torch

from gcg.diffusion import GaussianDiffusion
from gcg.guidance import class_purity, classifier_cond_fn, tilted_conditional_resample
from gcg.metrics import energy_distance, precision_recall
from gcg.schedules import get_named_beta_schedule
from gcg.toy import GaussianMixture


def per_class(fn, x, y, ref, ref_y, num_classes):
    return sum(fn(x[y == k], ref[ref_y == k]) for k in range(num_classes)) / num_classes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="samples per run (balanced over classes)")
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    toy = GaussianMixture.ring(num_classes=3, radius=1.0, std=0.6)
    K, std = toy.num_classes, 0.6
    base = GaussianDiffusion(get_named_beta_schedule("linear", 1000))
    eps_exact = toy.eps_model(base)

    def unconditional(x, t, y=None):  # y arrives in model_kwargs for cond_fn; the model ignores it
        return eps_exact(x, t)

    y = torch.arange(args.n) % K
    gen = torch.Generator().manual_seed(args.seed + 1)
    ref = toy.means[y] + std * torch.randn(args.n, 2, generator=gen, dtype=torch.float64)
    ref2 = toy.means[y] + std * torch.randn(args.n, 2, generator=gen, dtype=torch.float64)
    exact_purity = class_purity(toy.posterior_logits(ref, 1.0), y)[1]
    floor = per_class(energy_distance, ref2, y, ref, y, K)
    print(f"toy: 3-class ring, radius 1, std {std}; linear schedule T=1000; n={args.n}; "
          f"exact purity E p(y|x) = {exact_purity:.4f}; energy-distance floor (two exact sets) {floor:+.5f}")

    def run(diffusion, loop, model, cond_fn=None, **kw):
        noise = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64)
        return getattr(diffusion, loop)(
            model, (args.n, 2), noise=noise, clip_denoised=False, cond_fn=cond_fn, model_kwargs={"y": y},
            generator=torch.Generator().manual_seed(args.seed + 2), **kw,
        )

    def score(x):
        return class_purity(toy.posterior_logits(x, 1.0), y)[1], per_class(energy_distance, x, y, ref, y, K)

    steps_list = [s for s in (10, 25, 50, 100, 250, 1000) if s <= args.max_steps]
    cond_fn = classifier_cond_fn(toy.classifier(base), 1.0)
    print("\nTable 1: s = 1, purity / energy distance to exact p(x|y) vs steps")
    header = ["steps", "DDPM g@x_t,t", "DDPM g@mu,t-1", "DDIM eps-hat", "cond. model", "sec"]
    print(" | ".join(f"{h:>16}" for h in header))
    for steps in steps_list:
        start = time.perf_counter()
        chain = base.respace(str(steps))
        results = [
            run(chain, "p_sample_loop", unconditional, cond_fn, cond_at="x_t"),
            run(chain, "p_sample_loop", unconditional, cond_fn, cond_at="mean"),
            run(base.respace(f"ddim{steps}"), "ddim_sample_loop", unconditional, cond_fn),
            run(chain, "p_sample_loop", eps_exact),
        ]
        cells = [f"{p:.3f} / {d:.4f}" for p, d in map(score, results)]
        print(" | ".join([f"{steps:>16}"] + [f"{c:>16}" for c in cells] + [f"{time.perf_counter() - start:>16.1f}"]),
              flush=True)

    def spread_offset(x):
        cov = [torch.cov(x[y == k].T).trace().item() for k in range(K)]
        off = [(x[y == k].mean(0) - toy.means[k]).norm().item() for k in range(K)]
        return sum(cov) / K, sum(off) / K

    steps = min(250, args.max_steps)
    chain = base.respace(str(steps))
    print(f"\nTable 2: guidance scale sweep, DDPM g@x_t, {steps} steps (precision/recall: k=3 NN vs exact p(x|y))")
    print("spread = mean per-class trace of the sample covariance; offset = mean per-class |sample mean - mu_y|")
    print(" | ".join(f"{h:>11}" for h in ["s", "purity", "spread", "offset", "precision", "recall", "ED to exact", "ED to tilt", "tilt ESS"]))
    pool = toy.means[y.repeat(20)] + std * torch.randn(20 * args.n, 2, generator=gen, dtype=torch.float64)
    pool_y = y.repeat(20)
    print(f"{'(exact)':>11} | {exact_purity:>11.3f} | {spread_offset(ref)[0]:>11.3f} | {spread_offset(ref)[1]:>11.3f}")
    for s in (0.0, 1.0, 2.0, 4.0, 10.0):
        x = run(chain, "p_sample_loop", unconditional, classifier_cond_fn(toy.classifier(base), s))
        purity, ed = score(x)
        spread, offset = spread_offset(x)
        pr = [precision_recall(ref[y == k], x[y == k], k=3) for k in range(K)]
        precision = sum(p.precision for p in pr) / K
        recall = sum(p.recall for p in pr) / K
        tilted, ess = [], []
        for k in range(K):
            members = pool[pool_y == k]
            log_p_y = toy.posterior_logits(members, 1.0)[:, k]
            xt, e = tilted_conditional_resample(members, log_p_y, s, int((y == k).sum()), generator=gen)
            tilted.append(xt)
            ess.append(e)
        ed_tilt = per_class(energy_distance, x, y, torch.cat(tilted), torch.cat([torch.full((len(t),), k) for k, t in enumerate(tilted)]), K)
        cells = [f"{s:>11.1f}", f"{purity:>11.3f}", f"{spread:>11.3f}", f"{offset:>11.3f}", f"{precision:>11.3f}",
                 f"{recall:>11.3f}", f"{ed:>11.4f}", f"{ed_tilt:>11.4f}", f"{min(ess):>11.0f}"]
        print(" | ".join(cells), flush=True)

    print("\nTable 3: pathwise RMS difference with shared noise, s = 1")
    print(" | ".join(f"{h:>22}" for h in ["steps", "DDPM vs DDIM(eta=1)", "g@x_t,t vs g@mu,t-1"]))
    for steps in steps_list:
        chain = base.respace(str(steps))
        x_ddpm = run(chain, "p_sample_loop", unconditional, cond_fn, cond_at="x_t")
        x_ddim = run(chain, "ddim_sample_loop", unconditional, cond_fn, eta=1.0)
        x_mean = run(chain, "p_sample_loop", unconditional, cond_fn, cond_at="mean")
        rms = [((x_ddpm - other) ** 2).sum(1).mean().sqrt().item() for other in (x_ddim, x_mean)]
        print(" | ".join([f"{steps:>22}"] + [f"{r:>22.5f}" for r in rms]), flush=True)


if __name__ == "__main__":
    main()
