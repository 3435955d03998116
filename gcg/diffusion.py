"""Gaussian diffusion: DDPM, improved DDPM and DDIM in one class (chapters 01-04).

Method names follow the ADM reference code (``gaussian_diffusion.py`` of Dhariwal & Nichol
2021) so the two can be read side by side. Notation: ``t`` is a chain index in
[0, num_timesteps); index t is the paper's step t + 1, so ``alphas_cumprod[t]`` is the paper's
alpha_bar_{t+1}. Schedules are float64 CPU tensors, cast to the input's dtype and device at use.

A *model* is any callable ``model(x, t, **model_kwargs)``; ``x`` is [N, C, *spatial] (images) or
[N, D] (toy data; the "channel" axis is then D), and ``t`` holds ORIGINAL timesteps: on a
respaced chain the class maps chain indices through ``timestep_map`` before calling the model
or a guidance ``cond_fn``. The model returns [N, C, ...] or, for learned variance,
[N, 2C, ...] (mean output first, variance values second).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from tqdm.auto import tqdm

from .losses import (
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)
from .schedules import get_named_beta_schedule, space_timesteps

MODEL_MEAN_TYPES = ("epsilon", "start_x", "v")
MODEL_VAR_TYPES = ("fixed_small", "fixed_large", "learned_range", "learned")
LOSS_TYPES = ("mse", "rescaled_mse", "kl", "rescaled_kl")
DECODERS = ("discretized", "gaussian")
COND_AT = ("x_t", "mean")
SAMPLERS = ("ddpm", "ddim")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; choose one of {', '.join(choices)}")
    return value


def _extract(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr[t] (float64 schedule, [T]) cast to like's dtype/device, shaped [N, 1, ...] to broadcast."""
    out = arr.to(t.device)[t].to(dtype=like.dtype, device=like.device)
    return out.reshape(out.shape + (1,) * (like.ndim - out.ndim))


