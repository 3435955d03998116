"""Analytic toys: data whose noisy marginals are known in closed form (chapters 01-04).

If x_0 ~ sum_k w_k N(mu_k, Sigma_k), then x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps has the mixture
density sum_k w_k N(sqrt(ab) mu_k, ab Sigma_k + (1 - ab) I) (ab = alpha_bar_t). So the exact score,
the exact epsilon-predictor eps*(x_t) = -sqrt(1 - ab) grad log q(x_t) (Ho et al. 2020 Eq. (11) at its
optimum), and the exact noisy classifier p(y | x_t) are all available: samplers and guidance can
be checked against ground truth. Data are [N, D] tensors; computations run in float64 and return
the input's dtype.

``python -m gcg.toy --out FILE.png`` samples the class-labelled 2-D mixture with DDPM and DDIM from
the exact model, plots samples next to the data and prints the mean/covariance errors.
"""

from __future__ import annotations

import sys
import math
import time

import torch


def _original_alphas_cumprod(alphas_cumprod) -> torch.Tensor:
    """alpha_bar over ORIGINAL timesteps (what models receive), from a tensor or a GaussianDiffusion."""
    if hasattr(alphas_cumprod, "original_betas"):  # a GaussianDiffusion, respaced or not
        return torch.cumprod(1.0 - alphas_cumprod.original_betas, dim=0)
    return torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()


