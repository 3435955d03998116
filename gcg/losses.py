"""Gaussian KL divergence and decoder likelihoods used by the variational bound (chapter 02)."""

from __future__ import annotations

import math

import torch


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch: [N, ...] -> [N]."""
    return tensor.mean(dim=tuple(range(1, tensor.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats.

    KL = 1/2 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2)),
    the closed form behind every L_{t-1} term of Ho et al. 2020 Eq. (5). Arguments broadcast;
    at least one must be a tensor.
    """
    tensor = next((a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor)), None)
    if tensor is None:
        raise TypeError("normal_kl needs at least one torch.Tensor argument")
    logvar1, logvar2 = (
        a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=tensor.dtype, device=tensor.device)
        for a in (logvar1, logvar2)
    )
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """A fast approximation of the standard normal CDF (the tanh form used by ADM and DDPM),
    0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); max abs error ~3e-4."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log p(x) of 8-bit data under a Gaussian integrated over each pixel's bin (Ho et al. 2020
    Eq. (13)): the L_0 decoder term.

    x: [N, ...] data in [-1, 1] on the 256-level grid; means, log_scales (log std): broadcastable.
    Bins have width 2/255; the first and last bins extend to -inf and +inf, so the 256 bin
    probabilities sum to one. Returns log-probabilities in nats, shape of x.
    """
    if x.shape != means.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but means has {tuple(means.shape)}")
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta),
    )


def gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log N(x; means, exp(log_scales)^2), elementwise in nats: the continuous L_0 decoder for
    real-valued data (e.g. the analytic toys of ``gcg.toy``), where 8-bit bins do not apply."""
    return -0.5 * (
        math.log(2 * math.pi) + 2.0 * log_scales + (x - means) ** 2 * torch.exp(-2.0 * log_scales)
    )
