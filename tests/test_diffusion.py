"""The diffusion core (gcg.diffusion), checked against closed forms and the analytic toys."""

import math

import pytest
import torch

from gcg.diffusion import DiffusionConfig, GaussianDiffusion
from gcg.schedules import get_named_beta_schedule, space_timesteps
from gcg.toy import Gaussian, GaussianMixture


def _diffusion(T=50, schedule="linear", **kw):
    return GaussianDiffusion(get_named_beta_schedule(schedule, T), **kw)


# 1. q(x_t | x_0) in closed form equals t single forward steps ------------------------------------
def test_q_sample_closed_form_equals_t_single_steps():
    d = _diffusion(50)
    g = torch.Generator().manual_seed(0)
    n, t = 50000, 29
    x0 = torch.tensor([0.7, -1.3], dtype=torch.float64)
    x = x0.expand(n, 2).clone()
    for s in range(t + 1):  # x_s = sqrt(1 - beta_s) x_{s-1} + sqrt(beta_s) eps, Ho et al. Eq. (2)
        x = (1 - d.betas[s]).sqrt() * x + d.betas[s].sqrt() * torch.randn(n, 2, generator=g, dtype=torch.float64)
    mean, var, log_var = d.q_mean_variance(x0.expand(n, 2), torch.full((n,), t))
    se_mean = (var[0] / n).sqrt()
    assert ((x.mean(0) - mean[0]).abs() < 5 * se_mean).all()
    assert ((x.var(0) / var[0] - 1).abs() < 5 * math.sqrt(2 / n)).all()
    torch.testing.assert_close(log_var, var.log())
    # q_sample draws from the same distribution
    xt = d.q_sample(x0.expand(n, 2), torch.full((n,), t), noise=torch.randn(n, 2, generator=g, dtype=torch.float64))
    assert ((xt.mean(0) - mean[0]).abs() < 5 * se_mean).all()
    assert ((xt.var(0) / var[0] - 1).abs() < 5 * math.sqrt(2 / n)).all()


# 2. the posterior q(x_{t-1} | x_t, x_0) is Bayes' rule ------------------------------------------
def test_posterior_equals_bayes_rule_on_a_grid():
    d = _diffusion(100)
    x0 = torch.tensor([0.4], dtype=torch.float64)
    grid = torch.linspace(-6, 6, 200001, dtype=torch.float64)
    for t in (1, 10, 57, 99):
        xt = torch.tensor([[0.9]], dtype=torch.float64)
        ab_prev = d.alphas_cumprod[t - 1]
        # prior q(x_{t-1} | x_0) times likelihood q(x_t | x_{t-1}), normalised numerically
        log_prior = -0.5 * (grid - ab_prev.sqrt() * x0) ** 2 / (1 - ab_prev)
        log_lik = -0.5 * (xt[0, 0] - (1 - d.betas[t]).sqrt() * grid) ** 2 / d.betas[t]
        w = torch.softmax(log_prior + log_lik, 0)
        bayes_mean = (w * grid).sum()
        bayes_var = (w * (grid - bayes_mean) ** 2).sum()
        mean, var, log_var = d.q_posterior_mean_variance(x0[None], xt, torch.tensor([t]))
        assert mean.item() == pytest.approx(bayes_mean.item(), abs=1e-8)
        assert var.item() == pytest.approx(bayes_var.item(), rel=1e-5)
        assert log_var.item() == pytest.approx(math.log(bayes_var.item()), abs=1e-5)
    # at t = 0 the posterior is the point x_0; its log variance is clipped to beta_tilde_1
    mean, var, log_var = d.q_posterior_mean_variance(x0[None], torch.tensor([[0.9]], dtype=torch.float64), torch.tensor([0]))
    assert mean.item() == pytest.approx(0.4, abs=1e-12) and var.item() == 0
    assert log_var.item() == pytest.approx(d.posterior_variance[1].log().item())


