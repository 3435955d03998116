"""OpenAI checkpoint interop: the reference key layout, value-level equivalence with a forward
pass written against reference names only, round trips, QKV head orders, error messages."""

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gcg.convert import (convert_attention_order, gcg_to_openai, load_openai_checkpoint, openai_to_gcg,
                         reference_key_map, repack_qkv)
from gcg.nn import ClassifierConfig, UNetConfig, create_model

LISTING = Path(__file__).resolve().parents[2] / "shared" / "reference" / "openai_adm_state_dict_keys.txt"
if not LISTING.exists():  # layout of the shared reference folder next to the repository
    LISTING = Path("/work/shared/reference/openai_adm_state_dict_keys.txt")


def read_listing():
    """{model name: [(key, shape), ...]} from the reference listing of the released 64x64 pair."""
    sections, current = {}, None
    for line in LISTING.read_text().splitlines():
        if m := re.match(r"=== (\S+):", line):
            current = sections.setdefault(m[1], [])
        elif current is not None and line.strip() and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            current.append((key, tuple(int(v) for v in re.findall(r"\d+", shape))))
    return sections


# ---------------------------------------------------------------------------------------------
# A forward pass written from the ADM reference architecture, reading reference-named tensors only.

def _gn(x, p, name):
    return F.group_norm(x, 32, p[name + ".weight"], p[name + ".bias"])


