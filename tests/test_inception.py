"""Tests for gcg.inception: architecture, feature taps, the two preprocessing modes (TF1's resize
against closed forms) and weight loading (random weights only; the real FID weights cannot be
downloaded here)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gcg.inception import BasicConv2d, FIDInceptionV3, _avg_pool, load_fid_inception, resize_bilinear_tf1


@pytest.fixture(scope="module")
def net():
    return FIDInceptionV3().init_random_(0)


def test_state_dict_matches_torchvision_layout_of_the_pytorch_fid_weights():
    # pytorch-fid saved its port of the TF weights from torchvision's Inception3 with 1008
    # classes and no auxiliary head: the same names and shapes must load here.
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    ours = {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in tv.state_dict().items()}
    assert ours == theirs


def test_feature_shapes_and_taps_at_299(net):
    captured = {}
    hook = net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.setdefault("mixed_6_conv", o))
    with torch.no_grad():
        net.fc.bias.fill_(5.0)  # the IS logits ignore the bias, as the TF code does
    x = torch.rand(2, 3, 32, 32) * 2 - 1  # resized to 299x299
    out = net.extract(x)
    hook.remove()
    assert out["pool"].shape == (2, 2048)
    assert out["spatial"].shape == (2, 17 * 17 * 7)
    assert out["logits"].shape == (2, 1008)
    fmap = captured["mixed_6_conv"]
    assert fmap.shape == (2, 192, 17, 17) and (fmap >= 0).all()  # post-ReLU, 17x17
    torch.testing.assert_close(out["spatial"], fmap[:, :7].permute(0, 2, 3, 1).reshape(2, -1))
    torch.testing.assert_close(out["logits"], out["pool"] @ net.fc.weight.T)
    assert (out["pool"] >= 0).all() and out["pool"].std() > 1e-3  # random weights keep activations alive
    torch.testing.assert_close(net(x), out["pool"])


def test_grayscale_is_repeated_to_rgb_and_batches_are_independent():
    small = FIDInceptionV3(resize_input=False).init_random_(1)
    gray = torch.rand(3, 1, 75, 75) * 2 - 1
    a = small.extract(gray)
    b = small.extract(gray.repeat(1, 3, 1, 1))
    c = small.extract(gray[:1].repeat(1, 3, 1, 1))
    torch.testing.assert_close(a["pool"], b["pool"])
    torch.testing.assert_close(a["pool"][:1], c["pool"], rtol=1e-4, atol=1e-5)


def test_average_pools_exclude_padding_like_tensorflow():
    ones = torch.ones(1, 2, 5, 5)
    torch.testing.assert_close(_avg_pool(ones), ones)


def test_bad_inputs_have_clear_errors(net):
    with pytest.raises(ValueError, match="uint8"):
        net.extract(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[N, 1 or 3, H, W\]"):
        net.extract(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="75x75"):
        FIDInceptionV3(resize_input=False).extract(torch.zeros(1, 3, 32, 32))


def test_missing_weights_explain_where_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv("GCG_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        load_fid_inception(None)
    with pytest.raises(FileNotFoundError, match="does not exist.*GCG_INCEPTION_WEIGHTS"):
        load_fid_inception(tmp_path / "nope.pth")


def test_weights_file_round_trip_and_wrong_files(tmp_path, monkeypatch):
    src = FIDInceptionV3(resize_input=False).init_random_(2)
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "pt_inception.pth"
    torch.save(state, path)
    monkeypatch.setenv("GCG_INCEPTION_WEIGHTS", str(path))
    loaded = load_fid_inception(resize_input=False)  # path from the environment
    x = torch.rand(2, 3, 80, 80) * 2 - 1
    torch.testing.assert_close(loaded.extract(x)["pool"], src.extract(x)["pool"])

    wrong = dict(state, **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    torch.save(wrong, path)
    with pytest.raises(ValueError, match=r"fc\.(bias|weight).*1000.*torchvision's ImageNet"):
        load_fid_inception(path)
    torch.save({k: v for k, v in state.items() if k != "Mixed_7c.branch_pool.conv.weight"}, path)
    with pytest.raises(ValueError, match="missing 'Mixed_7c.branch_pool.conv.weight'"):
        load_fid_inception(path)


# ---------------------------------------------------------------- TF1's bilinear resize


def tf1_resize_loop(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1's ResizeBilinear (align_corners=False, legacy coordinates) pixel by pixel, from the
    kernel's definition: source coordinate in = out * (in_size / out_size) in float32, lower =
    floor(in), upper = min(ceil(in), in_size - 1), lerp = in - lower; columns, then rows."""
    in_h, in_w = img.shape
    sy, sx = np.float32(in_h) / np.float32(out_h), np.float32(in_w) / np.float32(out_w)
    out = np.zeros((out_h, out_w), np.float32)
    for i in range(out_h):
        y = np.float32(i) * sy
        y0, y1 = int(math.floor(y)), min(int(math.ceil(y)), in_h - 1)
        ly = y - np.float32(y0)
        for j in range(out_w):
            x = np.float32(j) * sx
            x0, x1 = int(math.floor(x)), min(int(math.ceil(x)), in_w - 1)
            lx = x - np.float32(x0)
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * lx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * lx
            out[i, j] = top + (bottom - top) * ly
    return out


