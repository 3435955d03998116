"""Tests for gcg.guidance: classifier guidance and classifier-free guidance.

Part 1 checks the guidance helpers against closed forms (a softmax-linear classifier, whose
log-likelihood gradient is W_y - sum_k p_k W_k). Part 2 (below) checks guided sampling in
gcg.diffusion against the exact Gaussian-mixture toy of gcg.toy.
"""

import math

import pytest
import torch
from conftest import requires_cuda

from gcg.diffusion import GaussianDiffusion
from gcg.guidance import (
    ClassifierFreeGuidance,
    class_purity,
    classifier_cond_fn,
    label_dropout,
    tilted_conditional_resample,
)
from gcg.metrics import energy_distance
from gcg.schedules import get_named_beta_schedule
from gcg.toy import GaussianMixture


class LinearClassifier(torch.nn.Module):
    """logits = W x_flat + b + t * c, with dropout so that eval mode matters."""

    def __init__(self, dim, num_classes, p_drop=0.5):
        super().__init__()
        self.lin = torch.nn.Linear(dim, num_classes)
        self.c = torch.nn.Parameter(torch.randn(num_classes))
        self.drop = torch.nn.Dropout(p_drop)

    def forward(self, x, t):
        return self.lin(self.drop(x.flatten(1))) + t.to(x.dtype)[:, None] * self.c


def closed_form_grad(clf, x, t, y):
    """grad_x log softmax(W x + b + t c)[y] = W_y - sum_k p(k | x) W_k, reshaped like x."""
    with torch.no_grad():
        p = torch.softmax(clf.lin(x.flatten(1)) + t.to(x.dtype)[:, None] * clf.c, dim=1)
        w = clf.lin.weight
        return (w[y] - p @ w).view_as(x)


def test_cond_fn_matches_closed_form_gradient_and_scale():
    clf = LinearClassifier(3 * 4 * 4, 5).double()
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 10, 50, 99, 3, 7])
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    expected = closed_form_grad(clf, x, t, y)
    for scale in (0.0, 1.0, 3.5):
        got = classifier_cond_fn(clf, scale)(x, t, y=y)
        torch.testing.assert_close(got, scale * expected, rtol=1e-12, atol=1e-12)


def test_cond_fn_eval_mode_no_grad_callers_and_no_graph_leak():
    clf = LinearClassifier(8, 3).double()
    clf.train()
    cond_fn = classifier_cond_fn(clf, 2.0)
    assert not clf.training, "classifier_cond_fn must put the classifier in eval mode (dropout off)"
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    t = torch.full((4,), 5)
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        g1 = cond_fn(x, t, y=y)
        g2 = cond_fn(x, t, y=y)
    assert torch.equal(g1, g2)  # dropout is off: deterministic
    assert not g1.requires_grad and g1.grad_fn is None
    assert x.grad is None
    assert all(p.grad is None for p in clf.parameters())
    torch.testing.assert_close(g1, 2.0 * closed_form_grad(clf, x.detach(), t, y))


def test_cond_fn_batched_rows_are_independent():
    clf = LinearClassifier(5, 4).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    t = torch.arange(7)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    cond_fn = classifier_cond_fn(clf)
    batched = cond_fn(x, t, y=y)
    single = torch.cat([cond_fn(x[i : i + 1], t[i : i + 1], y=y[i : i + 1]) for i in range(7)])
    torch.testing.assert_close(batched, single, rtol=1e-12, atol=1e-12)


def test_cond_fn_passes_timesteps_unchanged_and_ignores_model_kwargs():
    seen = []

    def spy(x, t):
        seen.append(t.clone())
        return torch.stack([x.sum(1), -x.sum(1)], dim=1)

    t = torch.tensor([999, 0, 517])
    classifier_cond_fn(spy)(torch.randn(3, 2), t, y=torch.tensor([0, 1, 0]), low_res=torch.zeros(3))
    assert len(seen) == 1 and torch.equal(seen[0], t)