# 4. respacing ----------------------------------------------------------------------------------
def test_respacing_keeps_alpha_bar_at_the_kept_steps():
    base = _diffusion(1000, "cosine")
    for spec, expected in (("250", space_timesteps(1000, "250")), ("ddim25", list(range(0, 1000, 40)))):
        short = base.respace(spec)
        assert short.num_timesteps == len(expected)
        assert short.timestep_map.tolist() == expected
        torch.testing.assert_close(short.alphas_cumprod, base.alphas_cumprod[expected], rtol=1e-12, atol=0)
        # respacing a respaced chain starts from the original betas again
        again = short.respace("10")
        torch.testing.assert_close(again.alphas_cumprod, base.respace("10").alphas_cumprod, rtol=0, atol=0)
    assert torch.equal(base.respace(None).betas, base.betas)


def test_model_and_cond_fn_receive_original_timesteps():
    d = _diffusion(100).respace("ddim10")
    seen_model, seen_cond = [], []

    def model(x, t, y=None):
        seen_model.append(t.clone())
        assert y is not None
        return torch.zeros_like(x)

    def cond_fn(x, t, y=None):
        seen_cond.append(t.clone())
        return torch.zeros_like(x)

    kwargs = dict(cond_fn=cond_fn, model_kwargs={"y": torch.zeros(3, dtype=torch.long)})
    d.p_sample_loop(model, (3, 2), **kwargs)
    expected = list(range(90, -1, -10))
    assert [int(t[0]) for t in seen_model] == expected and [int(t[0]) for t in seen_cond] == expected
    seen_model.clear(), seen_cond.clear()
    d.ddim_sample_loop(model, (3, 2), **kwargs)
    assert [int(t[0]) for t in seen_model] == expected and [int(t[0]) for t in seen_cond] == expected
    seen_model.clear()
    d.training_losses(model, torch.zeros(3, 2), torch.tensor([0, 4, 9]), model_kwargs=kwargs["model_kwargs"])
    assert seen_model[0].tolist() == [0, 40, 90]


# 5. learned-range variance and the parameterisation conversions ---------------------------------
@pytest.mark.parametrize("respacing", [None, "25"])
def test_learned_range_variance_hits_its_bounds(respacing):
    d = _diffusion(100, model_var_type="learned_range", timestep_respacing=respacing)
    T = d.num_timesteps
    x = torch.randn(T, 3, 2, 2, dtype=torch.float64)
    t = torch.arange(T)
    for v, bound in ((1.0, d.betas.log()), (-1.0, d.posterior_log_variance_clipped)):
        model = lambda x, ts, v=v: torch.cat([torch.zeros_like(x), torch.full_like(x, v)], 1)
        out = d.p_mean_variance(model, x, t)
        torch.testing.assert_close(out["log_variance"], bound[:, None, None, None].expand_as(x))
        torch.testing.assert_close(out["variance"], out["log_variance"].exp())
    # v = 0: the geometric mean of the bounds (Nichol & Dhariwal Eq. (15))
    out = d.p_mean_variance(lambda x, ts: torch.cat([x * 0, x * 0], 1), x, t)
    mid = 0.5 * (d.betas.log() + d.posterior_log_variance_clipped)
    torch.testing.assert_close(out["log_variance"][:, 0, 0, 0], mid)


def test_fixed_variances():
    d_small, d_large = _diffusion(50), _diffusion(50, model_var_type="fixed_large")
    x, t = torch.zeros(50, 2, dtype=torch.float64), torch.arange(50)
    zero = lambda x, ts: torch.zeros_like(x)
    small, large = d_small.p_mean_variance(zero, x, t), d_large.p_mean_variance(zero, x, t)
    torch.testing.assert_close(small["variance"][:, 0], d_small.posterior_variance)
    torch.testing.assert_close(large["variance"][1:, 0], d_large.betas[1:])
    assert large["variance"][0, 0].item() == pytest.approx(d_large.posterior_variance[1].item())


