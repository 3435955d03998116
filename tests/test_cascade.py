"""gcg.cascade: conditioning augmentation, truncated / non-truncated sampling, the pipeline and
the cascade's bound (Ho et al. 2021, CDM)."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from gcg.cascade import (
    Cascade,
    CascadeStage,
    aug_alphas_cumprod,
    augmented_condition,
    blur_augment,
    cascade_bpd,
    gaussian_augment,
    gaussian_blur_3x3,
    max_aug_timestep,
    sample_stage,
    super_res_kwargs,
)
from gcg.checkpoint import load_cascade_stage, save_checkpoint
from gcg.diffusion import DiffusionConfig, GaussianDiffusion
from gcg.guidance import classifier_cond_fn
from gcg.nn.config import create_model, get_preset
from gcg.nn.mlp import MLPConfig
from gcg.schedules import get_named_beta_schedule
from gcg.toy import GaussianMixture


def _diffusion(steps, schedule="linear", **kw):
    return GaussianDiffusion(get_named_beta_schedule(schedule, steps), **kw)


def _images(n, c=1, size=8, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ----------------------------------------------------------------------------- augmentation


def test_low_res_is_the_block_mean_without_augmentation():
    x = _images(3, c=2, size=8)
    out = super_res_kwargs(x, 4, augment="none")
    expected = x.reshape(3, 2, 4, 2, 4, 2).mean(dim=(3, 5))
    torch.testing.assert_close(out["low_res"], expected)
    assert out["aug_level"] is None


def test_gaussian_augmentation_has_the_forward_process_moments_for_the_drawn_level():
    diffusion = _diffusion(1000, "cosine")
    x = _images(4000, size=8)
    clean = super_res_kwargs(x, 2, augment="none")["low_res"]
    g = torch.Generator().manual_seed(1)
    out = super_res_kwargs(x, 2, augment="gaussian", max_aug_level=0.25, diffusion=diffusion, generator=g)
    s = out["aug_level"]
    assert s.dtype == torch.float32 and s.shape == (4000,)
    assert torch.equal(s, s.round()) and s.min() >= 0 and s.max() <= 249  # 0.25 of T = 1000
    assert abs(float(s.mean()) - 124.5) < 5 * 72.2 / math.sqrt(4000)  # U{0..249}: sd 72.2
    abar = torch.cumprod(1 - get_named_beta_schedule("cosine", 1000), 0)[s.long()].float()[:, None, None, None]
    resid = (out["low_res"] - abar.sqrt() * clean) / (1 - abar).sqrt()  # should be N(0, 1) noise
    for lo, hi in [(0, 60), (60, 125), (125, 190), (190, 250)]:  # the variance follows s
        r = resid[(s >= lo) & (s < hi)]
        assert abs(float(r.mean())) < 0.05 and abs(float(r.var()) - 1) < 0.06
    corr = np.corrcoef(resid.flatten().numpy(), clean.flatten().numpy())[0, 1]
    assert abs(corr) < 0.03  # independent of z_0: the mean is exactly sqrt(abar_s) z_0


def test_augmentation_defaults_are_the_papers_and_every_level_from_zero_is_drawn():
    # blur: sigma ~ U(0.4, 0.6) (CDM Sec. 3.2), the default of super_res_kwargs and of blur_augment
    x = _images(2000, size=8)
    out = super_res_kwargs(x, 4, augment="blur", blur_prob=1.0, generator=torch.Generator().manual_seed(2))
    low = super_res_kwargs(x, 4, augment="none")["low_res"]
    blurred, sigma = blur_augment(low, (0.4, 0.6), 1.0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out["low_res"], blurred)
    _, default_sigma = blur_augment(low, prob=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(default_sigma, sigma) and 0.4 <= sigma.min() < 0.41 and 0.59 < sigma.max() <= 0.6
    # Gaussian: s ~ U{0, ..., max - 1} with and without a generator, the clean level s = 0 included
    diffusion = _diffusion(100)
    for generator in (None, torch.Generator().manual_seed(3)):
        s = super_res_kwargs(x[:200], 4, max_aug_level=2, diffusion=diffusion, generator=generator)["aug_level"]
        assert set(s.tolist()) == {0.0, 1.0}


def test_gaussian_augment_equals_q_sample_of_the_low_res_diffusion():
    diffusion = _diffusion(100)
    z0 = _images(5, size=4)
    noise = torch.randn_like(z0)
    s = torch.tensor([0, 3, 50, 98, 99])
    torch.testing.assert_close(gaussian_augment(z0, s, diffusion, noise=noise), diffusion.q_sample(z0, s, noise))
    # a respaced diffusion still augments with its ORIGINAL chain
    torch.testing.assert_close(aug_alphas_cumprod(diffusion.respace("10")), diffusion.alphas_cumprod)


def test_augmented_condition_is_the_non_truncated_hand_over_used_by_the_cascade():
    diffusion = _diffusion(100)
    z0 = _images(4, size=4)
    noise = torch.randn_like(z0)
    kw = augmented_condition(z0, 30, diffusion, noise=noise)
    torch.testing.assert_close(kw["low_res"], diffusion.q_sample(z0, torch.full((4,), 30), noise))
    assert kw["aug_level"].dtype == torch.float32 and torch.equal(kw["aug_level"], torch.full((4,), 30.0))
    per_example = augmented_condition(z0, torch.tensor([0, 1, 2, 99]), diffusion, noise=noise)
    assert torch.equal(per_example["aug_level"], torch.tensor([0.0, 1.0, 2.0, 99.0]))
    # one stored z_0 and eps serve a whole search over s: only abar_s changes
    low, high = (augmented_condition(z0, s, diffusion, noise=noise)["low_res"] for s in (5, 80))
    assert (low - z0).abs().max() < (high - z0).abs().max()
    # Cascade.sample hands over exactly this, drawn from the sampling generator
    seen = {}

    def sr_model(x, t, low_res, aug_level, **kw):
        seen.update(low_res=low_res, aug_level=aug_level)
        return torch.zeros_like(x)

    base = CascadeStage(lambda x, t, **kw: torch.zeros_like(x), diffusion, (1, 4, 4), sampler="ddim", steps="ddim2",
                        class_cond=False)
    sr = CascadeStage(sr_model, diffusion, (1, 8, 8), sampler="ddim", steps="ddim2", aug_level=30, class_cond=False)
    g = torch.Generator().manual_seed(0)
    _, (z_base, _) = Cascade([base, sr]).sample(4, generator=g, return_stages=True)
    replay = torch.Generator().manual_seed(0)
    Cascade([base]).sample(4, generator=replay)  # consume the base stage's draws
    expected = augmented_condition(z_base, 30, diffusion, generator=replay)
    torch.testing.assert_close(seen["low_res"], expected["low_res"])
    assert torch.equal(seen["aug_level"], expected["aug_level"])


def test_max_aug_level_is_a_fraction_or_a_number_of_timesteps():
    assert max_aug_timestep(None, 1000) == 1000
    assert max_aug_timestep(0.2, 1000) == 200 and max_aug_timestep(1.0, 1000) == 1000
    assert max_aug_timestep(1e-6, 1000) == 1
    assert max_aug_timestep(250, 1000) == 250 and max_aug_timestep(250.0, 1000) == 250
    with pytest.raises(ValueError, match="must be > 0"):
        max_aug_timestep(0.0, 1000)
    with pytest.raises(ValueError, match="integer <= T=1000"):
        max_aug_timestep(2.5, 1000)
    with pytest.raises(ValueError, match="integer <= T=1000"):
        max_aug_timestep(1001, 1000)
    out = super_res_kwargs(_images(500), 4, max_aug_level=7, diffusion=_diffusion(50))
    assert set(out["aug_level"].long().tolist()) == set(range(7))


def test_blur_hits_the_stated_fraction_with_the_3x3_gaussian_kernel():
    x = _images(2000, c=3, size=4)
    g = torch.Generator().manual_seed(3)
    out, sigma = blur_augment(x, (0.4, 0.6), prob=0.5, generator=g)
    applied = sigma > 0
    assert abs(float(applied.float().mean()) - 0.5) < 0.05  # sd 0.011
    assert bool(((sigma[applied] >= 0.4) & (sigma[applied] <= 0.6)).all())
    assert torch.equal(out[~applied], x[~applied])
    changed = (out - x).flatten(1).abs().amax(1) > 0
    assert torch.equal(changed, applied)
    # the blurred ones: an explicit 3x3 kernel exp(-(i^2 + j^2) / (2 sigma^2)) / Z, edges replicated
    for i in applied.nonzero().flatten()[:5].tolist():
        sig = float(sigma[i])
        k = np.array([[math.exp(-(a * a + b * b) / (2 * sig * sig)) for b in (-1, 0, 1)] for a in (-1, 0, 1)])
        k /= k.sum()
        img = np.pad(x[i].numpy().astype(np.float64), ((0, 0), (1, 1), (1, 1)), mode="edge")
        ref = np.zeros(x[i].shape)
        for a in range(3):
            for b in range(3):
                ref += k[a, b] * img[:, a : a + 4, b : b + 4]
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-5)
    # super_res_kwargs routes through the same augmentation, and no aug_level is given
    kw = super_res_kwargs(_images(8, size=8), 4, augment="blur", blur_prob=1.0)
    assert kw["aug_level"] is None
    const = torch.full((2, 1, 4, 4), 0.3)
    torch.testing.assert_close(gaussian_blur_3x3(const, torch.tensor([0.5, 0.6])), const)


def test_augmentation_rejects_bad_input():
    with pytest.raises(ValueError, match="augment must be one of"):
        super_res_kwargs(_images(2), 4, augment="noise")
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        super_res_kwargs(torch.zeros(2, 8, 8), 4)
    with pytest.raises(ValueError, match="multiple of the target"):
        super_res_kwargs(_images(2), 3)
    with pytest.raises(ValueError, match=r"aug_level must lie in \[0, 100\)"):
        gaussian_augment(torch.zeros(2, 3), torch.tensor([0, 100]), _diffusion(100))
    with pytest.raises(ValueError, match="blur_prob"):
        blur_augment(_images(2), prob=1.5)


# ----------------------------------------------------------------------------- sampling modes


class _Spy:
    """A model wrapper that records what it is called with."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, x, t, **kwargs):
        self.calls.append({"t": t.clone(), **{k: (v.clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()}})
        return self.model(x, t, **kwargs)


def _zeros_model(x, t, **kwargs):
    return torch.zeros_like(x)


def _toy_cascade(mode, s, base_steps=None, n_sr_steps=21, exact=True):
    toy = GaussianMixture(torch.tensor([[-0.8, 0.0], [0.5, 0.6], [0.4, -0.7]]), std=0.15)
    base_diffusion = _diffusion(1000)
    base = _Spy(toy.eps_model(base_diffusion) if exact else _zeros_model)
    sr = _Spy(_zeros_model)
    stages = [
        CascadeStage(base, base_diffusion, shape=(2,), steps=base_steps, clip_denoised=False),
        CascadeStage(sr, _diffusion(n_sr_steps), shape=(2,), aug_level=s, mode=mode, clip_denoised=False),
    ]
    return toy, base_diffusion, base, sr, Cascade(stages)


def test_truncated_sampling_stops_the_base_chain_at_s():
    _, _, base, sr, cascade = _toy_cascade("truncated", 300, exact=False)
    final, outs = cascade.sample(4, y=torch.tensor([0, 1, 2, 0]), generator=torch.Generator().manual_seed(0),
                                 return_stages=True)
    assert [int(c["t"][0]) for c in base.calls] == list(range(999, 300, -1))  # T-1 .. s+1, never below
    assert torch.equal(sr.calls[0]["low_res"], outs[0])  # z_s handed over as is
    assert torch.equal(sr.calls[0]["aug_level"], torch.full((4,), 300.0))
    # a respaced base sampler stops at the same original timestep
    _, _, base, _, cascade = _toy_cascade("truncated", 300, base_steps="ddim50", exact=False)
    cascade.sample(2)
    assert [int(c["t"][0]) for c in base.calls] == list(range(980, 300, -20))
    with pytest.raises(ValueError, match="never visits that timestep; nearest ones"):
        _toy_cascade("truncated", 310, base_steps="ddim50")


def test_truncated_and_non_truncated_hand_over_the_same_marginal_q_zs():
    """With the exact toy eps-model both modes give z_s ~ q(z_s | y), class by class."""
    n, s = 2400, 300
    y = torch.arange(n) % 3
    handed = {}
    for mode in ("truncated", "non_truncated"):  # ancestral sampling on every 10th step of T = 1000
        toy, base_diffusion, _, sr, cascade = _toy_cascade(mode, s, base_steps="ddim100")
        cascade.sample(n, y=y, generator=torch.Generator().manual_seed(7))
        handed[mode] = sr.calls[0]["low_res"].double()
    ab = float(base_diffusion.alphas_cumprod[s])
    var = ab * 0.15**2 + 1 - ab  # per-class covariance of q(z_s | y) is var * I
    for k in range(3):
        expected_mean = math.sqrt(ab) * toy.means[k]
        for mode, z in handed.items():
            zk = z[y == k]
            se = math.sqrt(var / len(zk))
            assert float((zk.mean(0) - expected_mean).abs().max()) < 4.5 * se, (mode, k)
            cov_se = var * math.sqrt(2 / len(zk))  # sd of a sample variance of Gaussian data
            torch.testing.assert_close(torch.cov(zk.T), var * torch.eye(2, dtype=torch.float64), atol=4.5 * cov_se, rtol=0)
    # and with each other (two-sample test on the pooled means)
    diff = handed["truncated"].mean(0) - handed["non_truncated"].mean(0)
    assert float(diff.abs().max()) < 4.5 * math.sqrt(2 * 0.5 / n)


# ----------------------------------------------------------------------------- the bound


_MU = torch.tensor([0.2, -0.1], dtype=torch.float64)
_SIGMA = torch.tensor([[0.30, 0.10], [0.10, 0.20]], dtype=torch.float64)
_A = torch.tensor([[0.5, 0.5]], dtype=torch.float64)  # "downsampling" R^2 -> R^1: the pair mean
_M_LO = (_A @ _MU).item()
_V_LO = (_A @ _SIGMA @ _A.T).item()


def _exact_base_eps(abar):
    """eps*(z_t) of the low-res data N(m, v): sqrt(1-ab) (z - sqrt(ab) m) / (ab v + 1 - ab)."""

    def model(z, t, **kwargs):
        ab = abar[t].to(z)[:, None]
        return (1 - ab).sqrt() * (z - ab.sqrt() * _M_LO) / (ab * _V_LO + 1 - ab)

    return model


def _conditional(z_s, ab_s):
    """x | z_s for x ~ N(mu, Sigma), z_s = sqrt(ab_s) A x + sqrt(1 - ab_s) eps: (mean [N, 2], cov [2, 2])."""
    gain = _SIGMA @ _A.T * math.sqrt(ab_s) / (ab_s * _V_LO + 1 - ab_s)  # [2, 1]
    mean = _MU + (z_s - math.sqrt(ab_s) * _M_LO) @ gain.T
    cov = _SIGMA - math.sqrt(ab_s) * gain @ _A @ _SIGMA
    return mean, cov


def _exact_sr_eps(abar_sr, abar_lo):
    """eps*(x_t | z_s) of the Gaussian x | z_s, for SR models(x, t, low_res, aug_level)."""

    def model(x, t, low_res, aug_level, **kwargs):
        s = int(aug_level[0])
        assert bool((aug_level == s).all())
        mean, cov = _conditional(low_res, float(abar_lo[s]))
        ab = abar_sr[t][:, None, None]
        c = ab * cov + (1 - ab) * torch.eye(2, dtype=torch.float64)
        r = (x - ab[:, :, 0].sqrt() * mean)[:, :, None]
        return ((1 - ab).sqrt() * torch.linalg.solve(c, r))[:, :, 0]

    return model


def _expected_square(f, dim):
    """E ||f(xi)||^2 for an affine f and xi ~ N(0, I_dim): ||f(0)||^2 + sum_j ||f(e_j) - f(0)||^2."""
    f0 = f(np.zeros(dim))
    return float(f0 @ f0 + sum(np.sum((f(e) - f0) ** 2) for e in np.eye(dim)))


def _gauss_kl(v1, v2, mean_sq):
    """E KL(N(m1, v1) || N(m2, v2)) per dim, with E (m1 - m2)^2 = mean_sq summed over dims."""
    return lambda dims: 0.5 * dims * (-1 + math.log(v2) - math.log(v1) + v1 / v2) + 0.5 * mean_sq / v2


def _closed_form_bound_nats(x, base, sr, s):
    """The truncated cascade's bound for one x [2], as an exact Gaussian expectation.

    Every model is affine in the diffusion noise, so each term of Eq. (5) (Ho et al. 2020) is a
    Gaussian expectation of a quadratic: no sampling."""
    x = x.numpy()
    z0 = float((_A.numpy() @ x)[0])
    abar_lo = torch.cumprod(1 - base.original_betas, 0).numpy()
    ac = base.alphas_cumprod.numpy()  # the (respaced) base chain
    k = int((base.timestep_map == s).nonzero()[0, 0])
    T = len(ac)
    base_nats = 0.5 * (-1 - math.log(1 - ac[-1]) + (1 - ac[-1]) + ac[-1] * z0**2)
    for i in range(T - 1, k, -1):
        ab, abp = ac[i], ac[i - 1]
        beta = 1 - ab / abp
        c1, v1 = beta * math.sqrt(abp) / (1 - ab), beta * (1 - abp) / (1 - ab)
        g = math.sqrt(1 - ab) / (ab * _V_LO + 1 - ab)

        def delta(xi, ab=ab, c1=c1, g=g):
            z_t = math.sqrt(ab) * z0 + math.sqrt(1 - ab) * xi[0]
            x0_hat = (z_t - math.sqrt(1 - ab) * g * (z_t - math.sqrt(ab) * _M_LO)) / math.sqrt(ab)
            return np.atleast_1d(c1 * (z0 - x0_hat))

        v2 = beta if base.model_var_type == "fixed_large" else v1
        base_nats += _gauss_kl(v1, v2, _expected_square(delta, 1))(1)

    ab_s = abar_lo[s]
    acs = sr.alphas_cumprod.numpy()
    sr_nats = float(np.sum(0.5 * (-1 - math.log(1 - acs[-1]) + (1 - acs[-1]) + acs[-1] * x**2)))
    for i in range(len(acs) - 1, -1, -1):
        ab = acs[i]
        abp = acs[i - 1] if i > 0 else 1.0

        def x0_hat(xi, ab=ab):  # xi = (eps_s, eps_t[0], eps_t[1])
            z_s = math.sqrt(ab_s) * z0 + math.sqrt(1 - ab_s) * xi[0]
            mean, cov = _conditional(torch.tensor([[z_s]], dtype=torch.float64), ab_s)
            mean, cov = mean[0].numpy(), cov.numpy()
            x_t = math.sqrt(ab) * x + math.sqrt(1 - ab) * xi[1:]
            eps = math.sqrt(1 - ab) * np.linalg.solve(ab * cov + (1 - ab) * np.eye(2), x_t - math.sqrt(ab) * mean)
            return (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)

        if i == 0:  # Gaussian decoder -log N(x; x0_hat, sigma^2), sigma^2 = beta_tilde of step 1
            var0 = float(sr.posterior_variance[1])
            mean_sq = _expected_square(lambda xi: x - x0_hat(xi), 3)
            sr_nats += math.log(2 * math.pi * var0) + 0.5 * mean_sq / var0  # two dims
        else:
            beta = 1 - ab / abp
            c1, v1 = beta * math.sqrt(abp) / (1 - ab), beta * (1 - abp) / (1 - ab)
            mean_sq = _expected_square(lambda xi, c1=c1, f=x0_hat: c1 * (x - f(xi)), 3)
            sr_nats += _gauss_kl(v1, v1, mean_sq)(2)
    return base_nats, sr_nats


@pytest.mark.parametrize("respacing, var_type, s", [(None, "fixed_small", 10), ("ddim10", "fixed_large", 20)])
def test_cascade_bound_matches_its_closed_form_on_a_gaussian_toy(respacing, var_type, s):
    base = _diffusion(50, model_var_type=var_type)
    base = base.respace(respacing) if respacing else base
    sr = _diffusion(25, decoder="gaussian")
    abar_lo = torch.cumprod(1 - base.original_betas, 0)
    x = torch.tensor([0.3, -0.5], dtype=torch.float64)
    n = 4000
    x_high = x.expand(n, 2).clone()
    out = cascade_bpd(
        _exact_base_eps(abar_lo), base, _exact_sr_eps(sr.alphas_cumprod, abar_lo), sr, x_high,
        aug_level=s, low_res=x_high @ _A.T, clip_denoised=False, generator=torch.Generator().manual_seed(0),
    )
    base_nats, sr_nats = _closed_form_bound_nats(x, base, sr, s)
    per_dim = 2 * math.log(2)
    k = int((base.timestep_map == s).nonzero()[0, 0])
    assert out["base_terms_bpd"].shape == (n, base.num_timesteps - k)  # prior + T'-1 .. k+1
    torch.testing.assert_close(out["total_bpd"], out["base_bpd"] + out["sr_bpd"])
    for key, expected in [("base_bpd", base_nats / per_dim), ("sr_bpd", sr_nats / per_dim),
                          ("total_bpd", (base_nats + sr_nats) / per_dim)]:
        est = out[key].double()
        se = float(est.std()) / math.sqrt(n)
        assert abs(float(est.mean()) - expected) < 4.5 * se + 1e-6, (key, float(est.mean()), expected, se)
        assert se < 0.02 * abs(expected) + 1e-3  # the test has power


def test_cascade_bound_rejects_a_level_off_the_base_chain():
    base = _diffusion(50).respace("ddim10")
    x = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="not a timestep of the base chain"):
        cascade_bpd(_zeros_model, base, _zeros_model, _diffusion(25), x, aug_level=7, low_res=x[:, :1])


