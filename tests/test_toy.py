"""Analytic toys (gcg.toy): closed forms checked against independent computations."""

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from gcg.diffusion import GaussianDiffusion
from gcg.schedules import get_named_beta_schedule
from gcg.toy import Gaussian, GaussianMixture, main

COVS = torch.tensor([[[0.2, 0.05], [0.05, 0.1]], [[0.05, 0.0], [0.0, 0.3]], [[0.1, -0.04], [-0.04, 0.1]]],
                    dtype=torch.float64)
TOY = GaussianMixture(torch.tensor([[-0.6, 0.0], [0.5, 0.4], [0.2, -0.7]]), cov=COVS, weights=[0.2, 0.5, 0.3])


def _torch_noisy_mixture(alpha_bar):
    """The noisy marginal built with torch.distributions: an independent reference."""
    eye = torch.eye(2, dtype=torch.float64)
    comps = MultivariateNormal(alpha_bar**0.5 * TOY.means, alpha_bar * COVS + (1 - alpha_bar) * eye)
    return MixtureSameFamily(Categorical(TOY.weights), comps), comps


def test_sample_moments_match_the_mixture():
    x, y = TOY.sample(100000, torch.Generator().manual_seed(0), torch.float64)
    assert x.shape == (100000, 2) and y.dtype == torch.int64
    freq = torch.bincount(y, minlength=3).double() / 1e5
    assert (freq - TOY.weights).abs().max() < 0.006
    assert (x.mean(0) - TOY.mean()).abs().max() < 0.01
    assert (torch.cov(x.T) - TOY.covariance()).abs().max() < 0.01


@pytest.mark.parametrize("alpha_bar", [1.0, 0.7, 0.05])
def test_log_prob_and_posterior_match_torch_distributions(alpha_bar):
    mixture, comps = _torch_noisy_mixture(alpha_bar)
    x = torch.randn(50, 2, dtype=torch.float64)
    torch.testing.assert_close(TOY.log_prob(x, alpha_bar), mixture.log_prob(x))
    log_joint = TOY.weights.log() + comps.log_prob(x[:, None, :])
    expected = log_joint - log_joint.logsumexp(1, keepdim=True)
    torch.testing.assert_close(TOY.posterior_logits(x, alpha_bar), expected)


def test_score_and_classifier_grad_are_the_autograd_gradients():
    x = torch.randn(40, 2, dtype=torch.float64, requires_grad=True)
    ab = torch.rand(40, dtype=torch.float64) * 0.9 + 0.05  # one alpha_bar per example
    (grad,) = torch.autograd.grad(TOY.log_prob(x, ab).sum(), x)
    torch.testing.assert_close(TOY.score(x.detach(), ab), grad)
    y = torch.randint(0, 3, (40,))
    logits = TOY.posterior_logits(x, ab)
    (grad_y,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), x)
    torch.testing.assert_close(TOY.classifier_grad(x.detach(), ab, y), grad_y)
    # y == num_classes is the null label of classifier-free guidance: the marginal score
    torch.testing.assert_close(TOY.score(x.detach(), ab, torch.full((40,), 3)), TOY.score(x.detach(), ab))


def test_exact_eps_model_is_the_conditional_mean_of_the_noise():
    """eps*(x_t) = E[eps | x_t]: the residual eps - eps*(x_t) is orthogonal to functions of x_t."""
    betas = get_named_beta_schedule("linear", 100)
    ac = torch.cumprod(1 - betas, 0)
    model = TOY.eps_model(ac)
    g = torch.Generator().manual_seed(1)
    n, t = 200000, 40
    x0, y = TOY.sample(n, g, torch.float64)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    xt = ac[t].sqrt() * x0 + (1 - ac[t]).sqrt() * eps
    ts = torch.full((n,), t)
    for pred in (model(xt, ts), model(xt, ts, y=y)):
        residual = eps - pred
        for f in (torch.ones(n, 1, dtype=torch.float64), xt, xt**2, torch.tanh(3 * xt)):
            assert (residual[:, :, None] * f[:, None, :]).mean(0).abs().max() < 0.01
    # and it beats a perturbed predictor
    assert ((eps - model(xt, ts)) ** 2).mean() < ((eps - 1.05 * model(xt, ts)) ** 2).mean()


def test_models_index_alpha_bar_by_original_timesteps():
    d = GaussianDiffusion(get_named_beta_schedule("linear", 100), timestep_respacing="ddim10")
    x, t = torch.randn(5, 2), torch.full((5,), 90)  # original timestep 90
    ab = torch.cumprod(1 - d.original_betas, 0)[90]
    torch.testing.assert_close(TOY.eps_model(d)(x, t), (-(1 - ab).sqrt() * TOY.score(x.double(), ab)).float())
    torch.testing.assert_close(TOY.classifier(d)(x, t), TOY.posterior_logits(x, ab))


def test_gaussian_nll_and_bits_per_dim():
    toy = Gaussian([0.3, -0.2], cov=[[0.5, 0.1], [0.1, 0.3]])
    x = toy.sample(10, torch.Generator().manual_seed(0), torch.float64)
    assert x.shape == (10, 2)
    ref = MultivariateNormal(torch.tensor([0.3, -0.2], dtype=torch.float64),
                             torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=torch.float64))
    torch.testing.assert_close(toy.nll(x), -ref.log_prob(x))
    torch.testing.assert_close(toy.nll_bits_per_dim(x), -ref.log_prob(x) / (2 * torch.log(torch.tensor(2.0, dtype=torch.float64))))


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="exactly one of std"):
        GaussianMixture(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\[N, D=2\]"):
        TOY.score(torch.zeros(3, 4), 0.5)
    with pytest.raises(ValueError, match="labels in"):
        TOY.score(torch.zeros(3, 2), 0.5, y=torch.tensor([0, 1, 7]))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        TOY.log_prob(torch.zeros(3, 2), 0.0)


def test_command_line_demo_writes_a_figure(tmp_path, capsys):
    out = tmp_path / "toy.png"
    main(["--out", str(out), "--n", "300", "--steps", "100", "--ddim-steps", "10"])
    assert out.stat().st_size > 10000
    printed = capsys.readouterr().out
    assert "DDPM, 100 steps" in printed and "DDIM (eta=0), 10 steps" in printed and "|cov error|" in printed