class GaussianDiffusion:
    """The forward process q, the learned reverse process p_theta, their losses and samplers.

    Args:
        betas: the ORIGINAL schedule beta_1..beta_T, shape [T] (any array-like; kept as float64).
        model_mean_type: what the model's first C channels predict: ``"epsilon"`` (Ho et al. 2020
            Eq. (11)), ``"start_x"`` (x_0), or ``"v"`` = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0
            (Salimans & Ho 2022).
        model_var_type: ``"fixed_small"`` (beta_tilde_t), ``"fixed_large"`` (beta_t, beta_tilde at
            the first step), ``"learned_range"`` (Nichol & Dhariwal 2021 Eq. (15)),
            ``"learned"`` (the model outputs log sigma^2 directly).
        loss_type: ``"mse"`` (L_simple, Ho et al. Eq. (14)), ``"rescaled_mse"`` (L_hybrid =
            L_simple + lambda L_vlb with lambda = 1/1000 as T / 1000 times the per-step term,
            Nichol & Dhariwal Eq. (16)), ``"kl"`` (the per-step L_vlb term), ``"rescaled_kl"``
            (L_vlb scaled by T, i.e. an unbiased estimate of the whole bound).
        timestep_respacing: None, or a ``space_timesteps`` spec ("250", "ddim25", "10,10,10").
            The object then IS the shortened chain: betas rebuilt from alpha_bar at the kept steps,
            beta_i = 1 - alpha_bar_{k_i} / alpha_bar_{k_{i-1}}, so every posterior quantity stays
            exact (Nichol & Dhariwal 2021 Sec. 4).
        decoder: the L_0 term of the bound: ``"discretized"`` (8-bit images, Ho et al. Eq. (13)) or
            ``"gaussian"`` (continuous density, for real-valued toy data).
    """

    def __init__(
        self,
        betas,
        model_mean_type: str = "epsilon",
        model_var_type: str = "fixed_small",
        loss_type: str = "mse",
        timestep_respacing=None,
        decoder: str = "discretized",
    ):
        self.model_mean_type = _check_choice("model_mean_type", model_mean_type, MODEL_MEAN_TYPES)
        self.model_var_type = _check_choice("model_var_type", model_var_type, MODEL_VAR_TYPES)
        self.loss_type = _check_choice("loss_type", loss_type, LOSS_TYPES)
        self.decoder = _check_choice("decoder", decoder, DECODERS)
        self.timestep_respacing = timestep_respacing

        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("every beta must lie in (0, 1]; check the schedule")
        self.original_betas = betas
        self.original_num_timesteps = int(betas.numel())

        if timestep_respacing not in (None, ""):
            kept = space_timesteps(self.original_num_timesteps, timestep_respacing)
            original_ac = torch.cumprod(1.0 - betas, dim=0)
            kept_ac = original_ac[kept]
            prev_ac = torch.cat([torch.ones(1, dtype=torch.float64), kept_ac[:-1]])
            betas = 1.0 - kept_ac / prev_ac
            self.timestep_map = torch.tensor(kept, dtype=torch.long)
        else:
            self.timestep_map = torch.arange(self.original_num_timesteps, dtype=torch.long)

        self.betas = betas
        self.num_timesteps = int(betas.numel())
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        one = torch.ones(1, dtype=torch.float64)
        self.alphas_cumprod_prev = torch.cat([one, self.alphas_cumprod[:-1]])
        self.alphas_cumprod_next = torch.cat([self.alphas_cumprod[1:], 0.0 * one])

        # q(x_t | x_0), Ho et al. 2020 Eq. (4)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()

        # q(x_{t-1} | x_t, x_0), Ho et al. 2020 Eqs. (6)-(7)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta_tilde is 0 at the first step; clip its log to beta_tilde of the second step
        first = self.posterior_variance[1:2] if self.num_timesteps > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first, self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)

    # ------------------------------------------------------------------ bookkeeping
    def __repr__(self):
        return (
            f"GaussianDiffusion(num_timesteps={self.num_timesteps}, "
            f"original_num_timesteps={self.original_num_timesteps}, "
            f"model_mean_type={self.model_mean_type!r}, model_var_type={self.model_var_type!r}, "
            f"loss_type={self.loss_type!r}, timestep_respacing={self.timestep_respacing!r})"
        )

    @property
    def learns_variance(self) -> bool:
        """True when the model must output 2C channels (mean output + variance values)."""
        return self.model_var_type in ("learned", "learned_range")

    def respace(self, timestep_respacing) -> "GaussianDiffusion":
        """A new diffusion over the same ORIGINAL betas, shortened by ``timestep_respacing``."""
        return GaussianDiffusion(
            self.original_betas,
            model_mean_type=self.model_mean_type,
            model_var_type=self.model_var_type,
            loss_type=self.loss_type,
            timestep_respacing=timestep_respacing,
            decoder=self.decoder,
        )

    def original_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Chain indices [N] -> the original timesteps [N] the model and cond_fn are given."""
        return self.timestep_map.to(t.device)[t]

    def _model_output(self, model, x, t, model_kwargs):
        if not torch.is_tensor(t) or t.ndim != 1 or t.shape[0] != x.shape[0]:
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"t must be a 1-D tensor with one timestep per example ({x.shape[0]}), got {shape}")
        return model(x, self.original_timesteps(t), **(model_kwargs or {}))

    def _check_t(self, t: torch.Tensor):
        if t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"t must hold integer chain indices (int64), got {t.dtype}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(
                f"t must lie in [0, {self.num_timesteps}) (chain indices of this diffusion), "
                f"got values in [{int(t.min())}, {int(t.max())}]"
            )

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x_start, t):
        """q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), Ho et al. Eq. (4).

        Returns (mean [N, ...], variance [N, 1...], log_variance [N, 1...])."""
        self._check_t(t)
        mean = _extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
        variance = _extract(1.0 - self.alphas_cumprod, t, x_start)
        log_variance = _extract(self.log_one_minus_alphas_cumprod, t, x_start)
        return mean, variance, log_variance

    def q_sample(self, x_start, t, noise=None):
        """Sample x_t ~ q(x_t | x_0) = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps,
        Ho et al. Eq. (4). x_start [N, ...], t [N] chain indices, noise like x_start."""
        self._check_t(t)
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x_start shape {tuple(x_start.shape)}")
        return (
            _extract(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde I), Ho et al. Eqs. (6)-(7).

        Returns (mean [N, ...], variance [N, 1...], log_variance_clipped [N, 1...])."""
        if x_start.shape != x_t.shape:
            raise ValueError(f"x_start {tuple(x_start.shape)} and x_t {tuple(x_t.shape)} differ in shape")
        mean = (
            _extract(self.posterior_mean_coef1, t, x_t) * x_start
            + _extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = _extract(self.posterior_variance, t, x_t)
        log_variance_clipped = _extract(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance_clipped

    # ------------------------------------------------------------------ parameterisations
    def _predict_xstart_from_eps(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar), Ho et al. Eq. (4) inverted."""
        return (
            _extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        """eps = (x_t / sqrt(alpha_bar) - x_0) / sqrt(1 / alpha_bar - 1)."""
        return (
            _extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_xstart
        ) / _extract(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def _predict_xstart_from_v(self, x_t, t, v):
        """x_0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v, for v = sqrt(ab) eps - sqrt(1-ab) x_0."""
        return (
            _extract(self.sqrt_alphas_cumprod, t, x_t) * x_t
            - _extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v
        )

    def _predict_v_from_eps(self, x_t, t, eps):
        """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0, with x_0 from (x_t, eps)."""
        x_start = self._predict_xstart_from_eps(x_t, t, eps)
        return self.get_v(x_start, eps, t)

    def get_v(self, x_start, noise, t):
        """The v-prediction target sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans & Ho 2022)."""
        return (
            _extract(self.sqrt_alphas_cumprod, t, x_start) * noise
            - _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start
        )

    # ------------------------------------------------------------------ reverse process
    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None):
        """p_theta(x_{t-1} | x_t) = N(mu_theta, Sigma_theta), Ho et al. Eq. (1)/(11), with the variance
        of Nichol & Dhariwal Eq. (15) for ``learned_range``.

        x [N, C, ...], t [N] chain indices. ``denoised_fn`` maps pred_xstart before clipping to
        [-1, 1] (``clip_denoised``; pass False for unbounded data such as the toys).
        Returns dict(mean, variance, log_variance, pred_xstart), each shaped like x
        (variance/log_variance broadcastable to it)."""
        self._check_t(t)
        model_output = self._model_output(model, x, t, model_kwargs)
        C = x.shape[1]
        expected = 2 * C if self.learns_variance else C
        if model_output.ndim != x.ndim or model_output.shape[1] != expected or model_output.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"model output has shape {tuple(model_output.shape)} but model_var_type="
                f"{self.model_var_type!r} needs {(x.shape[0], expected) + tuple(x.shape[2:])}; "
                "a learned variance needs out_channels = 2 * in_channels (learn_sigma=True)"
            )

        if self.learns_variance:
            model_output, var_values = torch.split(model_output, C, dim=1)
            if self.model_var_type == "learned":
                model_log_variance = var_values
            else:  # Nichol & Dhariwal Eq. (15): interpolate log beta_tilde and log beta
                min_log = _extract(self.posterior_log_variance_clipped, t, x)
                max_log = _extract(torch.log(self.betas), t, x)
                frac = (var_values + 1) / 2
                model_log_variance = frac * max_log + (1 - frac) * min_log
            model_variance = torch.exp(model_log_variance)
        elif self.model_var_type == "fixed_large":
            # beta_t, with beta_tilde of the second step at the first (better decoder likelihood)
            variance = torch.cat([self.posterior_variance[1:2], self.betas[1:]]) if self.num_timesteps > 1 else self.betas
            model_variance = _extract(variance, t, x).expand_as(x)
            model_log_variance = _extract(torch.log(variance), t, x).expand_as(x)
        else:
            model_variance = _extract(self.posterior_variance, t, x).expand_as(x)
            model_log_variance = _extract(self.posterior_log_variance_clipped, t, x).expand_as(x)

        def process_xstart(x0):
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == "start_x":
            pred_xstart = process_xstart(model_output)
        elif self.model_mean_type == "v":
            pred_xstart = process_xstart(self._predict_xstart_from_v(x, t, model_output))
        else:
            pred_xstart = process_xstart(self._predict_xstart_from_eps(x, t, model_output))
        model_mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {
            "mean": model_mean,
            "variance": model_variance,
            "log_variance": model_log_variance,
            "pred_xstart": pred_xstart,
        }

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None, cond_at="x_t"):
        """Classifier guidance on the mean: mu + Sigma * grad log p(y | x), Dhariwal & Nichol 2021
        Algorithm 1 (``cond_fn`` returns s * grad_x log p_phi(y | x, t)).

        ``cond_at="x_t"`` evaluates the gradient at x_t and noise level t (the reference code).
        ``"mean"`` follows the derivation: log p(y | x_{t-1}) is expanded around mu, so the gradient
        is taken at mu and at the noise level of x_{t-1}, i.e. the classifier sees timestep t - 1
        (at the last step, where x_{t-1} is the clean sample, the lowest level, timestep 0).
        ``cond_fn`` receives ORIGINAL timesteps. Returns the new mean, shaped like x."""
        _check_choice("cond_at", cond_at, COND_AT)
        if cond_at == "x_t":
            point, level = x, t
        else:
            point, level = p_mean_var["mean"].detach(), (t - 1).clamp(min=0)
        gradient = cond_fn(point, self.original_timesteps(level), **(model_kwargs or {}))
        if gradient.shape != x.shape:
            raise ValueError(f"cond_fn returned shape {tuple(gradient.shape)}; it must match x {tuple(x.shape)}")
        return p_mean_var["mean"] + p_mean_var["variance"] * gradient.to(p_mean_var["mean"].dtype)

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """Classifier guidance on the score, Dhariwal & Nichol 2021 Algorithm 2 / Eq. (14):
        eps_hat = eps - sqrt(1 - alpha_bar) grad log p(y | x_t), then x_0 and mu recomputed from it.
        The gradient is taken at x_t. Returns a new p_mean_var dict."""
        alpha_bar = _extract(self.alphas_cumprod, t, x)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        gradient = cond_fn(x, self.original_timesteps(t), **(model_kwargs or {}))
        if gradient.shape != x.shape:
            raise ValueError(f"cond_fn returned shape {tuple(gradient.shape)}; it must match x {tuple(x.shape)}")
        eps = eps - (1 - alpha_bar).sqrt() * gradient
        out = dict(p_mean_var)
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x, t)
        return out

    # ------------------------------------------------------------------ ancestral (DDPM) sampling
    def p_sample(
        self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
        cond_at="x_t", generator=None,
    ):
        """One ancestral step x_{t-1} = mu_theta + sigma_t z, Ho et al. 2020 Algorithm 2 (no noise
        at t = 0). Returns dict(sample, pred_xstart), each shaped like x."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        noise = _randn_like(x, generator)
        mean = out["mean"]
        if cond_fn is not None:
            mean = self.condition_mean(cond_fn, out, x, t, model_kwargs=model_kwargs, cond_at=cond_at)
        sample = mean + _nonzero_mask(t, x) * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                      cond_fn=None, model_kwargs=None, device=None, progress=False,
                      generator=None, cond_at="x_t"):
        """Ancestral sampling from x_T ~ N(0, I) down to x_0, Ho et al. 2020 Algorithm 2.

        shape: (N, C, ...); noise: optional x_T. Returns x_0 [N, C, ...]."""
        return _last(self.p_sample_loop_progressive(
            model, shape, noise=noise, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
            cond_fn=cond_fn, model_kwargs=model_kwargs, device=device, progress=progress,
            generator=generator, cond_at=cond_at,
        ))

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True,
                                  denoised_fn=None, cond_fn=None, model_kwargs=None, device=None,
                                  progress=False, generator=None, cond_at="x_t"):
        """Generator over the ancestral steps: yields dict(sample, pred_xstart, t) with t the
        chain index just sampled from (T-1 down to 0)."""
        _check_choice("cond_at", cond_at, COND_AT)
        x = self._initial_noise(model, shape, noise, device, generator)

        def step(x, t):
            return self.p_sample(model, x, t, clip_denoised, denoised_fn, cond_fn, model_kwargs,
                                 cond_at=cond_at, generator=generator)
        yield from _run_chain(step, x, range(self.num_timesteps - 1, -1, -1), progress, "DDPM")

    def sample_loop(self, model, shape, sampler: str = "ddpm", eta: float = 0.0, cond_at: str = "x_t",
                    progressive: bool = False, **kwargs):
        """One entry point for both samplers: ``sampler="ddpm"`` runs `p_sample_loop` (guidance on
        the mean, at ``cond_at``), ``"ddim"`` runs `ddim_sample_loop` (guidance on the score, with
        ``eta``). ``progressive=True`` returns the step generator instead of x_0. Other keyword
        arguments (noise, clip_denoised, denoised_fn, cond_fn, model_kwargs, device, progress,
        generator) are passed on unchanged."""
        _check_choice("sampler", sampler, SAMPLERS)
        if sampler == "ddim":
            if cond_at != "x_t":
                raise ValueError(
                    f"cond_at={cond_at!r} applies to the ancestral sampler only: DDIM guides the score "
                    "at x_t (Dhariwal & Nichol 2021 Algorithm 2); use sampler='ddpm' or cond_at='x_t'"
                )
            loop = self.ddim_sample_loop_progressive if progressive else self.ddim_sample_loop
            return loop(model, shape, eta=eta, **kwargs)
        if eta != 0.0:
            raise ValueError(f"eta={eta} applies to DDIM only; the ancestral sampler has no eta (use sampler='ddim')")
        loop = self.p_sample_loop_progressive if progressive else self.p_sample_loop
        return loop(model, shape, cond_at=cond_at, **kwargs)

    # ------------------------------------------------------------------ DDIM
    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None,
                    model_kwargs=None, eta=0.0, generator=None):
        """One DDIM step, Song et al. 2020 Eq. (12) with sigma_t(eta) from Eq. (16):

        x_{t-1} = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - sigma^2) eps_hat + sigma z,
        sigma^2 = eta^2 (1 - ab_prev)/(1 - ab) (1 - ab/ab_prev). eta = 1 gives beta_tilde (DDPM).
        Guidance uses ``condition_score`` (gradient at x_t). Returns dict(sample, pred_xstart)."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs=model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = _extract(self.alphas_cumprod, t, x)
        alpha_bar_prev = _extract(self.alphas_cumprod_prev, t, x)
        sigma = (
            eta * ((1 - alpha_bar_prev) / (1 - alpha_bar)).sqrt() * (1 - alpha_bar / alpha_bar_prev).sqrt()
        )
        mean_pred = (
            out["pred_xstart"] * alpha_bar_prev.sqrt()
            + (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * eps
        )
        sample = mean_pred + _nonzero_mask(t, x) * sigma * _randn_like(x, generator)
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None,
                            model_kwargs=None, eta=0.0):
        """Deterministic DDIM inversion step x_t -> x_{t+1} (Song et al. 2020 Sec. 4.3, the ODE run
        forward): x_{t+1} = sqrt(ab_next) x0_hat + sqrt(1 - ab_next) eps_hat.
        Returns dict(sample, pred_xstart)."""
        if eta != 0.0:
            raise ValueError("ddim_reverse_sample is the deterministic ODE: it needs eta=0.0")
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar_next = _extract(self.alphas_cumprod_next, t, x)
        sample = out["pred_xstart"] * alpha_bar_next.sqrt() + (1 - alpha_bar_next).sqrt() * eps
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                         cond_fn=None, model_kwargs=None, device=None, progress=False, eta=0.0,
                         generator=None):
        """DDIM sampling from x_T to x_0 over this chain's steps (respace for fewer steps).
        Returns x_0 [N, C, ...]."""
        return _last(self.ddim_sample_loop_progressive(
            model, shape, noise=noise, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
            cond_fn=cond_fn, model_kwargs=model_kwargs, device=device, progress=progress, eta=eta,
            generator=generator,
        ))

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True,
                                     denoised_fn=None, cond_fn=None, model_kwargs=None,
                                     device=None, progress=False, eta=0.0, generator=None):
        """Generator over DDIM steps: yields dict(sample, pred_xstart, t), t from T-1 down to 0."""
        x = self._initial_noise(model, shape, noise, device, generator)

        def step(x, t):
            return self.ddim_sample(model, x, t, clip_denoised, denoised_fn, cond_fn, model_kwargs,
                                    eta=eta, generator=generator)
        yield from _run_chain(step, x, range(self.num_timesteps - 1, -1, -1), progress, "DDIM")

    def ddim_reverse_sample_loop(self, model, x_start, clip_denoised=True, denoised_fn=None,
                                 model_kwargs=None, progress=False):
        """DDIM inversion: run the deterministic ODE from x_0 up to x_T. Returns x_T like x_start."""
        return _last(self.ddim_reverse_sample_loop_progressive(
            model, x_start, clip_denoised, denoised_fn, model_kwargs, progress
        ))

    def ddim_reverse_sample_loop_progressive(self, model, x_start, clip_denoised=True,
                                             denoised_fn=None, model_kwargs=None, progress=False):
        """Generator over inversion steps: yields dict(sample, pred_xstart, t), the sample being
        x_{t+1} computed at chain index t = 0 .. T-1."""
        def step(x, t):
            return self.ddim_reverse_sample(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        yield from _run_chain(step, x_start, range(self.num_timesteps), progress, "DDIM inversion")

    def _initial_noise(self, model, shape, noise, device, generator):
        if noise is not None:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise has shape {tuple(noise.shape)} but shape={tuple(shape)}")
            return noise
        if device is None:
            params = getattr(model, "parameters", None)
            first = next(iter(params()), None) if callable(params) else None
            device = first.device if first is not None else (generator.device if generator is not None else "cpu")
        return _randn(tuple(shape), torch.device(device), torch.float32, generator)

    # ------------------------------------------------------------------ variational bound
    def _decoder_nll(self, x_start, mean, log_variance, decoder):
        if decoder == "discretized":
            log_likelihood = discretized_gaussian_log_likelihood(
                x_start, means=mean, log_scales=0.5 * log_variance
            )
        else:
            log_likelihood = gaussian_log_likelihood(x_start, means=mean, log_scales=0.5 * log_variance)
        return -log_likelihood

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None, decoder=None):
        """One term of the bound in bits per dimension, Ho et al. 2020 Eq. (5):
        L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) for t > 0, and the decoder
        L_0 = -log p_theta(x_0 | x_1) at t = 0. Returns dict(output [N], pred_xstart)."""
        decoder = _check_choice("decoder", decoder or self.decoder, DECODERS)
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
        kl = mean_flat(kl) / math.log(2.0)
        nll = mean_flat(self._decoder_nll(x_start, out["mean"], out["log_variance"], decoder)) / math.log(2.0)
        return {"output": torch.where(t == 0, nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        """Per-example training losses for chain indices t [N] (sampled by a ``gcg.resample`` sampler).

        Returns dict with "loss" [N] and, as applicable, "mse" [N] (L_simple, Ho et al. Eq. (14),
        against eps, x_0 or v per model_mean_type) and "vb" [N] (the L_vlb term in bits/dim). For
        ``rescaled_mse`` (L_hybrid, Nichol & Dhariwal Eq. (16)) the vb term sees the mean output
        DETACHED, so it trains only the variance channels, and is scaled by T / 1000."""
        self._check_t(t)
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms = {}
        if self.loss_type in ("kl", "rescaled_kl"):
            terms["loss"] = self._vb_terms_bpd(
                model, x_start, x_t, t, clip_denoised=False, model_kwargs=model_kwargs
            )["output"]
            if self.loss_type == "rescaled_kl":
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms

        model_output = self._model_output(model, x_t, t, model_kwargs)
        C = x_t.shape[1]
        if self.learns_variance:
            if model_output.shape[1] != 2 * C:
                raise ValueError(
                    f"model output has {model_output.shape[1]} channels; model_var_type="
                    f"{self.model_var_type!r} needs 2 * {C} (set learn_sigma=True)"
                )
            mean_output, var_values = torch.split(model_output, C, dim=1)
            frozen_out = torch.cat([mean_output.detach(), var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(
                lambda *args, **kwargs: frozen_out, x_start, x_t, t, clip_denoised=False
            )["output"]
            if self.loss_type == "rescaled_mse":
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        else:
            mean_output = model_output
        target = {
            "epsilon": noise,
            "start_x": x_start,
            "v": self.get_v(x_start, noise, t) if self.model_mean_type == "v" else None,
        }[self.model_mean_type]
        if mean_output.shape != target.shape:
            raise ValueError(
                f"model output has shape {tuple(model_output.shape)}; expected {tuple(target.shape)}"
                + (" (learned variance doubles the channels)" if self.learns_variance else "")
            )
        terms["mse"] = mean_flat((target - mean_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _prior_bpd(self, x_start):
        """KL(q(x_T | x_0) || N(0, I)) in bits/dim, [N]: the L_T term (no parameters)."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        mean, _, log_variance = self.q_mean_variance(x_start, t)
        kl = normal_kl(mean, log_variance, torch.zeros_like(mean), torch.zeros_like(log_variance))
        return mean_flat(kl) / math.log(2.0)

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None, progress=False,
                      decoder=None, generator=None):
        """The whole variational bound of x_start in bits per dimension (Ho et al. Eq. (5)), with
        one q-sample per term.

        decoder: None (this diffusion's), "discretized" (8-bit images) or "gaussian" (continuous
        data: L_0 = -log N(x_0; mu, sigma^2) is then a density, and total_bpd estimates the
        differential NLL / (D ln 2), comparable to an analytic log-density).
        Returns dict(total_bpd [N], prior_bpd [N], vb [N, T], xstart_mse [N, T], mse [N, T]);
        column t of vb/xstart_mse/mse is chain index t (ascending, unlike ADM's descending order)."""
        n, T = x_start.shape[0], self.num_timesteps
        vb = torch.zeros(n, T, device=x_start.device, dtype=x_start.dtype)
        xstart_mse, mse = torch.zeros_like(vb), torch.zeros_like(vb)
        for i in tqdm(range(T - 1, -1, -1), disable=not progress, desc="bits/dim"):
            t = torch.full((n,), i, device=x_start.device, dtype=torch.long)
            noise = _randn_like(x_start, generator)
            x_t = self.q_sample(x_start, t, noise=noise)
            with torch.no_grad():
                out = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=clip_denoised,
                                         model_kwargs=model_kwargs, decoder=decoder)
            vb[:, i] = out["output"]
            xstart_mse[:, i] = mean_flat((out["pred_xstart"] - x_start) ** 2)
            eps = self._predict_eps_from_xstart(x_t, t, out["pred_xstart"])
            mse[:, i] = mean_flat((eps - noise) ** 2)
        prior_bpd = self._prior_bpd(x_start)
        return {
            "total_bpd": vb.sum(dim=1) + prior_bpd,
            "prior_bpd": prior_bpd,
            "vb": vb,
            "xstart_mse": xstart_mse,
            "mse": mse,
        }