@pytest.mark.parametrize("in_hw, out_hw", [((5, 7), (11, 3)), ((7, 4), (3, 9)), ((6, 6), (6, 6)), ((4, 3), (13, 13))])
def test_tf1_resize_matches_the_kernel_definition(in_hw, out_hw):
    img = torch.rand(2, 3, *in_hw, generator=torch.Generator().manual_seed(0)) * 255
    out = resize_bilinear_tf1(img, out_hw)
    assert out.shape == (2, 3, *out_hw) and out.dtype == torch.float32
    for n in range(2):
        for c in range(3):
            ref = tf1_resize_loop(img[n, c].numpy(), *out_hw)
            np.testing.assert_allclose(out[n, c].numpy(), ref, rtol=0, atol=1e-4)


def test_tf1_resize_of_a_constant_and_of_a_linear_ramp_is_exact():
    const = torch.full((1, 2, 5, 9), 37.0)
    torch.testing.assert_close(resize_bilinear_tf1(const, (12, 4)), torch.full((1, 2, 12, 4), 37.0))
    # f(r, c) = 3 c - 2 r + 10 is linear, so bilinear interpolation reproduces it at the source
    # coordinate s = dst * in / out, clamped to the last pixel (in - 1) at the far edges
    in_h, in_w, out_h, out_w = 6, 8, 17, 29
    r, c = torch.meshgrid(torch.arange(in_h, dtype=torch.float32), torch.arange(in_w, dtype=torch.float32), indexing="ij")
    out = resize_bilinear_tf1((3 * c - 2 * r + 10)[None, None], (out_h, out_w))[0, 0]
    sr = (torch.arange(out_h) * in_h / out_h).clamp(max=in_h - 1)
    sc = (torch.arange(out_w) * in_w / out_w).clamp(max=in_w - 1)
    torch.testing.assert_close(out, 3 * sc[None, :] - 2 * sr[:, None] + 10, rtol=0, atol=1e-4)


def test_tf1_resize_samples_source_pixels_at_integer_factors():
    x = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    # down by 2: output j reads source 2 j exactly (half-pixel centres would average 2 j, 2 j + 1)
    torch.testing.assert_close(resize_bilinear_tf1(x, (4, 6)), x[..., ::2, ::2], rtol=0, atol=0)
    # up by 3: every third output is a source pixel
    torch.testing.assert_close(resize_bilinear_tf1(x, (24, 36))[..., ::3, ::3], x, rtol=0, atol=0)
    torch.testing.assert_close(resize_bilinear_tf1(x, (8, 12)), x, rtol=0, atol=0)  # same size: identity


def test_tf1_resize_edges_at_32_to_299():
    # left edge: output 0 is source pixel 0; right edge: outputs with j * 32 / 299 >= 31, i.e.
    # j >= 290, all repeat the last source pixel (9 of them), while output 289 still interpolates
    x = torch.arange(32, dtype=torch.float32).repeat(1, 1, 32, 1) * 8  # horizontal ramp 0..248
    out = resize_bilinear_tf1(x, (299, 299))
    assert (out[..., 0] == 0).all()
    assert (out[..., 290:] == 248).all() and (out[..., 289] < 248).all()
    assert (out[..., 289] - 8 * 289 * 32 / 299).abs().max() < 1e-3


def test_tf1_resize_rejects_integer_images():
    with pytest.raises(ValueError, match="float images"):
        resize_bilinear_tf1(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), (8, 8))


# ---------------------------------------------------------------- the two preprocessing modes


def as_model_input(u):
    """uint8-valued pixels -> [-1, 1] floats, as gcg.evaluate feeds the network."""
    return torch.as_tensor(u, dtype=torch.float32) / 127.5 - 1


def test_adm_scaling_is_the_tf_graphs_sub_128_mul_1_over_128():
    u = torch.tensor([0.0, 1.0, 127.0, 128.0, 200.0, 255.0]).view(1, 1, 1, 6).expand(1, 3, 299, 6)
    u = F.pad(u, (0, 293))  # 299 x 299: no resize, only the scaling
    adm = FIDInceptionV3(preprocess="adm").network_input(as_model_input(u))
    ptf = FIDInceptionV3(preprocess="pytorch-fid").network_input(as_model_input(u))
    tf_graph = (u - 128.0) * 0.0078125  # the graph's Sub(128) and Mul(0.0078125) nodes
    torch.testing.assert_close(adm, tf_graph, rtol=0, atol=1e-6)
    assert adm[0, 0, 0, :6].tolist() == pytest.approx([-1, -127 / 128, -1 / 128, 0, 72 / 128, 127 / 128], abs=1e-6)
    assert ptf[0, 0, 0, :6].tolist() == pytest.approx([-1, 1 / 127.5 - 1, 127 / 127.5 - 1, 128 / 127.5 - 1, 200 / 127.5 - 1, 1], abs=1e-6)