def test_cond_fn_errors_are_clear():
    clf = LinearClassifier(4, 3)
    cond_fn = classifier_cond_fn(clf)
    x, t = torch.randn(2, 4), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="model_kwargs=\\{'y': labels\\}"):
        cond_fn(x, t)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        cond_fn(x, t, y=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="one label per example"):
        cond_fn(x, t, y=torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer class labels"):
        cond_fn(x, t, y=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"logits of shape \[N, num_classes\]"):
        classifier_cond_fn(lambda x, t: x.sum())(x, t, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="do not depend differentiably on x"):
        classifier_cond_fn(lambda x, t: clf(x.detach(), t))(x, t, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="do not depend differentiably on x"):
        classifier_cond_fn(lambda x, t: torch.zeros(len(x), 3))(x, t, y=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="callable"):
        classifier_cond_fn("not a model")
    with pytest.raises(ValueError, match="finite"):
        classifier_cond_fn(clf, float("nan"))


class TinyCondModel(torch.nn.Module):
    """eps(x, t, y) = x * a[y] + b[y] + t * 1e-3 (+ variance channels v = x * d[y]); K + 1 labels."""

    def __init__(self, channels, num_classes, learn_sigma=False):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(num_classes + 1))
        self.b = torch.nn.Parameter(torch.randn(num_classes + 1, channels))
        self.d = torch.nn.Parameter(torch.randn(num_classes + 1))
        self.learn_sigma = learn_sigma
        self.calls = []

    def forward(self, x, t, y=None, low_res=None):
        self.calls.append(x.shape[0])
        shape = (-1,) + (1,) * (x.ndim - 1)
        bshape = (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)
        eps = x * self.a[y].view(shape) + self.b[y].view(bshape) + 1e-3 * t.to(x.dtype).view(shape)
        if low_res is not None:
            eps = eps + low_res
        if self.learn_sigma:
            return torch.cat([eps, x * self.d[y].view(shape)], dim=1)
        return eps


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_cfg_formula_one_batched_forward_and_variance_passthrough(learn_sigma):
    model = TinyCondModel(3, 4, learn_sigma).double()
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([1, 2, 3, 4, 5])
    y = torch.tensor([0, 1, 2, 3, 0])
    null = torch.full_like(y, 4)
    with torch.no_grad():
        cond, uncond = model(x, t, y=y), model(x, t, y=null)
        for w in (0.0, 0.5, 3.0):
            model.calls.clear()
            out = ClassifierFreeGuidance(model, w, null_label=4)(x, t, y=y)
            assert model.calls == [10], "conditional and unconditional halves must share one forward"
            assert out.shape == cond.shape
            torch.testing.assert_close(out[:, :3], (1 + w) * cond[:, :3] - w * uncond[:, :3])
            if learn_sigma:
                assert torch.equal(out[:, 3:], cond[:, 3:])
        assert torch.equal(ClassifierFreeGuidance(model, 0.0, 4)(x, t, y=y), cond)  # w = 0: conditional model


def test_cfg_doubles_per_example_kwargs_and_supports_none_null_label():
    model = TinyCondModel(2, 3).double()
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    t = torch.arange(4)
    y = torch.tensor([0, 1, 2, 0])
    low_res = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        expected = 3 * model(x, t, y=y, low_res=low_res) - 2 * model(x, t, y=torch.full_like(y, 3), low_res=low_res)
        got = ClassifierFreeGuidance(model, 2.0, 3)(x, t, y=y, low_res=low_res)
        torch.testing.assert_close(got, expected)

    def toy_like(x, t, y=None):  # unconditional when y is None, like gcg.toy's exact eps models
        return x * 0.5 if y is None else x * 0.5 + y.to(x.dtype)[:, None]

    # a per-example [N] kwarg is repeated for the 2N batch; a scalar (0-d) tensor is passed unchanged
    seen = []
    recorder = lambda x, t, y=None, aug_level=None, temperature=None: seen.append((aug_level, temperature)) or x
    ClassifierFreeGuidance(recorder, 1.0, 3)(x, t, y=y, aug_level=torch.arange(4.0), temperature=torch.tensor(2.0))
    aug_level, temperature = seen[0]
    assert torch.equal(aug_level, torch.arange(4.0).repeat(2))
    assert temperature.ndim == 0 and float(temperature) == 2.0

    x2 = torch.randn(3, 2, dtype=torch.float64)
    got = ClassifierFreeGuidance(toy_like, 1.5, null_label=None)(x2, torch.zeros(3, dtype=torch.long), y=torch.tensor([0, 1, 2]))
    torch.testing.assert_close(got, x2 * 0.5 + 2.5 * torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)[:, None])