def reverse_sde_euler_maruyama(score_fn, betas, x_T: torch.Tensor, generator=None,
                               progress: bool = False) -> torch.Tensor:
    """Sample by Euler-Maruyama steps of the reverse variance-preserving SDE (Song et al. 2021).

    x_{t-1} = x_t + beta_t (x_t / 2 + s(x_t, t)) + sqrt(beta_t) z, t = T-1 .. 0, no noise at the
    last step: DDPM's ancestral step with sigma_t^2 = beta_t to first order in beta_t
    (Eq. (ch03-sde-ancestral) of the book).

    :param score_fn: s(x, t) -> grad_x log q(x_t) [N, ...], t an int step index.
    :param betas: the schedule beta_t, shape [T].
    :param x_T: the starting noise [N, ...].
    :return: x_0 [N, ...].
    """
    betas = torch.as_tensor(betas, dtype=torch.float64)
    x = x_T
    for i in tqdm(range(len(betas) - 1, -1, -1), disable=not progress):
        beta = betas[i].to(x.dtype)
        x = x + beta * (0.5 * x + score_fn(x, i))
        if i > 0:
            x = x + beta.sqrt() * _randn_like(x, generator)
    return x


def _run_chain(step, x, indices, progress: bool, desc: str):
    """The one sampling loop: x <- step(x, t)["sample"] for each chain index in `indices`, without
    autograd (guidance re-enables it inside cond_fn). Yields dict(sample, pred_xstart, t)."""
    for i in tqdm(indices, disable=not progress, desc=desc):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        with torch.no_grad():
            out = step(x, t)
        x = out["sample"]
        yield {"sample": x, "pred_xstart": out["pred_xstart"], "t": t}