def test_the_two_modes_differ_by_the_half_pixel_shift_at_32_to_299():
    u = (torch.arange(32, dtype=torch.float32) * 8).repeat(1, 3, 32, 1)  # horizontal ramp 0..248
    adm = FIDInceptionV3(preprocess="adm").network_input(as_model_input(u))[0, 0, 0]
    ptf = FIDInceptionV3(preprocess="pytorch-fid").network_input(as_model_input(u))[0, 0, 0]
    j = torch.arange(299, dtype=torch.float32)
    s_tf1 = (j * 32 / 299).clamp(max=31)  # TF1: no half-pixel centres
    s_half = ((j + 0.5) * 32 / 299 - 0.5).clamp(0, 31)  # PyTorch: half-pixel centres
    torch.testing.assert_close(adm, (8 * s_tf1 - 128) / 128, rtol=0, atol=1e-5)
    torch.testing.assert_close(ptf, 8 * s_half / 127.5 - 1, rtol=0, atol=1e-5)
    # back in grey levels (undoing each mode's scaling), the modes differ inside the image by the
    # half-pixel shift: TF1 samples (1 - 32/299) / 2 = 0.446 source pixels further right, 3.57
    # grey levels of this ramp
    gap = (adm * 128 + 128) - (ptf * 127.5 + 127.5)
    torch.testing.assert_close(gap[10:280], torch.full((270,), 8 * (1 - 32 / 299) / 2), rtol=0, atol=1e-3)
    assert (adm - ptf).abs().max() > 3 / 255  # several grey levels at the network input


def test_modes_change_the_features_and_bad_modes_are_refused():
    adm = FIDInceptionV3(preprocess="adm").init_random_(0)
    ptf = FIDInceptionV3(preprocess="pytorch-fid").init_random_(0)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    a, b = adm.extract(x)["pool"], ptf.extract(x)["pool"]
    assert not torch.allclose(a, b, rtol=1e-3)
    assert FIDInceptionV3().preprocess == "adm"
    with pytest.raises(ValueError, match="'adm'.*'pytorch-fid', got 'tf'"):
        FIDInceptionV3(preprocess="tf")


# ---------------------------------------------------------------- the weight files users hold


def torch_fidelity_layout(net):
    """A state dict keyed as torch-fidelity's converter writes it: per conv block conv.weight and
    bn.{weight, bias, running_mean, running_var} (no step counters), then fc.weight, fc.bias."""
    state = {}
    for name, module in net.named_modules():
        if isinstance(module, BasicConv2d):
            state[f"{name}.conv.weight"] = module.conv.weight.detach().clone()
            for key in ("weight", "bias", "running_mean", "running_var"):
                state[f"{name}.bn.{key}"] = getattr(module.bn, key).detach().clone()
    state["fc.weight"], state["fc.bias"] = net.fc.weight.detach().clone(), net.fc.bias.detach().clone()
    return state


def test_pytorch_fid_and_torch_fidelity_weight_layouts_load(tmp_path):
    src = FIDInceptionV3(resize_input=False, preprocess="pytorch-fid").init_random_(4)
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, so a dropped tensor shows
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 80, 80) * 2 - 1
    want = src.extract(x)["pool"]
    fidelity = torch_fidelity_layout(src)
    assert len(fidelity) == 94 * 5 + 2 and not any("num_batches_tracked" in k for k in fidelity)
    layouts = {
        "pt_inception-2015-12-05-6726825d.pth": src.state_dict(),  # torchvision's names, with counters
        "weights-inception-2015-12-05-6726825d.pth": fidelity,
        "wrapped.pth": {"state_dict": fidelity},
    }
    for name, state in layouts.items():
        torch.save(state, tmp_path / name)
        loaded = load_fid_inception(tmp_path / name, resize_input=False, preprocess="pytorch-fid")
        assert loaded.preprocess == "pytorch-fid"
        torch.testing.assert_close(loaded.extract(x)["pool"], want, msg=name)


def test_files_that_are_not_state_dicts_have_clear_errors(tmp_path):
    graph = tmp_path / "classify_image_graph_def.pb"
    graph.write_bytes(b"\n\x0cExpandDims\x12\nExpandDims" + bytes(range(256)))  # TF GraphDef bytes
    with pytest.raises(ValueError, match="not a PyTorch state-dict file.*classify_image_graph_def.pb cannot be read"):
        load_fid_inception(graph)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(ValueError, match=r"pickled Python objects.*model.state_dict\(\)"):
        load_fid_inception(tmp_path / "module.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        load_fid_inception(tmp_path / "list.pt")
