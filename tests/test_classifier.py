"""The noise-aware classifier (EncoderUNetModel): shapes, heads, conditioning on t, gradients."""

import math

import pytest
import torch

from gcg.nn.classifier import EncoderUNetModel
from gcg.nn.config import ClassifierConfig, create_model
from gcg.nn.layers import AttentionPool2d

BASE = dict(image_size=16, in_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(8,), num_head_channels=16, num_classes=7)


def randomize(model, std=0.1):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def make(**overrides):
    return randomize(EncoderUNetModel(ClassifierConfig(**{**BASE, **overrides})))


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(pool="adaptive"),
    dict(resblock_updown=False, use_scale_shift_norm=False, use_new_attention_order=True),
    dict(num_head_channels=-1, num_heads=2, channel_mult=(1, 1, 2), attention_resolutions=(16, 4), dropout=0.1),
])
def test_logit_shape(overrides):
    model = make(**overrides)
    x, t = torch.randn(3, 3, 16, 16), torch.randint(0, 1000, (3,))
    logits = model(x, t)
    assert logits.shape == (3, 7) and logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("pool", ["attention", "adaptive"])
def test_logits_depend_on_timestep_and_gradients_reach_every_parameter(pool):
    model = make(pool=pool)
    x, t = torch.randn(3, 3, 16, 16), torch.randint(0, 1000, (3,))
    logits = model(x, t)
    assert not torch.allclose(logits, model(x, t + 100), atol=1e-4)
    torch.log_softmax(logits, -1)[:, 0].sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_input_gradient_for_guidance():
    """Classifier guidance needs grad_x log p(y | x_t, t) (Dhariwal & Nichol 2021, Alg. 1)."""
    model = make().eval()
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    log_p = torch.log_softmax(model(x, torch.tensor([10, 500])), -1)[:, 3].sum()
    (grad,) = torch.autograd.grad(log_p, x)
    assert grad.shape == x.shape and grad.abs().sum() > 0


def test_eval_determinism_and_bf16_autocast():
    model = make(dropout=0.5).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 999])
    torch.testing.assert_close(model(x, t), model(x, t), rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(x, t)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, model(x, t), atol=0.1, rtol=0.1)


def test_attention_pool_by_definition():
    """The query is the mean token (plus its position embedding); one head attends over all tokens."""
    pool = randomize(AttentionPool2d(spatial_dim=2, embed_dim=32, num_head_channels=32, output_dim=5))
    x = torch.randn(2, 32, 2, 2)
    tokens = torch.cat([x.flatten(2).mean(-1, keepdim=True), x.flatten(2)], -1) + pool.positional_embedding
    q, k, v = torch.nn.functional.conv1d(tokens, pool.qkv_proj.weight, pool.qkv_proj.bias).chunk(3, dim=1)
    w = torch.softmax(q[:, :, :1].transpose(1, 2) @ k / math.sqrt(32), dim=-1)  # [N, 1, T]
    expected = torch.nn.functional.conv1d((v @ w.transpose(1, 2)), pool.c_proj.weight, pool.c_proj.bias)[:, :, 0]
    torch.testing.assert_close(pool(x), expected, atol=1e-5, rtol=1e-5)


def test_wrong_image_size_raises():
    model = make()
    with pytest.raises(ValueError, match=r"x must be \[N, 3, 16, 16\]"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="timesteps must have shape"):
        model(torch.randn(2, 3, 16, 16), torch.tensor([1]))


def test_small_classifier_presets_run():
    for name in ("tiny_classifier", "digits8_classifier", "patch32_classifier"):
        model = create_model(name).eval()
        cfg = model.config
        x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
        assert model(x, torch.tensor([0, 999])).shape == (2, cfg.num_classes)