def test_cfg_errors_are_clear():
    model = TinyCondModel(2, 3)
    x, t = torch.randn(2, 2, 2, 2), torch.zeros(2, dtype=torch.long)
    guided = ClassifierFreeGuidance(model, 1.0, 3)
    with pytest.raises(ValueError, match="needs the class labels"):
        guided(x, t)
    with pytest.raises(ValueError, match="null label 3"):
        guided(x, t, y=torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="null_label must be an int"):
        ClassifierFreeGuidance(model, 1.0, 3.0)
    with pytest.raises(ValueError, match=r"expected 2 \(eps\) or 4"):
        ClassifierFreeGuidance(lambda x, t, y=None: x[:, :1], 1.0, 3)(x, t, y=torch.tensor([0, 1]))


def test_label_dropout_rate_reproducibility_and_edges():
    y = torch.randint(0, 10, (20000,))
    y_copy = y.clone()
    assert torch.equal(label_dropout(y, 0.0, 10), y)
    assert torch.equal(label_dropout(y, 1.0, 10), torch.full_like(y, 10))
    out = label_dropout(y, 0.2, 10, generator=torch.Generator().manual_seed(1))
    again = label_dropout(y, 0.2, 10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and torch.equal(y, y_copy)
    dropped = out == 10
    assert torch.equal(out[~dropped], y[~dropped])
    # Binomial(20000, 0.2): sd = 56.6; allow 5 sd.
    assert abs(int(dropped.sum()) - 4000) < 5 * 56.6
    with pytest.raises(ValueError, match=r"probability in \[0, 1\]"):
        label_dropout(y, 1.5, 10)
    with pytest.raises(ValueError, match=r"1-D LongTensor of labels \[N\], got torch.Size\(\[2, 2\]\)"):
        label_dropout(torch.zeros(2, 2, dtype=torch.long), 0.5, 10)


def test_class_purity_hand_values():
    log_probs = torch.log(torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]]))
    hard, soft = class_purity(log_probs, torch.tensor([0, 0, 1]))
    assert hard == pytest.approx(2 / 3)
    assert soft == pytest.approx((0.9 + 0.4 + 0.8) / 3)


def test_tilted_resample_matches_gaussian_tilt():
    # p(x|y) = N(0, 1) and log p(y|x) = -x^2 / 2 + const: the tilt p(x|y) p(y|x)^(s-1) is N(0, 1/s).
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200000, 1, generator=gen, dtype=torch.float64)
    same, ess = tilted_conditional_resample(x, -x[:, 0] ** 2 / 2, 1.0, 10, generator=gen)
    assert ess == pytest.approx(200000)
    for s in (2.0, 4.0):
        xs, ess = tilted_conditional_resample(x, -x[:, 0] ** 2 / 2 - 3.0, s, 50000, generator=gen)
        # ESS of N(0,1) -> N(0,1/s) weights is M sqrt(2s-1)/s; variance estimate of 50k draws: rel. sd ~ 0.6%.
        assert ess == pytest.approx(200000 * (2 * s - 1) ** 0.5 / s, rel=0.02)
        assert xs.var().item() == pytest.approx(1 / s, rel=0.04)


# --------------------------------------------------------------------------------------------------
# Part 2: guided sampling in gcg.diffusion against the exact Gaussian-mixture toy of gcg.toy.
# Toy: 3 classes on a ring (radius 1, std 0.6, so classes overlap: E p(y | x) = 0.81 under p(x|y)),
# linear schedule, T = 1000. The exact unconditional eps-model plus the exact noisy classifier
# p(y | x_t) sample p(x | y) exactly in the small-step limit.

RADIUS, STD, K = 1.0, 0.6, 3


@pytest.fixture(scope="module")
def toy():
    gm = GaussianMixture.ring(num_classes=K, radius=RADIUS, std=STD)
    base = GaussianDiffusion(get_named_beta_schedule("linear", 1000))
    eps = gm.eps_model(base)

    def unconditional(x, t, y=None):  # y is in model_kwargs for the cond_fn; this model ignores it
        return eps(x, t)

    return dict(gm=gm, base=base, eps=eps, unconditional=unconditional, classifier=gm.classifier(base))


def sample(chain, loop, model, n, y, cond_fn=None, seed=0, **kw):
    """Seeded toy sampling in float64 (shared initial noise and per-step noise for equal seeds)."""
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return getattr(chain, loop)(
        model, (n, 2), noise=noise, clip_denoised=False, cond_fn=cond_fn, model_kwargs={"y": y},
        generator=torch.Generator().manual_seed(seed + 1), **kw,
    )