def test_epsilon_xstart_v_conversions_round_trip():
    d = _diffusion(200, "cosine")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 200, 3, generator=g, dtype=torch.float64)
    t = torch.arange(200)
    xt = d.q_sample(x0, t, noise=eps)
    torch.testing.assert_close(d._predict_xstart_from_eps(xt, t, eps), x0, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(d._predict_eps_from_xstart(xt, t, x0), eps, rtol=1e-6, atol=1e-8)
    v = d.get_v(x0, eps, t)
    torch.testing.assert_close(d._predict_xstart_from_v(xt, t, v), x0, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(d._predict_v_from_eps(xt, t, eps), v, rtol=1e-6, atol=1e-8)
    # the three parameterisations give the same reverse step when each outputs its true target
    outs = {}
    for mean_type, target in (("epsilon", eps), ("start_x", x0), ("v", v)):
        dm = _diffusion(200, "cosine", model_mean_type=mean_type)
        outs[mean_type] = dm.p_mean_variance(lambda x, ts, y=target: y, xt, t, clip_denoised=False)["mean"]
    torch.testing.assert_close(outs["epsilon"], outs["start_x"], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(outs["v"], outs["start_x"], rtol=1e-6, atol=1e-8)


# 6. samplers with the exact toy model -------------------------------------------------------------
TOY = GaussianMixture(torch.tensor([[-0.5, 0.2], [0.6, -0.1]]), std=torch.tensor([0.3, 0.2]), weights=[0.4, 0.6])


def _moment_errors(x):
    x = x.double()
    return float((x.mean(0) - TOY.mean()).norm()), float((torch.cov(x.T) - TOY.covariance()).norm())


def test_ddpm_and_ddim_reproduce_the_toy_moments():
    # Monte Carlo floor for n = 2000: |mean error| ~ 0.015, |cov error|_F ~ 0.01
    d = _diffusion(1000)
    model = TOY.eps_model(d)
    n, g = 2000, torch.Generator().manual_seed(0)
    ddpm = d.p_sample_loop(model, (n, 2), clip_denoised=False, generator=g)
    ddim = d.respace("ddim50").ddim_sample_loop(model, (n, 2), clip_denoised=False, generator=g)
    for x in (ddpm, ddim):
        mean_err, cov_err = _moment_errors(x)
        assert mean_err < 0.05 and cov_err < 0.04, (mean_err, cov_err)
    # a deliberately wrong model (eps scaled by 0.5) is caught by the same tolerances
    wrong = lambda x, t: 0.5 * model(x, t)
    bad = d.respace("ddim50").ddim_sample_loop(wrong, (n, 2), clip_denoised=False, generator=g)
    assert _moment_errors(bad)[1] > 0.1


def test_class_conditional_ddim_samples_the_right_component():
    d = _diffusion(1000).respace("ddim50")
    y = torch.tensor([0] * 500 + [1] * 500)
    x = d.ddim_sample_loop(TOY.eps_model(d), (1000, 2), clip_denoised=False, model_kwargs={"y": y},
                           generator=torch.Generator().manual_seed(1))
    for k in (0, 1):
        assert (x[y == k].mean(0).double() - TOY.means[k]).norm() < 0.05


def test_ddim_eta_one_is_the_ddpm_step():
    d = _diffusion(100)
    model = TOY.eps_model(d)
    x = torch.randn(64, 2, dtype=torch.float64)
    for i in (99, 50, 3, 1, 0):
        t = torch.full((64,), i)
        ddpm = d.p_sample(model, x, t, clip_denoised=False, generator=torch.Generator().manual_seed(i))
        ddim = d.ddim_sample(model, x, t, clip_denoised=False, eta=1.0, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(ddim["sample"], ddpm["sample"], rtol=1e-8, atol=1e-10)


def test_ddim_inversion_then_sampling_returns_the_start():
    """DDIM inversion runs the same ODE forwards; the round trip is exact up to the first-order
    discretisation error, which shrinks like 1/steps."""
    toy = Gaussian([0.2, -0.1], cov=[[0.3, 0.1], [0.1, 0.2]])
    x0 = toy.sample(200, torch.Generator().manual_seed(0), torch.float64)
    base = _diffusion(1000, "cosine")
    errors = {}
    for steps in (100, 500):
        d = base.respace(f"ddim{steps}")
        model = toy.eps_model(d)
        xT = d.ddim_reverse_sample_loop(model, x0, clip_denoised=False)
        assert xT.std() > 0.8  # it really went to noise
        back = d.ddim_sample_loop(model, x0.shape, noise=xT, clip_denoised=False)
        errors[steps] = (back - x0).abs().max().item()
    assert errors[500] < 0.015 and errors[500] < errors[100] / 3, errors
    with pytest.raises(ValueError, match="eta=0"):
        d.ddim_reverse_sample(model, x0, torch.zeros(200, dtype=torch.long), eta=0.5)


def test_progressive_loops_yield_every_step_and_generator_reproduces():
    d = _diffusion(50).respace("10")
    model = TOY.eps_model(d)
    steps = list(d.p_sample_loop_progressive(model, (5, 2), clip_denoised=False, generator=torch.Generator().manual_seed(3)))
    assert [int(s["t"][0]) for s in steps] == list(range(9, -1, -1))
    assert set(steps[0]) == {"sample", "pred_xstart", "t"}
    again = d.p_sample_loop(model, (5, 2), clip_denoised=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, steps[-1]["sample"])


def test_sample_loop_dispatches_to_the_named_sampler():
    d = _diffusion(50).respace("ddim10")
    model = TOY.eps_model(d)
    g = lambda: torch.Generator().manual_seed(4)
    kw = dict(clip_denoised=False)
    torch.testing.assert_close(d.sample_loop(model, (6, 2), sampler="ddim", eta=0.5, generator=g(), **kw),
                               d.ddim_sample_loop(model, (6, 2), eta=0.5, generator=g(), **kw), rtol=0, atol=0)
    torch.testing.assert_close(d.sample_loop(model, (6, 2), sampler="ddpm", generator=g(), **kw),
                               d.p_sample_loop(model, (6, 2), generator=g(), **kw), rtol=0, atol=0)
    # the two samplers really differ on the same noise (DDIM eta=0 vs ancestral)
    assert not torch.allclose(d.sample_loop(model, (6, 2), sampler="ddim", generator=g(), **kw),
                              d.sample_loop(model, (6, 2), sampler="ddpm", generator=g(), **kw))
    steps = list(d.sample_loop(model, (6, 2), sampler="ddim", progressive=True, generator=g(), **kw))
    assert len(steps) == 10 and [int(s["t"][0]) for s in steps] == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="sampler=.euler. is not supported"):
        d.sample_loop(model, (6, 2), sampler="euler")
    with pytest.raises(ValueError, match="ancestral sampler only"):
        d.sample_loop(model, (6, 2), sampler="ddim", cond_at="mean")
    with pytest.raises(ValueError, match="DDIM only"):
        d.sample_loop(model, (6, 2), sampler="ddpm", eta=1.0)


# guidance hooks -----------------------------------------------------------------------------------
def test_condition_score_with_the_exact_classifier_gives_the_conditional_model():
    """Bayes: grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t) (Dhariwal & Nichol Eq. (14))."""
    d = _diffusion(100)
    ac = d.alphas_cumprod
    x = torch.randn(300, 2, dtype=torch.float64)
    t = torch.randint(1, 100, (300,))
    y = torch.randint(0, 2, (300,))
    cond_fn = lambda x, ts, y: TOY.classifier_grad(x, ac[ts], y)
    marginal = d.p_mean_variance(TOY.eps_model(ac), x, t, clip_denoised=False)
    guided = d.condition_score(cond_fn, marginal, x, t, model_kwargs={"y": y})
    conditional = d.p_mean_variance(TOY.eps_model(ac), x, t, clip_denoised=False, model_kwargs={"y": y})
    torch.testing.assert_close(guided["pred_xstart"], conditional["pred_xstart"], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(guided["mean"], conditional["mean"], rtol=1e-6, atol=1e-8)


def test_condition_mean_shifts_by_variance_times_gradient_at_the_chosen_point():
    d = _diffusion(100)
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.full((4,), 30)
    out = d.p_mean_variance(TOY.eps_model(d), x, t, clip_denoised=False)
    points, levels = [], []

    def cond_fn(point, ts):
        points.append(point)
        levels.append(ts.tolist())
        return 2.0 * point

    # "x_t": gradient at x_t and level t; "mean": at mu, the classifier sees the level of x_{t-1}
    for cond_at, expected_point, level in (("x_t", x, 30), ("mean", out["mean"], 29)):
        new_mean = d.condition_mean(cond_fn, out, x, t, cond_at=cond_at)
        torch.testing.assert_close(points[-1], expected_point)
        assert levels[-1] == [level] * 4, cond_at
        torch.testing.assert_close(new_mean, out["mean"] + out["variance"] * 2.0 * expected_point)
    with pytest.raises(ValueError, match="cond_at"):
        d.condition_mean(cond_fn, out, x, t, cond_at="x0")
    # on a respaced chain the level is one step of THAT chain back, as an original timestep
    respaced = d.respace("ddim10")  # chain index i <-> original timestep 10 i
    last_steps = torch.tensor([0, 0, 1, 3])
    respaced.condition_mean(cond_fn, respaced.p_mean_variance(TOY.eps_model(respaced), x, last_steps,
                                                              clip_denoised=False), x, last_steps, cond_at="mean")
    assert levels[-1] == [0, 0, 0, 20]


# 7. bits/dim approaches the analytic NLL ----------------------------------------------------------
def test_bpd_on_the_exact_gaussian_toy_approaches_the_analytic_nll():
    """Continuous data: the Gaussian decoder turns L_0 into a density, so total_bpd estimates
    -log2 p(x_0) / D from above. The reverse variance is beta_t at every step (learned_range with
    v = +1): the true reverse conditional of smooth data has variance beta_t (1 + O(beta_t)), so the
    bound's gap shrinks like O(1/T). (beta_tilde, i.e. fixed_small, would leave a T-independent gap
    from the first steps, where beta_tilde_t / beta_t ~ (t - 1) / t.)"""
    D, n = 8, 1000
    A = torch.randn(D, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    toy = Gaussian(torch.linspace(-0.5, 0.5, D), cov=0.3 * A @ A.T / D + 0.05 * torch.eye(D, dtype=torch.float64))
    x0 = toy.sample(n, torch.Generator().manual_seed(0), torch.float64)
    nll = toy.nll_bits_per_dim(x0).mean().item()
    gaps = []
    for T in (3, 10, 200):
        d = _diffusion(T, "cosine", model_var_type="learned_range", decoder="gaussian")
        eps = toy.eps_model(d)
        model = lambda x, t: torch.cat([eps(x, t), torch.ones_like(x)], 1)
        out = d.calc_bpd_loop(model, x0, clip_denoised=False, generator=torch.Generator().manual_seed(T))
        assert out["vb"].shape == out["mse"].shape == out["xstart_mse"].shape == (n, T)
        torch.testing.assert_close(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"])
        gaps.append(out["total_bpd"].mean().item() - nll)
    # Monte Carlo standard error of each gap is ~0.01 bits/dim
    assert gaps[0] > gaps[1] + 0.05 and gaps[1] > gaps[2] + 0.03, gaps
    assert abs(gaps[2]) < 0.04, gaps


# 8. training losses -------------------------------------------------------------------------------
class TinyNet(torch.nn.Module):
    def __init__(self, channels, out_channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels + 1, out_channels, 3, padding=1)

    def forward(self, x, t):
        t_map = (t.float() / 1000)[:, None, None, None].expand(-1, 1, *x.shape[2:])
        return self.conv(torch.cat([x, t_map], 1))


@pytest.mark.parametrize("loss_type", ["mse", "rescaled_mse", "kl", "rescaled_kl"])
@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large", "learned_range", "learned"])
@pytest.mark.parametrize("mean_type", ["epsilon", "start_x", "v"])
def test_training_losses_every_type_is_finite_and_per_example(loss_type, var_type, mean_type):
    d = DiffusionConfig(steps=100, noise_schedule="cosine", loss_type=loss_type, model_var_type=var_type,
                        model_mean_type=mean_type).build()
    net = TinyNet(3, 6 if d.learns_variance else 3)
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    t = torch.tensor([0, 1, 50, 99])
    terms = d.training_losses(net, x, t)
    expected_keys = {"loss"} if loss_type.endswith("kl") else ({"loss", "mse", "vb"} if d.learns_variance else {"loss", "mse"})
    assert set(terms) == expected_keys
    for value in terms.values():
        assert value.shape == (4,) and torch.isfinite(value).all()
    terms["loss"].mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_rescaled_mse_trains_the_variance_only_through_the_vb_term():
    d = DiffusionConfig(steps=400, loss_type="rescaled_mse", model_var_type="learned_range").build()
    net = TinyNet(3, 6)
    outputs = []
    model = lambda x, t: outputs.append(net(x, t)) or outputs[-1]
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    t = torch.tensor([0, 1, 10, 100, 200, 399])
    noise = torch.randn_like(x)
    terms = d.training_losses(model, x, t, noise=noise)
    out = outputs[0]
    g_mse = torch.autograd.grad(terms["mse"].sum(), out, retain_graph=True)[0]
    g_vb = torch.autograd.grad(terms["vb"].sum(), out, retain_graph=True)[0]
    assert g_mse[:, 3:].abs().max() == 0 and g_mse[:, :3].abs().max() > 0  # mse: mean channels only
    assert g_vb[:, :3].abs().max() == 0 and g_vb[:, 3:].abs().max() > 0  # vb: variance channels only
    # L_hybrid = L_simple + lambda L_vlb, lambda = 1/1000 on the mean over T terms: T/1000 = 0.4 on one term
    kl = GaussianDiffusion(d.betas, model_var_type="learned_range", loss_type="kl")
    vb = kl._vb_terms_bpd(lambda *a: out.detach(), x, d.q_sample(x, t, noise=noise), t, clip_denoised=False)
    torch.testing.assert_close(terms["vb"], 0.4 * vb["output"])
    torch.testing.assert_close(terms["mse"], ((out[:, :3] - noise) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    # plain "mse" with a learned variance adds the bound unscaled; "rescaled_kl" multiplies the bound by T
    mse = GaussianDiffusion(d.betas, model_var_type="learned_range", loss_type="mse")
    torch.testing.assert_close(mse.training_losses(lambda *a: out.detach(), x, t, noise=noise)["vb"], vb["output"])
    rescaled_kl = GaussianDiffusion(d.betas, model_var_type="learned_range", loss_type="rescaled_kl")
    plain_kl = kl.training_losses(lambda *a: out.detach(), x, t, noise=noise)["loss"]
    torch.testing.assert_close(rescaled_kl.training_losses(lambda *a: out.detach(), x, t, noise=noise)["loss"],
                               400 * plain_kl)


def test_clear_errors_for_bad_inputs():
    with pytest.raises(ValueError, match="model_var_type.*fixed_small"):
        _diffusion(50, model_var_type="small")
    d = _diffusion(50, model_var_type="learned_range")
    with pytest.raises(ValueError, match="2 \\* in_channels"):
        d.p_mean_variance(lambda x, t: x, torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        d.q_sample(torch.zeros(2, 3), torch.tensor([0, 50]))
    with pytest.raises(ValueError, match="one timestep per example"):
        d.p_mean_variance(lambda x, t: torch.cat([x, x], 1), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown DiffusionConfig keys"):
        DiffusionConfig.from_dict({"steps": 10, "schedule": "linear"})
    assert DiffusionConfig.from_dict(DiffusionConfig(steps=30).to_dict()).build("10").num_timesteps == 10


def test_reverse_sde_euler_maruyama_samples_a_gaussian_with_its_exact_score():
    """N(0, s0^2) data has the noisy marginal N(0, abar s0^2 + 1 - abar): with that exact score the
    Euler-Maruyama sampler must return variance s0^2 (MC: 20k draws, std error of var ~1%)."""
    from gcg.diffusion import reverse_sde_euler_maruyama

    betas = get_named_beta_schedule("linear", 1000)
    abar = torch.cumprod(1 - torch.as_tensor(betas, dtype=torch.float64), 0)
    s0 = 0.5
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(20000, 1, generator=g, dtype=torch.float64)
    x0 = reverse_sde_euler_maruyama(lambda x, i: -x / (abar[i] * s0**2 + 1 - abar[i]), betas, x_T, g)
    assert abs(float(x0.mean())) < 0.02
    assert abs(float(x0.var()) / s0**2 - 1) < 0.06, float(x0.var())
    # the last step adds no noise: one step from x equals the drift alone
    one = reverse_sde_euler_maruyama(lambda x, i: -x, torch.tensor([0.1]), torch.ones(3, 1, dtype=torch.float64))
    torch.testing.assert_close(one, torch.full((3, 1), 1 + 0.1 * (0.5 - 1), dtype=torch.float64))
