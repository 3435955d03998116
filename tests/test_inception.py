"""Tests for gcg.inception: architecture, feature taps and weight loading (random weights only;
the real FID weights cannot be downloaded here)."""

import pytest
import torch

from gcg.inception import FIDInceptionV3, _avg_pool, load_fid_inception


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
