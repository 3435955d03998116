"""The ADM UNet and its layers: shapes for every switch, conditioning, determinism, gradients,
checkpointing, mixed precision, attention against its definition."""

import math

import pytest
import torch
import torch.nn.functional as F

import gcg.nn.layers as layers
from gcg.nn.config import UNetConfig, create_model
from gcg.nn.layers import GroupNorm32, QKVAttention, set_attention_backend, timestep_embedding
from gcg.nn.unet import UNetModel

BASE = dict(image_size=8, in_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
            attention_resolutions=(4,), num_head_channels=16)


def randomize(model, std=0.1):
    """Replace the zero-initialised output layers by random weights so every path matters."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def make(**overrides):
    return randomize(UNetModel(UNetConfig(**{**BASE, **overrides})))


def inputs(cfg, n=2):
    x = torch.randn(n, cfg.in_channels, cfg.image_size, cfg.image_size)
    t = torch.randint(0, 1000, (n,))
    kw = {}
    if cfg.num_classes is not None:
        kw["y"] = torch.randint(0, cfg.num_classes, (n,))
    if cfg.super_res:
        kw["low_res"] = torch.randn(n, cfg.in_channels, cfg.image_size // 2, cfg.image_size // 2)
    if cfg.aug_level_cond:
        kw["aug_level"] = torch.rand(n) * 500
    return x, t, kw


SWITCHES = [
    dict(),
    dict(use_scale_shift_norm=False, resblock_updown=False),
    dict(resblock_updown=True, conv_resample=False, learn_sigma=True),
    dict(resblock_updown=False, conv_resample=False, resblock_rescale=True, dropout=0.2),
    dict(num_head_channels=-1, num_heads=2, num_heads_upsample=4, use_new_attention_order=True),
    dict(num_classes=5, class_null=True, learn_sigma=True, channel_mult=(1, 1, 2), attention_resolutions=(8, 2)),
    dict(super_res=True, aug_level_cond=True, num_classes=3, use_checkpoint=True),
    dict(in_channels=1, out_channels=2, image_size=16, num_res_blocks=2, attention_resolutions=()),
]


@pytest.mark.parametrize("overrides", SWITCHES, ids=lambda d: ",".join(d) or "default")
def test_output_shape_for_every_switch(overrides):
    model = make(**overrides)
    cfg = model.config
    x, t, kw = inputs(cfg)
    out = model(x, t, **kw)
    expected_c = cfg.out_channels * (2 if cfg.learn_sigma else 1)
    assert out.shape == (2, expected_c, cfg.image_size, cfg.image_size)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_switches_change_the_network():
    """Each ablation switch yields a different function (same seed, same inputs)."""
    x, t, _ = inputs(UNetConfig(**BASE))
    outputs = {}
    for name, kw in {"base": {}, "addition_norm": dict(use_scale_shift_norm=False),
                     "biggan_updown": dict(resblock_updown=True), "rescale": dict(resblock_rescale=True),
                     "heads": dict(num_head_channels=8)}.items():
        torch.manual_seed(0)
        outputs[name] = make(**kw).eval()(x, t)
    # "rescale" and "heads" keep every parameter shape: same seed, same weights, other function
    for name, out in outputs.items():
        if name != "base":
            assert not torch.allclose(out, outputs["base"], atol=1e-4), name


def test_resblock_rescale_divides_residual_sum_by_sqrt2():
    block = randomize(layers.ResBlock(32, 16, out_channels=64))
    scaled = layers.ResBlock(32, 16, out_channels=64, rescale=True)
    scaled.load_state_dict(block.state_dict())
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    torch.testing.assert_close(scaled(x, emb), block(x, emb) / math.sqrt(2))


def test_adagn_formula():
    """use_scale_shift_norm: h = GN(h) * (1 + y_s) + y_b (Dhariwal & Nichol 2021, Sec. 3)."""
    block = randomize(layers.ResBlock(32, 16, use_scale_shift_norm=True)).eval()
    x, emb = torch.randn(2, 32, 4, 4), torch.randn(2, 16)
    h = block.conv1(F.silu(F.group_norm(x, 32, block.norm1.weight, block.norm1.bias)))
    ys, yb = F.linear(F.silu(emb), block.emb_proj.weight, block.emb_proj.bias).chunk(2, dim=1)
    h = F.group_norm(h, 32, block.norm2.weight, block.norm2.bias) * (1 + ys[..., None, None]) + yb[..., None, None]
    expected = x + block.conv2(F.silu(h))
    torch.testing.assert_close(block(x, emb), expected)


def test_biggan_resblock_resamples():
    x, emb = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    assert layers.ResBlock(32, 16, down=True)(x, emb).shape == (2, 32, 4, 4)
    assert layers.ResBlock(32, 16, up=True)(x, emb).shape == (2, 32, 16, 16)


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 1, 250.5])
    emb = timestep_embedding(t, 6)
    freqs = torch.tensor([1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3)])
    torch.testing.assert_close(emb, torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], 1))
    assert timestep_embedding(t, 7).shape == (3, 7) and (timestep_embedding(t, 7)[:, -1] == 0).all()


def test_class_conditioning_changes_output_and_null_label():
    model = make(num_classes=4, class_null=True).eval()
    x, t, _ = inputs(model.config)
    y0, y1 = torch.tensor([0, 0]), torch.tensor([1, 1])
    assert not torch.allclose(model(x, t, y=y0), model(x, t, y=y1), atol=1e-4)
    null = torch.full((2,), model.null_label)
    torch.testing.assert_close(model(x, t), model(x, t, y=null))
    assert model.label_embed.weight.shape[0] == 5


def test_timestep_changes_output():
    model = make().eval()
    x, t, _ = inputs(model.config)
    assert not torch.allclose(model(x, t), model(x, t + 1), atol=1e-4)


def test_low_res_and_aug_level_change_output():
    model = make(super_res=True, aug_level_cond=True).eval()
    x, t, kw = inputs(model.config)
    base = model(x, t, **kw)
    assert not torch.allclose(base, model(x, t, low_res=kw["low_res"] + 1, aug_level=kw["aug_level"]), atol=1e-4)
    assert not torch.allclose(base, model(x, t, low_res=kw["low_res"], aug_level=kw["aug_level"] + 50), atol=1e-4)


@pytest.mark.parametrize("bad, match", [
    (dict(y=torch.tensor([0, 1])), "unconditional"),
    (dict(low_res=torch.randn(2, 3, 4, 4)), "super_res=False"),
    (dict(aug_level=torch.zeros(2)), "aug_level_cond=False"),
])
def test_unexpected_inputs_raise(bad, match):
    model = make()
    x, t, _ = inputs(model.config)
    with pytest.raises(ValueError, match=match):
        model(x, t, **bad)


def test_missing_or_bad_inputs_raise():
    cond = make(num_classes=3)
    x, t, _ = inputs(cond.config)
    with pytest.raises(ValueError, match="pass y"):
        cond(x, t)
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 3\)"):
        cond(x, t, y=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="timesteps must have shape"):
        cond(x, t[:1], y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="x must be"):
        cond(x[:, :1], t, y=torch.tensor([0, 1]))
    sr = make(super_res=True)
    with pytest.raises(ValueError, match="need low_res"):
        sr(x, t)


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    model = make(dropout=0.5)
    x, t, _ = inputs(model.config)
    model.eval()
    torch.testing.assert_close(model(x, t), model(x, t), rtol=0, atol=0)
    model.train()
    assert not torch.allclose(model(x, t), model(x, t))


@pytest.mark.parametrize("overrides", [dict(num_classes=3, learn_sigma=True), dict(super_res=True, aug_level_cond=True,
                                                                                   resblock_updown=False)])
def test_gradients_reach_every_parameter(overrides):
    model = make(**overrides)
    x, t, kw = inputs(model.config, n=3)
    model(x, t, **kw).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_is_used_and_gives_same_gradients(monkeypatch):
    plain = make(dropout=0.3)
    ckpt = UNetModel(UNetConfig(**{**BASE, "dropout": 0.3, "use_checkpoint": True}))
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    real = layers.checkpoint
    monkeypatch.setattr(layers, "checkpoint", lambda *a, **k: calls.append(k) or real(*a, **k))
    x, t, _ = inputs(plain.config)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # same dropout masks
        model(x, t).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    n_blocks = sum(isinstance(m, (layers.ResBlock, layers.AttentionBlock)) for m in ckpt.modules())
    assert len(calls) == n_blocks and all(k["use_reentrant"] is False for k in calls)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_bf16_autocast_keeps_norm_and_embedding_in_float32():
    model = make(num_classes=3, learn_sigma=True)
    x, t, kw = inputs(model.config)
    seen = {}
    norm = model.down_blocks[0].res.norm2
    norm.register_forward_hook(lambda m, i, o: seen.update(norm=(i[0], o)))  # hooks return None
    model.time_embed.register_forward_hook(lambda m, i, o: seen.update(emb=o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, **kw)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert seen["emb"] == torch.float32
    norm_in, norm_out = seen["norm"]
    assert norm_in.dtype == torch.bfloat16 and norm_out.dtype == torch.bfloat16
    reference = F.group_norm(norm_in.float(), 32, norm.weight, norm.bias).to(torch.bfloat16)
    torch.testing.assert_close(norm_out, reference, rtol=0, atol=0)  # computed in float32, then rounded
    torch.testing.assert_close(out, model(x, t, **kw), atol=0.1, rtol=0.1)


def test_groupnorm32_upcasts_half_inputs():
    norm = GroupNorm32(64)
    x = (torch.randn(2, 64, 4, 4) * 100).to(torch.bfloat16)
    torch.testing.assert_close(norm(x), F.group_norm(x.float(), 32).to(torch.bfloat16), rtol=0, atol=0)
    with pytest.raises(ValueError, match="divisible by 32"):
        GroupNorm32(48)


def attention_by_definition(qkv, heads, new_order):
    """softmax(q_h^T k_h / sqrt(d)) per head, slicing the packed channels by hand."""
    n, width, length = qkv.shape
    d = width // (3 * heads)
    outs = []
    for h in range(heads):
        if new_order:
            q, k, v = (qkv[:, j * heads * d + h * d: j * heads * d + (h + 1) * d] for j in range(3))
        else:
            q, k, v = (qkv[:, (3 * h + j) * d: (3 * h + j + 1) * d] for j in range(3))
        w = torch.softmax(torch.einsum("nct,ncs->nts", q, k) / math.sqrt(d), dim=-1)
        outs.append(torch.einsum("nts,ncs->nct", w, v))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("new_order", [True, False])
def test_attention_sdpa_and_explicit_match_definition(new_order):
    qkv = torch.randn(2, 3 * 4 * 8, 10)
    expected = attention_by_definition(qkv, 4, new_order)
    for backend in ("sdpa", "explicit"):
        out = QKVAttention(4, new_order=new_order, backend=backend)(qkv)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_legacy_and_new_head_orders_differ():
    qkv = torch.randn(2, 3 * 2 * 8, 5)
    assert not torch.allclose(QKVAttention(2, new_order=True)(qkv), QKVAttention(2, new_order=False)(qkv))


def test_whole_model_sdpa_equals_explicit_attention():
    model = make(num_head_channels=8).eval()
    x, t, _ = inputs(model.config)
    sdpa = model(x, t)
    explicit = set_attention_backend(model, "explicit")(x, t)
    torch.testing.assert_close(sdpa, explicit, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown attention backend"):
        set_attention_backend(model, "flash")


@pytest.mark.parametrize("name", ["tiny", "digits8_small", "patch32_small", "sr32_small"])
def test_small_presets_run(name):
    """The CPU presets the book trains: class-conditional with a null label (sr32_small also takes the
    low-resolution image and the augmentation level), and every one of those inputs changes the output."""
    model = randomize(create_model(name)).eval()
    cfg = model.config
    x, t, kw = inputs(cfg)
    assert set(kw) == ({"y", "low_res", "aug_level"} if name == "sr32_small" else {"y"}) and cfg.class_null
    out = model(x, t, **kw)
    assert out.shape == (2, cfg.output_channels, *x.shape[2:]) and torch.isfinite(out).all()
    changed = {"t": model(x, (t + 100) % 1000, **kw),
               "null label": model(x, t, **{**kw, "y": torch.full_like(kw["y"], cfg.num_classes)})}
    if cfg.super_res:
        changed["low_res"] = model(x, t, **{**kw, "low_res": kw["low_res"] + 1})
        changed["aug_level"] = model(x, t, **{**kw, "aug_level": kw["aug_level"] + 50})
    for what, other in changed.items():
        assert not torch.allclose(out, other, atol=1e-4), f"{name}: changing {what} does not change the output"


def test_channels_last_matches():
    model = make().eval()
    x, t, _ = inputs(model.config)
    ref = model(x, t)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.to(memory_format=torch.channels_last), t), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", [dict(), dict(use_scale_shift_norm=False, resblock_rescale=True)],
                         ids=["adagn", "addnorm-rescale"])
def test_in_place_fast_path_changes_no_value_or_gradient(overrides, monkeypatch):
    """Without autograd the blocks run SiLU and the residual adds in place; with autograd they must
    not overwrite a tensor a backward needs (autograd would raise): outputs and every gradient equal
    those of the same blocks with out-of-place SiLU and adds."""
    model = make(**overrides).eval()
    x, t, _ = inputs(model.config)
    x.requires_grad_(True)

    def run():
        with torch.no_grad():
            fast = model(x, t)
        out = model(x, t)
        grads = torch.autograd.grad(out.square().sum(), [x, *model.parameters()])
        return fast, out, grads

    fast, out, grads = run()
    torch.testing.assert_close(fast, out, rtol=0, atol=0)
    monkeypatch.setattr(layers, "_silu_", F.silu)
    monkeypatch.setattr("gcg.nn.unet._silu_", F.silu)
    monkeypatch.setattr(layers, "_add_into", lambda a, b: b + a)
    _, plain_out, plain_grads = run()
    torch.testing.assert_close(out, plain_out, rtol=0, atol=0)
    for g, plain in zip(grads, plain_grads):
        torch.testing.assert_close(g, plain, rtol=1e-6, atol=1e-7)


def test_benchmark_reference_forward_equals_gcg(capsys):
    """benchmarks/bench_reference.py's reference-equivalent UNet and classifier (reference-named
    weights) compute what gcg computes, so its speed ratios compare like with like; bad arguments
    name the fix."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_reference.py"
    spec = importlib.util.spec_from_file_location("bench_reference", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg, model = bench.randomised_model("tiny", 0)
    x, t, kw = inputs(cfg)
    p = bench.gcg_to_openai(model.state_dict(), cfg)
    with torch.no_grad():
        torch.testing.assert_close(bench.ref_forward(p, cfg, x, t, kw["y"]), model(x, t, **kw), atol=1e-5, rtol=1e-5)
    qkv = torch.randn(2, 3 * 4 * 8, 10)
    for new_order in (True, False):
        torch.testing.assert_close(bench.ref_qkv_attention(qkv, 4, new_order),
                                   attention_by_definition(qkv, 4, new_order), atol=1e-5, rtol=1e-5)
    cfg, classifier = bench.randomised_model("tiny_classifier", 1)
    p = bench.gcg_to_openai(classifier.state_dict(), cfg)
    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    y = torch.tensor([0, 2])
    torch.testing.assert_close(bench.classifier_grad(lambda z: bench.ref_forward(p, cfg, z, t), x, y),
                               bench.classifier_grad(lambda z: classifier(z, t), x, y), atol=1e-5, rtol=1e-5)
    for argv, message in ((["--batch", "0"], "--batch and --repeats must be >= 1"),
                          (["--unet", "tiny_classifier", "--classifier", ""], "is a classifier preset; pick a unet")):
        with pytest.raises(SystemExit):
            bench.main(argv)
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("device", ["cpu", "meta"])  # meta: how gpu_check counts the 296M network's FLOPs
def test_flop_counter_counts_attention(device):
    """FlopCounterMode on an AttentionBlock = the qkv and output 1x1 convolutions (2 N T C (3C + C))
    + q k^T and A v (2 x 2 N T^2 C): the CPU flash-attention kernel counts too (not as zero)."""
    from torch.utils.flop_counter import FlopCounterMode

    n, c, side = 2, 64, 8
    t = side * side
    with torch.device(device):
        block = layers.AttentionBlock(c, num_head_channels=32).eval()
        x = torch.randn(n, c, side, side)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        block(x)
    assert counter.get_total_flops() == 2 * n * t * c * 4 * c + 4 * n * t * t * c