def _last(steps) -> torch.Tensor:
    """Runs a step generator to the end and returns the final sample."""
    final = None
    for final in steps:
        pass
    return final["sample"]


def _randn(shape, device, dtype, generator=None):
    """Standard normal noise, drawn from ``generator`` (on its own device) when one is given."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _randn_like(x, generator=None):
    return _randn(x.shape, x.device, x.dtype, generator)


def _nonzero_mask(t, x):
    """1 where t > 0 and 0 at the last step t = 0 (no noise is added there), shaped [N, 1, ...]."""
    mask = (t != 0).to(x.dtype)
    return mask.reshape(mask.shape + (1,) * (x.ndim - 1))


@dataclass
class DiffusionConfig:
    """The diffusion hyper-parameters a checkpoint stores; ``build()`` makes the GaussianDiffusion."""

    noise_schedule: str = "linear"
    steps: int = 1000
    model_mean_type: str = "epsilon"
    model_var_type: str = "fixed_small"
    loss_type: str = "mse"
    decoder: str = "discretized"

    def build(self, timestep_respacing=None) -> GaussianDiffusion:
        """The GaussianDiffusion of this config, optionally respaced ("250", "ddim25", ...)."""
        return GaussianDiffusion(
            get_named_beta_schedule(self.noise_schedule, self.steps),
            model_mean_type=self.model_mean_type,
            model_var_type=self.model_var_type,
            loss_type=self.loss_type,
            timestep_respacing=timestep_respacing,
            decoder=self.decoder,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiffusionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DiffusionConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)