class GaussianMixture:
    """A class-labelled mixture sum_k w_k N(mu_k, Sigma_k) in D dimensions; class y = component k.

    Args:
        means: [K, D] component means.
        std: scalar or [K]: isotropic components Sigma_k = std_k^2 I. Give ``std`` or ``cov``.
        cov: [D, D] (shared) or [K, D, D] covariances.
        weights: [K] mixture weights (normalised here); uniform by default.
    """

    def __init__(self, means, std=None, cov=None, weights=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ValueError(f"means must be [K, D], got shape {tuple(means.shape)}")
        K, D = means.shape
        if (std is None) == (cov is None):
            raise ValueError("give exactly one of std (scalar or [K]) and cov ([D, D] or [K, D, D])")
        eye = torch.eye(D, dtype=torch.float64)
        if std is not None:
            std = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
            if std.numel() not in (1, K) or bool((std <= 0).any()):
                raise ValueError(f"std must be a positive scalar or [K={K}] values, got {std.tolist()}")
            cov = (std.expand(K) ** 2)[:, None, None] * eye
        else:
            cov = torch.as_tensor(cov, dtype=torch.float64)
            if cov.shape == (D, D):
                cov = cov.expand(K, D, D).clone()
            if cov.shape != (K, D, D):
                raise ValueError(f"cov must be [D, D] or [K, D, D] = [{K}, {D}, {D}], got {tuple(cov.shape)}")
        self.means, self.covs = means, cov
        self._chol = torch.linalg.cholesky(cov)  # raises if a covariance is not positive definite
        weights = torch.ones(K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError(f"weights must be [K={K}] non-negative values with a positive sum")
        self.weights = weights / weights.sum()

    @classmethod
    def ring(cls, num_classes=6, radius=0.65, std=0.12, dim=2):
        """num_classes equal-weight isotropic components with means on a circle (dims 0, 1)."""
        angles = 2 * math.pi * torch.arange(num_classes, dtype=torch.float64) / num_classes
        means = torch.zeros(num_classes, dim, dtype=torch.float64)
        means[:, 0], means[:, 1] = radius * torch.cos(angles), radius * torch.sin(angles)
        return cls(means, std=std)

    @property
    def num_classes(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> torch.Tensor:
        """E[x_0], [D]."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """Cov[x_0] = sum_k w_k (Sigma_k + mu_k mu_k^T) - E[x] E[x]^T, [D, D]."""
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        m = self.mean()
        return second - torch.outer(m, m)

    def sample(self, n: int, generator=None, dtype=torch.float32):
        """n draws: (x [n, D] of ``dtype``, y [n] int64 component labels)."""
        y = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, 1, dtype=torch.float64, generator=generator)
        x = self.means[y] + (self._chol[y] @ z).squeeze(-1)
        return x.to(dtype), y

    # -------------------------------------------------------------- noisy marginals, in closed form
    def _noisy(self, x, alpha_bar):
        """The noisy components at alpha_bar (scalar or [n]) for float64 x [n, D]:
        diff = x_t - sqrt(ab) mu_k [n, K, D], precision @ diff [n, K, D] with precision
        (ab Sigma_k + (1 - ab) I)^{-1}, and log det of the covariance [n or 1, K]."""
        x = self._check_x(x).to(torch.float64)
        ab = torch.as_tensor(alpha_bar, dtype=torch.float64, device=x.device).reshape(-1)
        if ab.numel() not in (1, x.shape[0]):
            raise ValueError(f"alpha_bar must be a scalar or one value per example ({x.shape[0]}), got {ab.numel()}")
        if bool(((ab <= 0) | (ab > 1)).any()):
            raise ValueError("alpha_bar must lie in (0, 1]")
        if ab.numel() > 1 and bool((ab == ab[0]).all()):
            ab = ab[:1]  # one factorisation for the whole batch when t is shared
        eye = torch.eye(self.dim, dtype=torch.float64, device=x.device)
        cov_t = ab[:, None, None, None] * self.covs.to(x.device) + (1 - ab)[:, None, None, None] * eye
        chol = torch.linalg.cholesky(cov_t)
        precision = torch.cholesky_inverse(chol)
        log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        diff = x[:, None, :] - ab.sqrt()[:, None, None] * self.means.to(x.device)
        if precision.shape[0] == 1:  # shared alpha_bar: one [K, D, D] precision for the batch
            precision_diff = torch.einsum("nkd,kde->nke", diff, precision[0])
        else:
            precision_diff = torch.einsum("nkd,nkde->nke", diff, precision)
        return diff, precision_diff, log_det

    def _log_joint(self, diff, precision_diff, log_det):
        """log w_k + log N_k(x_t): [n, K]."""
        maha = (diff * precision_diff).sum(-1)
        log_normal = -0.5 * (maha + log_det + self.dim * math.log(2 * math.pi))
        return torch.log(self.weights.to(diff.device)) + log_normal

    def log_prob(self, x, alpha_bar=1.0) -> torch.Tensor:
        """log q(x_t) in nats, [n]; with the default alpha_bar = 1 the data density log p(x_0)."""
        return torch.logsumexp(self._log_joint(*self._noisy(x, alpha_bar)), dim=1).to(x.dtype)

    def nll(self, x) -> torch.Tensor:
        """-log p(x_0) in nats, [n]."""
        return -self.log_prob(x)

    def nll_bits_per_dim(self, x) -> torch.Tensor:
        """-log2 p(x_0) / D, [n]: comparable to ``calc_bpd_loop(..., decoder="gaussian")``."""
        return self.nll(x) / (self.dim * math.log(2.0))

    def posterior_logits(self, x_t, alpha_bar) -> torch.Tensor:
        """log p(y | x_t) [n, K] by Bayes' rule on the noisy components (normalised logits)."""
        log_joint = self._log_joint(*self._noisy(x_t, alpha_bar))
        return (log_joint - torch.logsumexp(log_joint, dim=1, keepdim=True)).to(x_t.dtype)

    def score(self, x_t, alpha_bar, y=None) -> torch.Tensor:
        """grad_x log q(x_t) [n, D] (y=None) or grad_x log q(x_t | y) for labels y [n].

        Component score: -(ab Sigma_k + (1 - ab) I)^{-1} (x_t - sqrt(ab) mu_k); the marginal score
        averages them with weights p(k | x_t). Entries y == num_classes mean "no label" (marginal),
        the null label of classifier-free guidance."""
        diff, precision_diff, log_det = self._noisy(x_t, alpha_bar)
        component_scores = -precision_diff  # [n, K, D]
        log_joint = self._log_joint(diff, precision_diff, log_det)
        posterior = torch.softmax(log_joint, dim=1)
        marginal = (posterior[..., None] * component_scores).sum(1)
        if y is None:
            return marginal.to(x_t.dtype)
        y = torch.as_tensor(y, device=x_t.device).long().reshape(-1)
        if y.shape[0] != x_t.shape[0] or bool(((y < 0) | (y > self.num_classes)).any()):
            raise ValueError(
                f"y must hold {x_t.shape[0]} labels in [0, {self.num_classes}] "
                f"({self.num_classes} = no label), got {y.tolist()[:8]}..."
            )
        conditional = component_scores[torch.arange(y.shape[0]), y.clamp(max=self.num_classes - 1)]
        return torch.where((y == self.num_classes)[:, None], marginal, conditional).to(x_t.dtype)

    def classifier_grad(self, x_t, alpha_bar, y) -> torch.Tensor:
        """grad_x log p(y | x_t) = score(x_t | y) - score(x_t), [n, D]: the exact classifier-guidance
        direction of Dhariwal & Nichol 2021 Eq. (10)."""
        return self.score(x_t, alpha_bar, y) - self.score(x_t, alpha_bar)

    # -------------------------------------------------------------- exact "models" for the samplers
    def eps_model(self, alphas_cumprod):
        """The exact epsilon-predictor model(x_t [n, D], t [n], y=None) -> eps [n, D].

        eps*(x_t, t) = -sqrt(1 - ab_t) grad log q(x_t) (class-conditional when y [n] is given).
        ``alphas_cumprod`` is over the ORIGINAL timesteps (the ones models receive); passing a
        GaussianDiffusion, respaced or not, does the right thing."""
        alphas_cumprod = _original_alphas_cumprod(alphas_cumprod)

        def model(x, t, y=None):
            ab = alphas_cumprod[t.detach().cpu()].to(x.device)
            return -(1 - ab).sqrt()[:, None].to(x.dtype) * self.score(x, ab, y)

        return model

    def classifier(self, alphas_cumprod):
        """The exact noisy classifier (x_t [n, D], t [n]) -> logits [n, K] = log p(y | x_t);
        differentiable in x_t, so autograd gives the guidance gradient."""
        alphas_cumprod = _original_alphas_cumprod(alphas_cumprod)

        def classifier(x, t):
            return self.posterior_logits(x, alphas_cumprod[t.detach().cpu()].to(x.device))

        return classifier

    def _check_x(self, x):
        if not torch.is_tensor(x) or x.ndim != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"toy data must be an [N, D={self.dim}] tensor, got {shape}")
        return x


class Gaussian(GaussianMixture):
    """A single Gaussian N(mean, cov): every noisy marginal is Gaussian, so the NLL is exact.

    Args: mean [D]; cov [D, D] (or ``std``, a scalar). ``sample`` returns x only (no labels)."""

    def __init__(self, mean, cov=None, std=None):
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
        super().__init__(mean, std=std, cov=cov)

    def sample(self, n: int, generator=None, dtype=torch.float32):
        """n draws, [n, D]."""
        return super().sample(n, generator=generator, dtype=dtype)[0]


def _moment_errors(x, toy):
    x = x.to(torch.float64)
    mean_err = float((x.mean(0) - toy.mean()).norm())
    cov_err = float((torch.cov(x.T) - toy.covariance()).norm())
    return mean_err, cov_err


def main(argv=None) -> int:
    """Sample the class-labelled 2-D mixture with DDPM and DDIM from the exact model; write a figure.
    User errors print one line and return 2 (`gcg.cli.run`)."""
    from gcg.cli import run

    return run("gcg.toy", _main, argv)


def _main(argv) -> int:
    from gcg.cli import ArgumentParser, UsageError, add_threads_argument, check_output_file, positive_int, set_threads

    from .diffusion import GaussianDiffusion
    from .schedules import get_named_beta_schedule

    parser = ArgumentParser(prog="python -m gcg.toy", description=main.__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="figure to write (e.g. demo_toy.png; folders are created)")
    parser.add_argument("--n", type=positive_int, default=2000, help="samples per sampler")
    parser.add_argument("--steps", type=positive_int, default=1000, help="DDPM steps T (linear schedule)")
    parser.add_argument("--ddim-steps", type=positive_int, default=50, help="DDIM steps (respaced chain)")
    parser.add_argument("--seed", type=int, default=0)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    if args.ddim_steps > args.steps:
        raise UsageError(f"--ddim-steps {args.ddim_steps} exceeds --steps {args.steps}: DDIM visits a subset "
                         "of the T steps; lower --ddim-steps or raise --steps")
    out = check_output_file(args.out, "--out")
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in formats:
        raise UsageError(f"--out {out}: matplotlib cannot write {out.suffix or 'a file without a suffix'}; "
                         f"end the name with one of {', '.join('.' + f for f in sorted(formats))}")
    try:
        diffusion = GaussianDiffusion(get_named_beta_schedule("linear", args.steps))
    except ValueError as exc:
        raise UsageError(f"--steps {args.steps}: {exc}") from None
    set_threads(args.threads)

    toy = GaussianMixture.ring()
    generator = torch.Generator().manual_seed(args.seed)
    data, data_y = toy.sample(args.n, generator=generator)
    model = toy.eps_model(diffusion)
    labels = toy.sample(args.n, generator=generator)[1]  # class labels drawn from the weights
    kwargs = dict(clip_denoised=False, model_kwargs={"y": labels}, generator=generator)

    runs = [("data", data, data_y, 0.0)]
    for name, chain, sampler in [
        (f"DDPM, {diffusion.num_timesteps} steps", diffusion, "ddpm"),
        (f"DDIM (eta=0), {args.ddim_steps} steps", diffusion.respace(f"ddim{args.ddim_steps}"), "ddim"),
    ]:
        start = time.perf_counter()
        x = chain.sample_loop(model, (args.n, toy.dim), sampler=sampler, **kwargs)
        runs.append((name, x, labels, time.perf_counter() - start))

    print(f"data: mean {toy.mean().numpy().round(3)}, covariance {toy.covariance().numpy().round(3).tolist()}")
    for name, x, y, seconds in runs[1:]:
        mean_err, cov_err = _moment_errors(x, toy)
        accuracy = float((toy.posterior_logits(x, 1.0).argmax(1) == y).double().mean())
        print(f"{name:>24}: |mean error| {mean_err:.4f}, |cov error|_F {cov_err:.4f}, "
              f"label agreement {accuracy:.3f}, {seconds:.1f} s")
    mean_err, cov_err = _moment_errors(runs[0][1], toy)
    print(f"{'data sample itself':>24}: |mean error| {mean_err:.4f}, |cov error|_F {cov_err:.4f} (Monte Carlo floor)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 4), sharex=True, sharey=True)
    for ax, (name, x, y, _) in zip(axes, runs):
        ax.scatter(x[:, 0], x[:, 1], c=y, cmap="tab10", s=3, vmin=0, vmax=9)
        ax.set_title(name)
        ax.set_aspect("equal")
    fig.suptitle("Class-conditional samples from the exact epsilon-model (colour = class y)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
