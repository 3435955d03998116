"""Tests for gcg.guidance: classifier guidance and classifier-free guidance.

Part 1 checks the guidance helpers against closed forms (a softmax-linear classifier, whose
log-likelihood gradient is W_y - sum_k p_k W_k). Part 2 (below) checks guided sampling in
gcg.diffusion against the exact Gaussian-mixture toy of gcg.toy.
"""

import pytest
import torch

from gcg.guidance import (
    ClassifierFreeGuidance,
    class_purity,
    classifier_cond_fn,
    label_dropout,
    tilted_conditional_resample,
)


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