def _res(h, emb, p, name, scale_shift, up=False, down=False):
    x = h
    h = F.silu(_gn(h, p, name + ".in_layers.0"))
    if up:
        h, x = F.interpolate(h, scale_factor=2.0, mode="nearest"), F.interpolate(x, scale_factor=2.0, mode="nearest")
    if down:
        h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
    h = F.conv2d(h, p[name + ".in_layers.2.weight"], p[name + ".in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), p[name + ".emb_layers.1.weight"], p[name + ".emb_layers.1.bias"])[..., None, None]
    if scale_shift:
        s, b = e.chunk(2, dim=1)
        h = _gn(h, p, name + ".out_layers.0") * (1 + s) + b
    else:
        h = _gn(h + e, p, name + ".out_layers.0")
    h = F.conv2d(F.silu(h), p[name + ".out_layers.3.weight"], p[name + ".out_layers.3.bias"], padding=1)
    if name + ".skip_connection.weight" in p:
        x = F.conv2d(x, p[name + ".skip_connection.weight"], p[name + ".skip_connection.bias"])
    return x + h


def _qkv_attention(qkv, heads, new_order):
    n, width, length = qkv.shape
    d = width // (3 * heads)
    if new_order:
        q, k, v = (z.reshape(n * heads, d, length) for z in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(n * heads, 3 * d, length).split(d, dim=1)
    scale = 1 / math.sqrt(math.sqrt(d))
    w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    return torch.einsum("bts,bcs->bct", w, v).reshape(n, -1, length)


def _attn(h, p, name, heads, new_order):
    n, c, hh, ww = h.shape
    x = h.reshape(n, c, -1)
    qkv = F.conv1d(_gn(x, p, name + ".norm"), p[name + ".qkv.weight"], p[name + ".qkv.bias"])
    a = F.conv1d(_qkv_attention(qkv, heads, new_order), p[name + ".proj_out.weight"], p[name + ".proj_out.bias"])
    return (x + a).reshape(n, c, hh, ww)


def reference_forward(p, cfg, x, t, y=None, low_res=None):
    half = cfg.model_channels // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    temb = torch.cat([torch.cos(t[:, None].float() * freqs), torch.sin(t[:, None].float() * freqs)], 1)
    emb = F.linear(F.silu(F.linear(temb, p["time_embed.0.weight"], p["time_embed.0.bias"])),
                   p["time_embed.2.weight"], p["time_embed.2.bias"])
    if y is not None:
        emb = emb + p["label_emb.weight"][y]
    if low_res is not None:
        x = torch.cat([x, F.interpolate(low_res, x.shape[-2:], mode="bilinear")], 1)

    def heads(ch, n_heads):
        return ch // cfg.num_head_channels if cfg.num_head_channels > 0 else n_heads

    ss, order = cfg.use_scale_shift_norm, cfg.use_new_attention_order
    h = F.conv2d(x, p["input_blocks.0.0.weight"], p["input_blocks.0.0.bias"], padding=1)
    hs, i, res = [h], 1, cfg.image_size
    for level, _ in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            h = _res(h, emb, p, f"input_blocks.{i}.0", ss)
            if res in cfg.attention_resolutions:
                h = _attn(h, p, f"input_blocks.{i}.1", heads(h.shape[1], cfg.num_heads), order)
            hs.append(h)
            i += 1
        if level != len(cfg.channel_mult) - 1:
            if cfg.resblock_updown:
                h = _res(h, emb, p, f"input_blocks.{i}.0", ss, down=True)
            elif cfg.conv_resample:
                h = F.conv2d(h, p[f"input_blocks.{i}.0.op.weight"], p[f"input_blocks.{i}.0.op.bias"], stride=2,
                             padding=1)
            else:
                h = F.avg_pool2d(h, 2)
            hs.append(h)
            i, res = i + 1, res // 2
    h = _res(h, emb, p, "middle_block.0", ss)
    h = _attn(h, p, "middle_block.1", heads(h.shape[1], cfg.num_heads), order)
    h = _res(h, emb, p, "middle_block.2", ss)
    if isinstance(cfg, ClassifierConfig):
        h = F.silu(_gn(h, p, "out.0"))
        if cfg.pool == "adaptive":
            return F.conv2d(h.mean((2, 3), keepdim=True), p["out.3.weight"], p["out.3.bias"]).flatten(1)
        tokens = h.flatten(2)
        tokens = torch.cat([tokens.mean(-1, keepdim=True), tokens], -1) + p["out.2.positional_embedding"]
        qkv = F.conv1d(tokens, p["out.2.qkv_proj.weight"], p["out.2.qkv_proj.bias"])
        a = _qkv_attention(qkv, h.shape[1] // cfg.num_head_channels, new_order=True)
        return F.conv1d(a, p["out.2.c_proj.weight"], p["out.2.c_proj.bias"])[:, :, 0]
    i = 0
    for level, _ in reversed(list(enumerate(cfg.channel_mult))):
        for k in range(cfg.num_res_blocks + 1):
            h = _res(torch.cat([h, hs.pop()], 1), emb, p, f"output_blocks.{i}.0", ss)
            j = 1
            if res in cfg.attention_resolutions:
                h = _attn(h, p, f"output_blocks.{i}.1", heads(h.shape[1], cfg.num_heads_upsample), order)
                j = 2
            if level and k == cfg.num_res_blocks:
                if cfg.resblock_updown:
                    h = _res(h, emb, p, f"output_blocks.{i}.{j}", ss, up=True)
                else:
                    h = F.interpolate(h, scale_factor=2.0, mode="nearest")
                    if cfg.conv_resample:
                        h = F.conv2d(h, p[f"output_blocks.{i}.{j}.conv.weight"], p[f"output_blocks.{i}.{j}.conv.bias"],
                                     padding=1)
                res *= 2
            i += 1
    return F.conv2d(F.silu(_gn(h, p, "out.0")), p["out.2.weight"], p["out.2.bias"], padding=1)


# ---------------------------------------------------------------------------------------------

UNET = dict(image_size=16, in_channels=3, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
            attention_resolutions=(8, 4), num_head_channels=16)
CONFIGS = {
    "biggan_new_order_classes": UNetConfig(**UNET, resblock_updown=True, use_new_attention_order=True,
                                           num_classes=5, learn_sigma=True),
    "conv_resample_legacy_addnorm": UNetConfig(**{**UNET, "num_head_channels": -1}, num_heads=2,
                                               num_heads_upsample=4, use_scale_shift_norm=False),
    "avgpool_resample_two_blocks": UNetConfig(**{**UNET, "num_res_blocks": 2, "attention_resolutions": (16,)},
                                              conv_resample=False),
    "super_res": UNetConfig(**UNET, resblock_updown=True, super_res=True, num_classes=3),
    "classifier_attention_pool": ClassifierConfig(**UNET, num_classes=6, pool="attention"),
    "classifier_adaptive_legacy": ClassifierConfig(**{**UNET, "resblock_updown": False}, num_classes=6,
                                                   pool="adaptive", use_scale_shift_norm=False),
}


def random_reference_state(cfg, seed=0):
    """A reference-layout state dict of random tensors, one per reference key of ``cfg``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in create_model(cfg).state_dict().items()}
    return {ref: torch.randn(shapes[k], generator=gen) * 0.2 for k, ref in reference_key_map(cfg).items()}


def model_inputs(cfg, n=2):
    x = torch.randn(n, cfg.in_channels, cfg.image_size, cfg.image_size)
    t = torch.tensor([3, 700])[:n]
    kw = {}
    if isinstance(cfg, UNetConfig):
        if cfg.num_classes:
            kw["y"] = torch.tensor([1, 2])[:n]
        if cfg.super_res:
            kw["low_res"] = torch.randn(n, cfg.in_channels, cfg.image_size // 4, cfg.image_size // 4)
    return x, t, kw


@pytest.mark.parametrize("name", ["64x64_diffusion", "64x64_classifier"])
def test_reference_layout_matches_released_keys_and_shapes(name):
    listing = read_listing()[name]
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in create_model(name).state_dict().items()}
    ref = reference_key_map(name)
    assert [(ref[k], s) for k, s in shapes.items()] == listing


@pytest.mark.parametrize("name", ["64x64_diffusion", "64x64_classifier"])
def test_released_layout_loads_tensor_by_tensor(name):
    """Every listed reference tensor lands, unchanged, on the gcg tensor of the same reference name."""
    ref_state = {k: torch.empty(s, device="meta") for k, s in read_listing()[name]}
    converted = openai_to_gcg(ref_state, name)
    key_map = reference_key_map(name)
    assert all(converted[g] is ref_state[r] for g, r in key_map.items())
    with torch.device("meta"):
        model = create_model(name)
    model.load_state_dict(converted, assign=True, strict=True)
    assert gcg_to_openai(converted, name).keys() == ref_state.keys()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_converted_model_computes_the_reference_forward(name):
    cfg = CONFIGS[name]
    ref_state = random_reference_state(cfg)
    model = create_model(cfg).eval()
    model.load_state_dict(openai_to_gcg(ref_state, cfg))
    x, t, kw = model_inputs(cfg)
    with torch.no_grad():
        expected = reference_forward(ref_state, cfg, x, t, **kw)
        torch.testing.assert_close(model(x, t, **kw), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trips_are_identities(name):
    cfg = CONFIGS[name]
    ref_state = random_reference_state(cfg)
    back = gcg_to_openai(openai_to_gcg(ref_state, cfg), cfg)
    assert list(back) == list(ref_state) and all(back[k] is ref_state[k] for k in ref_state)
    gcg_state = create_model(cfg).state_dict()
    again = openai_to_gcg(gcg_to_openai(gcg_state, cfg), cfg)
    assert list(again) == list(gcg_state) and all(torch.equal(again[k], gcg_state[k]) for k in gcg_state)


def test_repack_qkv_by_hand():
    # two heads of width 1; legacy rows [q0 k0 v0 q1 k1 v1] -> new [q0 q1 k0 k1 v0 v1]
    legacy = torch.tensor([10.0, 11, 12, 20, 21, 22])
    new = repack_qkv(legacy, num_heads=2, to_new_order=True)
    assert new.tolist() == [10, 20, 11, 21, 12, 22]
    assert torch.equal(repack_qkv(new, num_heads=2, to_new_order=False), legacy)
    weight = torch.randn(3 * 2 * 4, 8, 1)
    assert torch.equal(repack_qkv(repack_qkv(weight, 2, True), 2, False), weight)


@pytest.mark.parametrize("name", ["conv_resample_legacy_addnorm", "classifier_attention_pool"])
def test_head_orders_differ_but_convert_attention_order_maps_between_them(name):
    legacy_cfg = CONFIGS[name]
    legacy = create_model(legacy_cfg).eval()
    legacy.load_state_dict(openai_to_gcg(random_reference_state(legacy_cfg), legacy_cfg))
    x, t, kw = model_inputs(legacy_cfg)
    new_state, new_cfg = convert_attention_order(legacy.state_dict(), legacy_cfg, new_order=True)
    assert new_cfg.use_new_attention_order and not legacy_cfg.use_new_attention_order
    same_weights = create_model(new_cfg).eval()
    same_weights.load_state_dict(legacy.state_dict())
    repacked = create_model(new_cfg).eval()
    repacked.load_state_dict(new_state)
    with torch.no_grad():
        out = legacy(x, t, **kw)
        assert not torch.allclose(same_weights(x, t, **kw), out, atol=1e-4)
        torch.testing.assert_close(repacked(x, t, **kw), out, atol=1e-5, rtol=1e-5)
    back, back_cfg = convert_attention_order(new_state, new_cfg, new_order=False)
    assert back_cfg == legacy_cfg and all(torch.equal(back[k], v) for k, v in legacy.state_dict().items())


def test_mismatched_state_dicts_raise_naming_the_tensor():
    cfg = CONFIGS["biggan_new_order_classes"]
    ref_state = random_reference_state(cfg)
    bad = dict(ref_state, **{"out.2.weight": torch.zeros(3, 32, 3, 3)})
    fix = r"it does not match this config: check the preset flags \(e.g. learn_sigma, num_classes, resblock_updown\)$"
    with pytest.raises(ValueError, match=r"^tensor 'out.2.weight' has shape \(3, 32, 3, 3\) in the reference-layout "
                                         r"state dict but the model expects \(6, 32, 3, 3\); " + fix):
        openai_to_gcg(bad, cfg)
    missing = {k: v for k, v in ref_state.items() if k != "label_emb.weight"}
    with pytest.raises(ValueError, match=r"^reference-layout state dict is missing tensor 'label_emb.weight' "
                                         r"\(model expects shape \(5, 128\)\); " + fix):
        openai_to_gcg(missing, cfg)
    with pytest.raises(ValueError, match=r"^reference-layout state dict has unexpected tensor "
                                         r"'input_blocks.99.0.op.weight' \(shape \(1,\)\) that the model does not have; " + fix):
        openai_to_gcg({**ref_state, "input_blocks.99.0.op.weight": torch.zeros(1)}, cfg)
    gcg_state = create_model(cfg).state_dict()
    del gcg_state["time_embed.linear_1.bias"]
    with pytest.raises(ValueError, match="gcg state dict is missing tensor 'time_embed.linear_1.bias'"):
        gcg_to_openai(gcg_state, cfg)


def test_load_openai_checkpoint_from_file(tmp_path):
    cfg = CONFIGS["conv_resample_legacy_addnorm"]
    ref_state = random_reference_state(cfg)
    path = tmp_path / "custom.pt"
    torch.save(ref_state, path)
    model = load_openai_checkpoint(path, cfg)
    assert not model.training
    x, t, kw = model_inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, **kw), reference_forward(ref_state, cfg, x, t, **kw),
                                   atol=1e-4, rtol=1e-4)
        new = load_openai_checkpoint(path, cfg, attention_order="new")
        assert new.config.use_new_attention_order
        torch.testing.assert_close(new(x, t, **kw), model(x, t, **kw), atol=1e-5, rtol=1e-5)


def test_load_openai_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"guided-diffusion README.*64x64_diffusion\.pt"):
        load_openai_checkpoint(tmp_path / "64x64_diffusion.pt", "64x64_diffusion")
    with pytest.raises(ValueError, match="unknown OpenAI model '32x32_diffusion'"):
        load_openai_checkpoint(tmp_path / "x.pt", "32x32_diffusion")
    with pytest.raises(ValueError, match="attention_order"):
        load_openai_checkpoint(tmp_path / "x.pt", "64x64_diffusion", attention_order="old")


def test_load_openai_checkpoint_names_the_fix_for_truncated_and_gcg_files(tmp_path):
    import numpy as np

    from gcg.checkpoint import save_checkpoint

    cfg = CONFIGS["conv_resample_legacy_addnorm"]
    path = tmp_path / "64x64_diffusion.pt"
    torch.save(random_reference_state(cfg), path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])  # an interrupted download
    with pytest.raises(ValueError, match=r"64x64_diffusion.pt' is unreadable \(RuntimeError: .*\); it is truncated "
                                         r"or not a PyTorch file: download 64x64_diffusion.pt again") as info:
        load_openai_checkpoint(path, "64x64_diffusion")
    assert "\n" not in str(info.value)
    gcg_file = save_checkpoint(tmp_path / "checkpoint.pt", {"model_config": cfg.to_dict(),
                                                            "model": create_model(cfg).state_dict()})
    old_gcg_file = tmp_path / "old.pt"  # a gcg checkpoint of the older format: numpy pickled inside
    torch.save({"model_config": cfg.to_dict(), "model": {}, "rng": np.random.get_state()}, old_gcg_file)
    for gcg_path in (gcg_file, old_gcg_file):
        with pytest.raises(ValueError, match=r"is a gcg training checkpoint, not an OpenAI release: load it "
                                             r"with gcg.checkpoint.load_model") as info:
            load_openai_checkpoint(gcg_path, cfg)
        assert "weights_only" not in str(info.value)
    torch.save({"state": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"does not hold a state dict \(a dict of tensors\)"):
        load_openai_checkpoint(tmp_path / "list.pt", cfg)
