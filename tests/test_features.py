"""Tests for gcg.features: the domain feature network gcg trains itself."""

import pytest
import torch
from sklearn.datasets import load_digits

from gcg.features import DomainFeatureConfig, load_feature_net, save_feature_net, train_feature_net
from gcg.metrics import fid_from_features, precision_recall


def bars(n, seed):
    """3 classes of 8x8 images: horizontal bars, vertical bars, a centred square; plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.full((n, 1, 8, 8), -1.0)
    x[y == 0, :, ::2, :] = 1.0
    x[y == 1, :, :, ::2] = 1.0
    x[y == 2, :, 2:6, 2:6] = 1.0
    x = (x + 0.5 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x, y


@pytest.fixture(scope="module")
def digits_net():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8 - 1  # pixel values 0..16
    y = torch.tensor(d.target)
    net = train_feature_net(x[:600], y[:600], epochs=4, seed=0)
    return net, x, y


def test_training_is_deterministic_for_a_seed():
    x, y = bars(60, 0)
    a = train_feature_net(x, y, epochs=1, batch_size=16, seed=3, widths=(8, 8, 16))
    b = train_feature_net(x, y, epochs=1, batch_size=16, seed=3, widths=(8, 8, 16))
    c = train_feature_net(x, y, epochs=1, batch_size=16, seed=4, widths=(8, 8, 16))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_learns_a_separable_task_and_extract_shapes():
    x, y = bars(150, 1)
    net = train_feature_net(x, y, epochs=4, batch_size=32, seed=0, widths=(8, 16, 16), spatial_channels=3)
    xt, yt = bars(60, 2)
    out = net.extract(xt)
    assert out["pool"].shape == (60, 16)
    assert out["spatial"].shape == (60, 4 * 4 * 3)  # (8 / 2)^2 positions x 3 channels
    assert out["logits"].shape == out["probs"].shape == (60, 3)
    torch.testing.assert_close(out["probs"].sum(1), torch.ones(60))
    assert (out["probs"].argmax(1) == yt).float().mean() > 0.9
    assert net.train_accuracy > 0.9


def test_digits_features_rank_real_above_corrupted(digits_net):
    net, x, y = digits_net
    train, held_out = x[:600], x[1000:1400]
    acc = (net.extract(held_out)["probs"].argmax(1) == y[1000:1400]).float().mean()
    assert acc > 0.85
    g = torch.Generator().manual_seed(0)
    noisy = (held_out + 0.6 * torch.randn(held_out.shape, generator=g)).clamp(-1, 1)
    noise = torch.rand(held_out.shape, generator=g) * 2 - 1
    f_train, f_real, f_noisy, f_noise = (net.extract(s)["pool"] for s in (train, held_out, noisy, noise))
    fd_real, fd_noisy, fd_noise = (fid_from_features(f_train, f) for f in (f_real, f_noisy, f_noise))
    assert fd_real < fd_noisy < fd_noise
    assert precision_recall(f_train, f_real).precision > precision_recall(f_train, f_noise).precision


def test_save_load_round_trip(digits_net, tmp_path):
    net, x, _ = digits_net
    path = tmp_path / "digits_features.pt"
    save_feature_net(net, path)
    loaded = load_feature_net(path)
    assert loaded.config == net.config
    for key in ("pool", "spatial", "logits"):
        torch.testing.assert_close(loaded.extract(x[:10])[key], net.extract(x[:10])[key])
    with pytest.raises(FileNotFoundError, match="train_feature_net"):
        load_feature_net(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="save_feature_net"):
        load_feature_net(tmp_path / "other.pt")


def test_bad_inputs_have_clear_errors(digits_net):
    net, x, y = digits_net
    with pytest.raises(ValueError, match=r"trained on images \[N, 1, 8, 8\]"):
        net.extract(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        train_feature_net((x[:10] + 1) * 127.5, y[:10])
    with pytest.raises(ValueError, match="labels must be"):
        train_feature_net(x[:10], y[:9])
    with pytest.raises(ValueError, match="multiple of 4"):
        DomainFeatureConfig(in_channels=1, image_size=10, num_classes=3)
    with pytest.raises(ValueError, match="multiples of 8"):
        DomainFeatureConfig(in_channels=1, image_size=8, num_classes=3, widths=(8, 12, 16))