def hand_classifier_grad(x, alpha_bar, y):
    """grad_x log p(y | x_t) for the equal-weight isotropic ring, written out by hand:
    x_t | k ~ N(sqrt(ab) mu_k, s2 I), s2 = ab std^2 + 1 - ab, so
    grad log p(y | x_t) = sqrt(ab) / s2 * (mu_y - sum_k p(k | x_t) mu_k)."""
    angles = 2 * math.pi * torch.arange(K, dtype=torch.float64) / K
    mu = RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)  # [K, 2]
    ab = torch.as_tensor(alpha_bar, dtype=torch.float64).reshape(-1, 1)
    s2 = ab * STD**2 + 1 - ab
    logits = -((x[:, None, :] - ab.sqrt()[:, :, None] * mu) ** 2).sum(-1) / (2 * s2)
    p = torch.softmax(logits, dim=1)
    return ab.sqrt() / s2 * (mu[y] - p @ mu)


def test_exact_toy_classifier_gradient_matches_hand_formula(toy):
    x = torch.randn(8, 2, dtype=torch.float64)
    y = torch.arange(8) % K
    t = torch.tensor([0, 3, 50, 200, 400, 700, 900, 999])
    ab = toy["base"].alphas_cumprod[t]
    got = classifier_cond_fn(toy["classifier"], 2.5)(x, t, y=y)
    torch.testing.assert_close(got, 2.5 * hand_classifier_grad(x, ab, y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cond_at", ["x_t", "mean"])
@pytest.mark.parametrize("respacing", [None, "50"])
def test_condition_mean_against_hand_values(toy, cond_at, respacing):
    """DDPM form, Dhariwal & Nichol Algorithm 1: mu + s Sigma grad log p(y | x) with Sigma = beta_tilde."""
    chain = toy["base"] if respacing is None else toy["base"].respace(respacing)
    x = torch.randn(6, 2, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    t = torch.tensor([0, 1, 5, 17, 30, 49])
    out = chain.p_mean_variance(toy["unconditional"], x, t, clip_denoised=False)
    new_mean = chain.condition_mean(classifier_cond_fn(toy["classifier"], 3.0), out, x, t, {"y": y}, cond_at=cond_at)

    ac = toy["base"].alphas_cumprod[chain.timestep_map]  # alpha_bar of this chain's steps, by hand
    ab, ab_prev = ac[t], torch.where(t > 0, ac[(t - 1).clamp(min=0)], torch.ones(()))
    beta_tilde = (1 - ab / ab_prev) * (1 - ab_prev) / (1 - ab)
    # the derivation's point: mu, at the noise level of x_{t-1} (the lowest level at the last step)
    point, level = (x, ab) if cond_at == "x_t" else (out["mean"], ac[(t - 1).clamp(min=0)])
    expected = out["mean"] + beta_tilde[:, None] * 3.0 * hand_classifier_grad(point, level, y)
    torch.testing.assert_close(new_mean, expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(new_mean[1:], out["mean"][1:])  # the shift is not vacuous (beta_tilde_0 = 0)


@pytest.mark.parametrize("respacing", [None, "ddim25"])
def test_condition_score_against_hand_values(toy, respacing):
    """DDIM form, Dhariwal & Nichol Algorithm 2: eps_hat = eps - sqrt(1 - ab) s grad log p(y | x_t),
    x0_hat = (x - sqrt(1 - ab) eps_hat) / sqrt(ab), mean = posterior mean q(x_{t-1} | x_t, x0_hat)."""
    chain = toy["base"] if respacing is None else toy["base"].respace(respacing)
    x = torch.randn(5, 2, dtype=torch.float64)
    y = torch.tensor([2, 1, 0, 2, 1])
    t = torch.tensor([0, 2, 9, 15, 24])
    out = chain.p_mean_variance(toy["unconditional"], x, t, clip_denoised=False)
    got = chain.condition_score(classifier_cond_fn(toy["classifier"], 2.0), out, x, t, {"y": y})

    ac = toy["base"].alphas_cumprod[chain.timestep_map]
    ab, ab_prev = ac[t][:, None], torch.where(t > 0, ac[(t - 1).clamp(min=0)], torch.ones(()))[:, None]
    eps = toy["eps"](x, chain.timestep_map[t])
    eps_hat = eps - (1 - ab).sqrt() * 2.0 * hand_classifier_grad(x, ab[:, 0], y)
    x0 = (x - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
    beta = 1 - ab / ab_prev
    mean = (beta * ab_prev.sqrt() * x0 + (1 - ab_prev) * (1 - beta).sqrt() * x) / (1 - ab)
    torch.testing.assert_close(got["pred_xstart"], x0, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got["mean"], mean, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    "loop,kw",
    [("p_sample_loop", {"cond_at": "x_t"}), ("p_sample_loop", {"cond_at": "mean"}),
     ("ddim_sample_loop", {"eta": 0.0}), ("ddim_sample_loop", {"eta": 1.0})],
)
@pytest.mark.parametrize("conditional_model", [False, True])
def test_scale_zero_reproduces_unguided_sampling(toy, loop, kw, conditional_model):
    model = toy["eps"] if conditional_model else toy["unconditional"]
    chain = toy["base"].respace("ddim20" if loop.startswith("ddim") else "20")
    y = torch.arange(48) % K
    unguided = sample(chain, loop, model, 48, y, **kw)
    guided = sample(chain, loop, model, 48, y, cond_fn=classifier_cond_fn(toy["classifier"], 0.0), **kw)
    if loop == "p_sample_loop":
        assert torch.equal(guided, unguided)  # mu + Sigma * 0 is mu, bit for bit
    else:  # the score form round-trips x0 -> eps -> x0: equal up to float64 rounding
        torch.testing.assert_close(guided, unguided, rtol=1e-12, atol=1e-12)
    assert not torch.equal(sample(chain, loop, model, 48, y, cond_fn=classifier_cond_fn(toy["classifier"], 1.0), **kw), unguided)


@pytest.mark.parametrize("loop,spec", [("p_sample_loop", "10"), ("ddim_sample_loop", "ddim10")])
def test_respaced_classifier_sees_original_timesteps(toy, loop, spec):
    chain = toy["base"].respace(spec)
    seen_classifier, seen_model = [], []

    def classifier(x, t):
        seen_classifier.append(t.clone())
        return toy["classifier"](x, t)

    def model(x, t, y=None):
        seen_model.append(t.clone())
        return toy["eps"](x, t)

    sample(chain, loop, model, 6, torch.arange(6) % K, cond_fn=classifier_cond_fn(classifier))
    expected = chain.timestep_map.flip(0)
    assert int(expected[0]) >= 900  # original timesteps, not chain indices 0..9
    assert torch.equal(torch.stack([t[0] for t in seen_classifier]), expected)
    assert all(bool((t == t[0]).all()) for t in seen_classifier)
    assert torch.equal(torch.stack([t[0] for t in seen_model]), expected)


def test_cfg_w0_equals_conditional_model_and_cfg_equals_score_guidance_at_1_plus_w(toy):
    """With exact models, eps_u + (1 + w)(eps_c - eps_u) = eps_u - sqrt(1 - ab)(1 + w) grad log p(y | x_t):
    classifier-free guidance at w IS classifier guidance in score form (DDIM) at s = 1 + w."""
    chain = toy["base"].respace("ddim20")
    y = torch.arange(48) % K
    cfg0 = sample(chain, "ddim_sample_loop", ClassifierFreeGuidance(toy["eps"], 0.0, null_label=K), 48, y)
    torch.testing.assert_close(cfg0, sample(chain, "ddim_sample_loop", toy["eps"], 48, y), rtol=1e-12, atol=1e-12)
    for w in (1.0, 3.0):
        cfg = sample(chain, "ddim_sample_loop", ClassifierFreeGuidance(toy["eps"], w, null_label=K), 48, y, eta=1.0)
        guided = sample(chain, "ddim_sample_loop", toy["unconditional"], 48, y,
                        cond_fn=classifier_cond_fn(toy["classifier"], 1 + w), eta=1.0)
        torch.testing.assert_close(cfg, guided, rtol=1e-9, atol=1e-9)


N_CONV, STEPS = 600, (10, 40, 160)


@pytest.fixture(scope="module")
def convergence(toy):
    """Guided samples (s = 1) of the unconditional exact model for 10, 40, 160 DDPM steps, with the
    gradient at x_t, in DDIM form (eta = 1, same noise) and (10, 40 steps) at the mean; s = 4 at 160 steps."""
    y = torch.arange(N_CONV) % K
    cond_fn = classifier_cond_fn(toy["classifier"], 1.0)
    runs = {}
    for steps in STEPS:
        chain = toy["base"].respace(str(steps))
        runs["x_t", steps] = sample(chain, "p_sample_loop", toy["unconditional"], N_CONV, y, cond_fn, cond_at="x_t")
        if steps < 160:
            runs["mean", steps] = sample(chain, "p_sample_loop", toy["unconditional"], N_CONV, y, cond_fn, cond_at="mean")
        runs["ddim", steps] = sample(chain, "ddim_sample_loop", toy["unconditional"], N_CONV, y, cond_fn, eta=1.0)
    runs["s4", 160] = sample(chain, "p_sample_loop", toy["unconditional"], N_CONV, y,
                             classifier_cond_fn(toy["classifier"], 4.0), seed=7)
    gen = torch.Generator().manual_seed(123)
    exact = toy["gm"].means[y] + STD * torch.randn(N_CONV, 2, generator=gen, dtype=torch.float64)

    def purity(x):
        return class_purity(toy["gm"].posterior_logits(x, 1.0), y)[1]

    def distance(x):  # mean over classes of the energy distance to exact p(x | y) samples
        return sum(energy_distance(x[y == k], exact[y == k]) for k in range(K)) / K

    def spread(x):  # mean over classes of the trace of the sample covariance
        return sum(torch.cov(x[y == k].T).trace().item() for k in range(K)) / K

    return dict(runs=runs, y=y, exact=exact, purity=purity, distance=distance, spread=spread, gm=toy["gm"])


def test_guided_sampling_approaches_exact_conditional_as_steps_grow(convergence):
    """s = 1: measured purity E p(y | x) 0.574 / 0.755 / 0.797 (exact 0.815; sd of a 600-sample
    estimate ~0.01) and energy distance 0.219 / 0.017 / -0.001 (noise ~0.003) at 10 / 40 / 160 steps."""
    c = convergence
    x_big, y_big = c["gm"].sample(200000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact_purity = class_purity(c["gm"].posterior_logits(x_big, 1.0), y_big)[1]
    purity = [c["purity"](c["runs"]["x_t", s]) for s in STEPS]
    dist = [c["distance"](c["runs"]["x_t", s]) for s in STEPS]
    errors = [abs(p - exact_purity) for p in purity]
    assert errors[0] > errors[1] > errors[2], (purity, exact_purity)
    assert dist[0] > dist[1] > dist[2], dist
    assert errors[0] > 0.15 and dist[0] > 0.1  # 10 steps: clearly under-guided
    assert errors[2] < 0.04, (purity, exact_purity)  # 160 steps: the exact conditional within ~3 sd
    assert dist[2] < 0.01, dist


def test_scale_above_one_raises_purity_and_shrinks_spread(convergence):
    c = convergence
    x1, x4 = c["runs"]["x_t", 160], c["runs"]["s4", 160]
    assert c["purity"](x4) > c["purity"](x1) + 0.1  # measured 0.981 vs 0.797
    assert c["spread"](x4) < 0.8 * c["spread"](x1)  # covariance trace, measured 0.47 vs 0.76
    assert c["distance"](x4) > 0.1  # s = 4 no longer samples p(x | y)


def test_ddpm_and_ddim_form_guidance_agree_in_the_small_step_limit(convergence):
    """Same noise, DDPM mean shift (Sigma g) vs DDIM eta = 1 score shift (sqrt(1 - ab) g on eps): the
    per-step means differ by O(beta^2 g), so the pathwise RMS gap shrinks ~1/steps
    (measured 0.67 / 0.22 / 0.061 at 10 / 40 / 160 steps)."""
    runs = convergence["runs"]
    gap = [((runs["x_t", s] - runs["ddim", s]) ** 2).sum(1).mean().sqrt().item() for s in STEPS]
    assert gap[0] > 2 * gap[1] > 4 * gap[2], gap
    assert gap[2] < 0.1, gap
    assert abs(convergence["distance"](runs["ddim", 160])) < 0.01


def test_gradient_at_x_t_vs_at_mean(convergence):
    """The reference code takes grad log p(y | .) at x_t and noise level t; the derivation expands
    log p(y | x_{t-1}) around mu, i.e. at mu and the noise level of x_{t-1} (cond_at="mean").
    The two differ by O(1/steps), and at few steps the derivation's point is the better one:
    it lands closer to the exact conditional p(x | y) (benchmarks/guidance_toy.py, 10 steps, n = 1000:
    purity 0.52 -> 0.67 against the exact 0.815, energy distance 0.217 -> 0.074)."""
    c = convergence
    runs = c["runs"]
    gap = [((runs["x_t", s] - runs["mean", s]) ** 2).sum(1).mean().sqrt().item() for s in STEPS[:2]]
    assert gap[0] > 2 * gap[1] > 0, gap
    assert c["distance"](runs["mean", 10]) < 0.7 * c["distance"](runs["x_t", 10])
    assert c["purity"](runs["mean", 10]) > c["purity"](runs["x_t", 10]) + 0.05


# --------------------------------------------------------------------------------------------------
# Part 3: end to end through the command line, with tiny random networks (CPU, a few seconds).


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    from gcg.checkpoint import save_checkpoint
    from gcg.diffusion import DiffusionConfig
    from gcg.nn import create_model, get_preset

    root = tmp_path_factory.mktemp("guidance_cli")
    torch.manual_seed(0)
    unet_config, clf_config = get_preset("tiny"), get_preset("tiny_classifier")  # 3 classes + null row
    diffusion_config = DiffusionConfig(steps=40, noise_schedule="cosine", model_var_type="learned_range").to_dict()
    for name, config, diff in [("unet", unet_config, diffusion_config), ("classifier", clf_config, None)]:
        model = create_model(config)
        with torch.no_grad():  # random, but not the zero-initialised output layers: outputs must move
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        save_checkpoint(root / f"{name}.pt", {"model_config": config.to_dict(), "diffusion_config": diff,
                                               "model": model.state_dict(), "ema": {}, "step": 0})
    return root


def run_cli(root, out, *extra):
    import numpy as np

    from gcg.sample import main

    argv = [str(root / "unet.pt"), "--out-dir", str(root / out), "--num-samples", "6", "--steps", "4",
            "--class-labels", "0,1,2,0,1,2", "--seed", "3", "--no-progress", *extra]
    assert main(argv) == 0
    (path,) = (root / out).glob("samples_*.npz")
    with np.load(path) as data:
        return data["arr_0"], data["arr_1"]


def test_cli_classifier_and_classifier_free_guidance_end_to_end(tiny_checkpoints):
    root = tiny_checkpoints
    plain, labels = run_cli(root, "plain")
    assert plain.shape == (6, 8, 8, 1) and plain.dtype.name == "uint8"
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
    classifier = ["--classifier", str(root / "classifier.pt")]
    zero, _ = run_cli(root, "scale0", *classifier, "--classifier-scale", "0")
    assert (zero == plain).all()  # scale 0 through the CLI is the unguided sampler
    guided, _ = run_cli(root, "scale30", *classifier, "--classifier-scale", "30", "--cond-at", "mean")
    assert (guided != plain).any()
    ddim, _ = run_cli(root, "ddim", *classifier, "--classifier-scale", "30", "--sampler", "ddim")
    assert ddim.shape == plain.shape
    cfg, _ = run_cli(root, "cfg", "--cfg-scale", "3")
    assert (cfg != plain).any()


@requires_cuda
def test_guided_ddim_on_cuda_matches_cpu(toy):
    """Deterministic DDIM (eta = 0) with classifier guidance and with CFG: same x_T, CPU vs CUDA."""
    chain = toy["base"].respace("ddim10")
    y = torch.arange(30) % K
    x_T = torch.randn(30, 2, dtype=torch.float64)
    runs = {}
    for device in ("cpu", "cuda"):
        kw = dict(noise=x_T.to(device), clip_denoised=False, model_kwargs={"y": y.to(device)}, device=device)
        runs[device, "cg"] = chain.ddim_sample_loop(toy["unconditional"], x_T.shape,
                                                    cond_fn=classifier_cond_fn(toy["classifier"], 2.0), **kw)
        runs[device, "cfg"] = chain.ddim_sample_loop(ClassifierFreeGuidance(toy["eps"], 1.0, null_label=K), x_T.shape, **kw)
    for kind in ("cg", "cfg"):
        assert runs["cuda", kind].device.type == "cuda"
        torch.testing.assert_close(runs["cuda", kind].cpu(), runs["cpu", kind], rtol=1e-9, atol=1e-9)