# ----------------------------------------------------------------------------- networks


def _randomise_output(model, seed=0):
    """Fresh ADM UNets zero the last conv of every block, which hides the embeddings (t, y, s) from
    the output; perturb every parameter so each input can show up, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _sr_unet(image_size, aug=True, seed=0):
    torch.manual_seed(seed)
    cfg = dataclasses.replace(get_preset("tiny"), image_size=image_size, attention_resolutions=(image_size // 2,),
                              super_res=True, aug_level_cond=aug)
    return _randomise_output(create_model(cfg), seed)


def test_the_sr_model_ignores_nothing():
    model = _sr_unet(16)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([5, 500])
    low, s, y = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 10.0]), torch.tensor([0, 1])
    with torch.no_grad():
        ref = model(x, t, y=y, low_res=low, aug_level=s)
        for changed in [dict(low_res=low + 0.5 * torch.randn_like(low)), dict(aug_level=s + 200),
                        dict(y=torch.tensor([2, 2]))]:
            kwargs = {"y": y, "low_res": low, "aug_level": s, **changed}
            assert (model(x, t, **kwargs) - ref).abs().amax(dim=(1, 2, 3)).min() > 1e-4, changed


def test_cascade_end_to_end_with_tiny_unets_keeps_labels_and_guides_only_the_base():
    torch.manual_seed(0)
    base_model = _randomise_output(create_model(get_preset("tiny")))
    stages = [
        CascadeStage(_Spy(base_model), _diffusion(100, "cosine", model_var_type="learned_range"), (1, 8, 8),
                     sampler="ddpm", steps="10"),
        CascadeStage(_Spy(_sr_unet(16, aug=True, seed=1)), _diffusion(100, "cosine", model_var_type="learned_range"),
                     (1, 16, 16), sampler="ddim", steps="ddim5", aug_level=44, mode="truncated"),
        # an OpenAI-style upsampler: super_res, no aug_level input; its input is never augmented
        CascadeStage(_Spy(_sr_unet(32, aug=False, seed=2)), _diffusion(100, "cosine", model_var_type="learned_range"),
                     (1, 32, 32), sampler="ddim", steps="ddim4", eta=1.0),
    ]
    cascade = Cascade(stages)
    classifier = create_model(get_preset("tiny_classifier"))
    guided = _Spy(lambda x, t, **kw: classifier(x, t))
    cond_fn = classifier_cond_fn(guided, scale=3.0)  # a real gradient through the classifier
    labels = torch.tensor([2, 0, 1])
    final, outs = cascade.sample(3, y=labels, cond_fn=cond_fn, generator=torch.Generator().manual_seed(0),
                                 return_stages=True)
    assert [tuple(o.shape) for o in outs] == [(3, 1, 8, 8), (3, 1, 16, 16), (3, 1, 32, 32)]
    assert final is outs[-1] and torch.isfinite(final).all() and final.abs().max() <= 1
    for stage in stages:
        assert all(torch.equal(call["y"], labels) for call in stage.model.calls)
    # guidance at every base step (on 8x8 inputs), nowhere else
    assert [int(c["t"][0]) for c in guided.calls] == [int(c["t"][0]) for c in stages[0].model.calls]
    assert sorted({int(c["t"][0]) for c in stages[0].model.calls}) == [55, 66, 77, 88, 99]  # stops at s=44
    assert torch.equal(stages[1].model.calls[0]["low_res"], outs[0])
    assert all(torch.equal(c["low_res"], outs[1]) for c in stages[2].model.calls)  # no blur or noise
    assert all("aug_level" not in c for c in stages[2].model.calls)
    # the SR stage's output depends on the z it is handed
    kw = {"y": labels, "aug_level": torch.full((3,), 44.0)}
    a = sample_stage(stages[1], 3, {**kw, "low_res": outs[0]}, generator=torch.Generator().manual_seed(5))
    b = sample_stage(stages[1], 3, {**kw, "low_res": -outs[0]}, generator=torch.Generator().manual_seed(5))
    assert (a - b).abs().amax(dim=(1, 2, 3)).min() > 1e-4


def test_cascade_validates_its_stages():
    d = _diffusion(100)
    with pytest.raises(ValueError, match="at least one stage"):
        Cascade([])
    with pytest.raises(ValueError, match="stage 0 is the base model"):
        Cascade([CascadeStage(_zeros_model, d, (1, 4, 4), aug_level=5)])
    with pytest.raises(ValueError, match="needs aug_level"):
        CascadeStage(_zeros_model, d, (1, 8, 8), mode="truncated")
    with pytest.raises(ValueError, match="sampler must be one of"):
        CascadeStage(_zeros_model, d, (1, 8, 8), sampler="euler")
    with pytest.raises(ValueError, match=r"aug_level must lie in \[0, 100\)"):
        Cascade([CascadeStage(_zeros_model, d, (1, 4, 4)), CascadeStage(_zeros_model, d, (1, 8, 8), aug_level=100)])
    cascade = Cascade([CascadeStage(_zeros_model, d, (1, 4, 4), steps="5")])
    with pytest.raises(ValueError, match=r"one label per sample, shape \(2,\)"):
        cascade.sample(2, y=torch.tensor([0, 1, 2]))


def test_a_stage_loads_from_a_training_checkpoint(tmp_path):
    model = _sr_unet(16, aug=True, seed=3)
    ema = {k: v + 1.0 for k, v in model.state_dict().items()}
    diffusion_config = DiffusionConfig(noise_schedule="cosine", steps=100, model_var_type="learned_range")
    save_checkpoint(tmp_path / "sr.pt", {"model_config": model.config.to_dict(), "model": model.state_dict(),
                                         "ema": {0.999: ema}, "diffusion_config": diffusion_config.to_dict()})
    stage = load_cascade_stage(tmp_path / "sr.pt", steps="ddim5", sampler="ddim", aug_level=40)
    assert stage.shape == (1, 16, 16) and stage.diffusion.num_timesteps == 100
    assert (stage.sampler, stage.steps, stage.aug_level) == ("ddim", "ddim5", 40)
    torch.testing.assert_close(stage.model.state_dict()["out_conv.bias"], ema["out_conv.bias"])  # EMA weights
    raw = load_cascade_stage(tmp_path / "sr.pt", use_ema=False, shape=(1, 16, 16))
    torch.testing.assert_close(raw.model.state_dict()["out_conv.bias"], model.state_dict()["out_conv.bias"])
    base = CascadeStage(_zeros_model, _diffusion(100, "cosine"), (1, 8, 8), steps="5")
    out = Cascade([base, stage]).sample(2, y=torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 16, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="mode='truncated' needs aug_level"):  # CascadeStage checks the keywords
        load_cascade_stage(tmp_path / "sr.pt", mode="truncated")


def test_a_toy_stage_loads_with_the_vector_shape(tmp_path):
    mlp = create_model(MLPConfig(dim=2, hidden=16, depth=1))
    save_checkpoint(tmp_path / "toy.pt", {"model_config": mlp.config.to_dict(), "model": mlp.state_dict(),
                                          "diffusion_config": DiffusionConfig(steps=50).to_dict()})
    stage = load_cascade_stage(tmp_path / "toy.pt", steps="5")
    assert stage.shape == (2,)
    assert Cascade([stage]).sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, 2)


def test_cascade_forwards_cond_at_to_a_ddpm_base_stage():
    """Cascade.sample(cond_at=...) is where the base stage's guidance gradient is taken: the
    result equals the diffusion's own guided p_sample_loop, and 'mean' differs from 'x_t'."""
    toy = GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), std=0.3)
    diffusion = _diffusion(50, "cosine")
    eps_model = toy.eps_model(diffusion.alphas_cumprod)
    cond_fn = classifier_cond_fn(toy.classifier(diffusion.alphas_cumprod), scale=4.0)
    cascade = Cascade([CascadeStage(eps_model, diffusion, (2,), sampler="ddpm", clip_denoised=False)])
    y = torch.tensor([0, 1, 0, 1])
    results = {}
    for cond_at in ("x_t", "mean"):
        results[cond_at] = cascade.sample(4, y=y, cond_fn=cond_fn, cond_at=cond_at,
                                          generator=torch.Generator().manual_seed(3))
        generator = torch.Generator().manual_seed(3)  # one stream: z_T first, then the step noise
        noise = torch.randn((4, 2), generator=generator)
        direct = diffusion.p_sample_loop(eps_model, (4, 2), noise=noise, clip_denoised=False, cond_fn=cond_fn,
                                         model_kwargs={"y": y}, cond_at=cond_at, generator=generator)
        assert torch.allclose(results[cond_at], direct, atol=1e-6), cond_at
    assert (results["x_t"] - results["mean"]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- crops for SR training


def test_random_crops_are_aligned_windows_that_commute_with_downsampling():
    from gcg.cascade import random_crops
    from gcg.images import downsample

    x = _images(2000, c=1, size=32, seed=3)
    crops, offsets = random_crops(x, 16, generator=torch.Generator().manual_seed(0), align=2)
    assert crops.shape == (2000, 1, 16, 16) and offsets.shape == (2000, 2)
    assert (offsets % 2 == 0).all() and offsets.min() >= 0 and offsets.max() <= 16
    # every even offset 0, 2, ..., 16 occurs on both axes (uniform over the 9 choices)
    assert sorted(offsets[:, 0].unique().tolist()) == list(range(0, 17, 2))
    assert sorted(offsets[:, 1].unique().tolist()) == list(range(0, 17, 2))
    for i in range(0, 2000, 97):
        r, c = offsets[i].tolist()
        assert torch.equal(crops[i], x[i, :, r:r + 16, c:c + 16])
    # D(crop) is the matching crop of D(x): the (low, high) pairs of whole images
    low, low_crops = downsample(x, 16), downsample(crops, 8)
    for i in range(0, 2000, 97):
        r, c = (offsets[i] // 2).tolist()
        torch.testing.assert_close(low_crops[i], low[i, :, r:r + 8, c:c + 8])
    again, _ = random_crops(x, 16, generator=torch.Generator().manual_seed(0), align=2)
    assert torch.equal(again, crops)


def test_random_crops_bad_input():
    from gcg.cascade import random_crops

    x = _images(4, size=32)
    with pytest.raises(ValueError, match="multiple of align"):
        random_crops(x, 15, align=2)
    with pytest.raises(ValueError, match=r"crop size must lie in \[1, 32\]"):
        random_crops(x, 34)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        random_crops(x[0], 16)


def test_glyph_sr_preset_trains_on_crops_and_runs_on_whole_images():
    """The glyphs32-sr16 network is fully convolutional (plus size-agnostic attention): built for
    16x16 crops, it takes 32x32 images with 16x16 conditions."""
    from gcg.presets import get_preset
    from gcg.train import build_model_config

    cfg = dataclasses.replace(get_preset("glyphs32-sr16"), image_size=16, low_res_size=8)
    model = create_model(build_model_config(cfg, (1, 16, 16), 10))
    n = 2
    kw = dict(y=torch.tensor([1, 2]), aug_level=torch.tensor([0.0, 100.0]))
    out_crop = model(_images(n, size=16), torch.tensor([5, 9]), low_res=_images(n, size=8), **kw)
    out_full = model(_images(n, size=32), torch.tensor([5, 9]), low_res=_images(n, size=16), **kw)
    assert out_crop.shape == (n, 1, 16, 16) and out_full.shape == (n, 1, 32, 32)
    assert model.config.attention_resolutions == () and model.config.aug_level_cond
