"""KL divergence and decoder likelihoods (gcg.losses)."""

import math

import torch
from torch.distributions import Normal, kl_divergence

from gcg.losses import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(2, 500, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(2, 500, generator=g, dtype=torch.float64)
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), expected, rtol=1e-10, atol=1e-12)
    # python floats broadcast against tensors; KL of a distribution with itself is 0
    assert normal_kl(m1, 0.0, m1, 0.0).abs().max() == 0


def test_approx_cdf_is_close_to_the_exact_normal_cdf():
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    err = (approx_standard_normal_cdf(x) - torch.special.ndtr(x)).abs().max()
    assert err < 3e-4


def test_discretized_likelihood_sums_to_one_over_the_256_bins():
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)[:, None]  # the 8-bit grid
    means = torch.tensor([[-1.0, -0.3, 0.0, 0.42, 0.99, 1.3]], dtype=torch.float64).expand(256, 6)
    for log_scale in (-6.0, -3.0, -1.0, 0.5):
        log_p = discretized_gaussian_log_likelihood(
            bins.expand(256, 6), means=means, log_scales=torch.full_like(means, log_scale)
        )
        total = log_p.exp().sum(0)
        torch.testing.assert_close(total, torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-6)


def test_discretized_likelihood_of_a_narrow_gaussian_is_one_bin():
    x = torch.tensor([[-1.0, 2 / 255 - 1, 0.0039215686, 1.0]], dtype=torch.float64)  # grid values
    log_p = discretized_gaussian_log_likelihood(x, means=x, log_scales=torch.full_like(x, -10.0))
    assert (log_p.exp() > 1 - 1e-6).all()
    # a wide Gaussian puts ~ bin width * density in a central bin
    wide = discretized_gaussian_log_likelihood(
        torch.zeros(1, 1, dtype=torch.float64), means=torch.zeros(1, 1, dtype=torch.float64),
        log_scales=torch.zeros(1, 1, dtype=torch.float64),
    )
    assert abs(wide.exp().item() - (2 / 255) / math.sqrt(2 * math.pi)) < 1e-4


def test_gaussian_log_likelihood_and_mean_flat():
    g = torch.Generator().manual_seed(1)
    x, m, ls = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(gaussian_log_likelihood(x, means=m, log_scales=ls), Normal(m, ls.exp()).log_prob(x))
    t = torch.arange(24.0).reshape(2, 3, 4)
    torch.testing.assert_close(mean_flat(t), torch.tensor([5.5, 17.5]))
