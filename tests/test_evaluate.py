"""Tests for gcg.evaluate: image files in, reference statistics, the CLI end to end."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gcg.evaluate import (
    compute_activations,
    evaluate_activations,
    load_images,
    load_reference,
    main,
    reference_statistics,
    save_reference,
    uint8_to_float,
)
from gcg.features import save_feature_net, train_feature_net
from gcg.inception import FIDInceptionV3
from gcg.metrics import fid_from_features, inception_score, precision_recall
from gcg.sample import save_samples, to_uint8


def make_images(n, seed, shift=0.0, size=8):
    """[N, 1, size, size] floats in [-1, 1]: class-dependent blobs + noise; labels [N]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = -torch.ones(n, 1, size, size)
    x[y == 0, :, : size // 2] = 0.8
    x[y == 1, :, :, : size // 2] = 0.8
    return (x + shift + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1), y


def write_npz(path, images, labels=None):
    """The samples format of gcg.sample / the ADM suite: arr_0 uint8 NHWC, arr_1 labels."""
    arrays = {"arr_0": to_uint8(images)}
    if labels is not None:
        arrays["arr_1"] = labels.numpy()
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def domain_net_path(tmp_path_factory):
    x, y = make_images(64, 0)
    net = train_feature_net(x, y, epochs=1, batch_size=32, seed=0, widths=(8, 8, 16), spatial_channels=2)
    path = tmp_path_factory.mktemp("net") / "domain.pt"
    save_feature_net(net, path)
    return path


def test_uint8_float_round_trip():
    u8 = np.random.default_rng(0).integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    x = uint8_to_float(u8)
    assert x.shape == (3, 3, 5, 4) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(to_uint8(x), u8)


def test_npz_round_trip_with_gcg_sample_output(tmp_path):
    images, labels = make_images(6, 1)
    path = save_samples(images, labels, tmp_path)
    assert path.name == "samples_6x8x8x1.npz"
    loaded = load_images(path)
    assert loaded.shape == (6, 8, 8, 1) and loaded.dtype == np.uint8
    back = uint8_to_float(loaded)
    assert (back - images).abs().max() <= 0.5 / 127.5 + 1e-6  # only the uint8 rounding is lost
    with np.load(path) as data:
        np.testing.assert_array_equal(data["arr_1"], labels.numpy())


def test_folder_and_npz_give_the_same_images(tmp_path):
    images, _ = make_images(5, 2)
    u8 = to_uint8(images)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(u8):
        Image.fromarray(im[..., 0], mode="L").save(folder / f"{i:03d}.png")
    (folder / "notes.txt").write_text("not an image")
    np.testing.assert_array_equal(load_images(folder), u8)
    np.testing.assert_array_equal(load_images(write_npz(tmp_path / "a.npz", images)), u8)


def test_bad_image_files_have_clear_errors(tmp_path):
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        load_images(tmp_path / "f.npz")
    np.savez(tmp_path / "k.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="no 'arr_0'"):
        load_images(tmp_path / "k.npz")
    with pytest.raises(FileNotFoundError, match="no such"):
        load_images(tmp_path / "missing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        load_images(tmp_path / "empty")


def test_activations_and_metrics_match_the_metrics_module(tmp_path):
    net = FIDInceptionV3(resize_input=False).init_random_(0)
    ref_imgs, _ = make_images(6, 3, size=76)
    fake_imgs, _ = make_images(5, 4, shift=0.3, size=76)
    ref_path = write_npz(tmp_path / "ref.npz", ref_imgs)
    ref = compute_activations(net, ref_path, batch_size=4, progress=False)
    fake = compute_activations(net, load_images(write_npz(tmp_path / "s.npz", fake_imgs)), batch_size=3, progress=False)
    assert ref["pool"].shape == (6, 2048) and ref["spatial"].shape == (6, 7 * 3 * 3) and ref["probs"].shape == (6, 1008)
    direct = net.extract(uint8_to_float(load_images(ref_path)))
    np.testing.assert_allclose(ref["pool"], direct["pool"].numpy(), rtol=1e-4, atol=1e-5)
    result = evaluate_activations(reference_statistics(ref), fake, k=3)
    assert result["fid"] == pytest.approx(fid_from_features(ref["pool"], fake["pool"]), rel=1e-6)
    assert result["sfid"] == pytest.approx(fid_from_features(ref["spatial"], fake["spatial"]), rel=1e-6)
    assert result["inception_score"] == pytest.approx(inception_score(fake["probs"], splits=1).mean, rel=1e-9)
    assert (result["precision"], result["recall"]) == precision_recall(ref["pool"], fake["pool"], k=3)


def test_reference_statistics_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    acts = {"pool": rng.standard_normal((20, 6)), "spatial": rng.standard_normal((20, 4)), "probs": None}
    save_reference(tmp_path / "ref_stats.npz", acts, "domain:abc")
    ref = load_reference(tmp_path / "ref_stats.npz")
    expected = reference_statistics(acts)
    for key in ("mu", "sigma", "mu_s", "sigma_s", "pool"):
        np.testing.assert_array_equal(ref[key], expected[key])
    assert ref["feature_network"] == "domain:abc" and ref["preprocess"] is None
    save_reference(tmp_path / "inc.npz", acts, "inception:0123456789ab", "adm")
    assert load_reference(tmp_path / "inc.npz")["preprocess"] == "adm"
    assert "spatial" not in ref  # only the statistics of the spatial features are kept
    assert not any(p.name.endswith(".tmp.npz") for p in tmp_path.iterdir())


def test_cli_with_domain_features(tmp_path, domain_net_path, capsys):
    ref = write_npz(tmp_path / "ref.npz", make_images(40, 5)[0])
    same = write_npz(tmp_path / "same.npz", make_images(40, 5)[0])
    shifted = write_npz(tmp_path / "shifted.npz", make_images(30, 6, shift=0.5)[0])
    feats = f"domain:{domain_net_path}"
    stats = tmp_path / "ref_stats.npz"

    r_same = main([str(ref), str(same), "--features", feats, "--no-progress", "--save-ref", str(stats)])
    assert abs(r_same["fid"]) < 1e-6 and abs(r_same["sfid"]) < 1e-6
    assert (r_same["precision"], r_same["recall"]) == (1.0, 1.0)
    out = capsys.readouterr().out
    for line in ("not comparable to published FID", "IS (domain classifier):", "FD (domain features): ",
                 "sFD (domain features): ", "Precision (domain features): 1.0000", "Recall (domain features): 1.0000"):
        assert line in out

    r_img = main([str(ref), str(shifted), "--features", feats, "--no-progress", "--kid"])
    r_stats = main([str(stats), str(shifted), "--features", feats, "--no-progress", "--json", str(tmp_path / "r.json")])
    assert r_img["fid"] > 0.01
    for key in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert r_stats[key] == pytest.approx(r_img[key], rel=1e-6, abs=1e-9)
    assert "kid" in r_img and "KID (domain features)" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["fid"] == pytest.approx(r_img["fid"])


def _user_error(capsys, argv, match):
    """main(argv) returns 2 with one line on stderr matching `match` (gcg.cli's error path)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gcg.evaluate: error: "), err
    assert re.search(match, err), err


def test_cli_refuses_stats_from_another_network(tmp_path, domain_net_path, capsys):
    rng = np.random.default_rng(0)
    acts = {"pool": rng.standard_normal((10, 16)), "spatial": rng.standard_normal((10, 32))}
    save_reference(tmp_path / "stats.npz", acts, "inception:0123456789ab")
    samples = write_npz(tmp_path / "s.npz", make_images(8, 7)[0])
    _user_error(capsys, [str(tmp_path / "stats.npz"), str(samples), "--features", f"domain:{domain_net_path}",
                         "--no-progress"], "computed with feature network inception")


def test_cli_without_inception_weights_explains(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GCG_INCEPTION_WEIGHTS", raising=False)
    samples = write_npz(tmp_path / "s.npz", make_images(4, 8)[0])
    _user_error(capsys, [str(samples), str(samples)], "pt_inception-2015-12-05.*domain:PATH")
    _user_error(capsys, [str(samples), str(samples), "--features", "clip"], "'inception' or 'domain:PATH'")


def test_cli_bad_sample_files_exit_with_one_line(tmp_path, domain_net_path, capsys):
    ref = write_npz(tmp_path / "ref.npz", make_images(8, 13)[0])
    feats = ["--features", f"domain:{domain_net_path}", "--no-progress"]
    _user_error(capsys, [str(ref), str(tmp_path / "missing.npz"), *feats], "no such .npz file")
    wrong_size = write_npz(tmp_path / "big.npz", make_images(8, 14, size=16)[0])
    _user_error(capsys, [str(ref), str(wrong_size), *feats], r"trained on images \[N, 1, 8, 8\]")
    _user_error(capsys, [str(ref), str(write_npz(tmp_path / "few.npz", make_images(3, 15)[0])), *feats],
                "k=3 needs")


def test_cli_with_inception_weights_file(tmp_path, capsys):
    weights = tmp_path / "pt_inception.pth"
    torch.save(FIDInceptionV3().init_random_(0).state_dict(), weights)
    ref = write_npz(tmp_path / "ref.npz", make_images(3, 9, size=16)[0])
    fake = write_npz(tmp_path / "fake.npz", make_images(2, 10, shift=0.4, size=16)[0])
    result = main([str(ref), str(fake), "--inception-weights", str(weights), "--no-progress", "--k", "1"])
    out = capsys.readouterr().out
    assert "Inception Score:" in out and "FID: " in out and "sFID: " in out and "domain" not in out
    assert "(--preprocess adm: as ADM)" in out and result["preprocess"] == "adm"  # the default
    assert result["fid"] > 0 and np.isfinite(result["sfid"]) and 1.0 <= result["inception_score"] <= 2.0


def test_cli_preprocess_modes_are_recorded_and_never_mixed(tmp_path, capsys, domain_net_path):
    weights = tmp_path / "pt_inception.pth"
    torch.save(FIDInceptionV3().init_random_(0).state_dict(), weights)
    ref = write_npz(tmp_path / "ref.npz", make_images(3, 9, size=16)[0])
    fake = write_npz(tmp_path / "fake.npz", make_images(2, 10, shift=0.4, size=16)[0])
    common = ["--inception-weights", str(weights), "--no-progress", "--k", "1"]
    stats = tmp_path / "ref_ptfid.npz"
    r_pt = main([str(ref), str(fake), *common, "--preprocess", "pytorch-fid", "--save-ref", str(stats)])
    assert "(--preprocess pytorch-fid: as pytorch-fid)" in capsys.readouterr().out
    assert load_reference(stats)["preprocess"] == "pytorch-fid"
    # the same mode reproduces the numbers from the statistics file ...
    r_stats = main([str(stats), str(fake), *common, "--preprocess", "pytorch-fid"])
    assert r_stats["fid"] == pytest.approx(r_pt["fid"], rel=1e-6)
    # ... the other mode gives other features, and mixing the two is refused in one line
    r_adm = main([str(ref), str(fake), *common])
    assert abs(r_adm["fid"] - r_pt["fid"]) > 1e-3 * r_pt["fid"]
    def refused(argv) -> str:  # a user error: exit code 2 and one line on stderr
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        return err

    assert ("computed with --preprocess pytorch-fid, but you are evaluating with --preprocess adm; "
            "pass --preprocess pytorch-fid or recompute") in refused([str(stats), str(fake), *common])
    # statistics gcg wrote before modes were recorded came from pytorch-fid's preprocessing
    with np.load(stats) as data:
        np.savez(tmp_path / "old.npz", **{k: data[k] for k in data.files if k != "preprocess"})
    assert load_reference(tmp_path / "old.npz")["preprocess"] == "pytorch-fid"
    assert "--preprocess pytorch-fid" in refused([str(tmp_path / "old.npz"), str(fake), *common])
    # domain networks read images at their own size: the flag does not apply
    assert "--preprocess applies to --features inception only" in refused(
        [str(ref), str(fake), "--features", f"domain:{domain_net_path}", "--preprocess", "adm"])
    assert "invalid choice: 'tf'" in refused([str(ref), str(fake), *common, "--preprocess", "tf"])


def test_python_dash_m_entry_point(tmp_path, domain_net_path):
    ref = write_npz(tmp_path / "ref.npz", make_images(12, 11)[0])
    fake = write_npz(tmp_path / "fake.npz", make_images(12, 12, shift=0.3)[0])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "gcg.evaluate", str(ref), str(fake), "--features", f"domain:{domain_net_path}"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "FD (domain features):" in proc.stdout and "Recall (domain features):" in proc.stdout
    assert "features" in proc.stderr  # the tqdm progress bar
