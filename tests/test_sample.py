"""gcg.sample: checkpoint in, a valid samples npz + PNG grid out; guidance flags wired through."""
import dataclasses

import numpy as np
import pytest
import torch

from gcg.checkpoint import load_model, save_checkpoint
from gcg.diffusion import DiffusionConfig
from gcg.guidance import ClassifierFreeGuidance, classifier_cond_fn
from gcg.nn.config import MODEL_PRESETS, create_model
from gcg.sample import main, sample, save_grid, to_uint8


def write_checkpoint(path, preset, seed=0, perturb=0.0, **diffusion):
    """A checkpoint of a freshly initialised network (perturbed so zero-initialised layers act)."""
    torch.manual_seed(seed)
    model = create_model(MODEL_PRESETS[preset])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(perturb * torch.randn_like(p))
    diffusion = {"noise_schedule": "cosine", "steps": 100, **diffusion}
    save_checkpoint(path, {"model_config": MODEL_PRESETS[preset].to_dict(), "model": model.state_dict(),
                           "diffusion_config": DiffusionConfig(**diffusion).to_dict(), "ema": {}})
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", "tiny", perturb=0.05,
                            model_var_type="learned_range")


def test_cli_writes_a_valid_npz_and_grid(tiny_ckpt, tmp_path, capsys):
    code = main([str(tiny_ckpt), "--out-dir", str(tmp_path), "--num-samples", "5", "--batch-size", "3",
                 "--sampler", "ddim", "--steps", "4", "--class-labels", "2", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    with np.load(tmp_path / "samples_5x8x8x1.npz") as data:
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (5, 8, 8, 1)
        assert data["arr_1"].tolist() == [2] * 5
    assert (tmp_path / "samples_5x8x8x1.png").is_file()
    # DDIM with eta = 0 is deterministic given the seed
    main([str(tiny_ckpt), "--out-dir", str(tmp_path / "again"), "--num-samples", "5", "--batch-size", "3",
          "--sampler", "ddim", "--steps", "4", "--class-labels", "2", "--no-progress"])
    with np.load(tmp_path / "samples_5x8x8x1.npz") as a, np.load(tmp_path / "again" / "samples_5x8x8x1.npz") as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])


def test_guidance_flags_apply_the_guidance_they_name(tiny_ckpt, tmp_path):
    """--cfg-scale w and --classifier/--classifier-scale s give exactly the samples of the library's
    ClassifierFreeGuidance(model, w) and classifier_cond_fn(classifier, s) (same seed, same chain)."""
    classifier = write_checkpoint(tmp_path / "clf.pt", "tiny_classifier", seed=1, perturb=0.2)
    model, diffusion = load_model(tiny_ckpt)
    labels = torch.tensor([0, 1, 2, 0])

    def library(guided, cond_fn=None):
        x = diffusion.respace("5").p_sample_loop(guided, (4, 1, 8, 8), model_kwargs={"y": labels}, cond_fn=cond_fn,
                                                 generator=torch.Generator().manual_seed(0))
        return to_uint8(x).astype(int)

    expected = {"plain": library(model), "cfg": library(ClassifierFreeGuidance(model, 3.0, model.null_label)),
                "classifier": library(model, classifier_cond_fn(load_model(classifier)[0], 50.0))}
    runs = {"plain": [], "cfg": ["--cfg-scale", "3"],
            "classifier": ["--classifier", str(classifier), "--classifier-scale", "50"]}
    for name, flags in runs.items():
        out = tmp_path / name
        assert main([str(tiny_ckpt), "--out-dir", str(out), "--num-samples", "4", "--timestep-respacing",
                     "5", "--class-labels", "0,1,2,0", "--no-progress", *flags]) == 0
        with np.load(out / "samples_4x8x8x1.npz") as data:
            np.testing.assert_array_equal(data["arr_0"].astype(int), expected[name], err_msg=name)
            assert data["arr_1"].tolist() == [0, 1, 2, 0]
    assert np.abs(expected["cfg"] - expected["plain"]).max() > 0
    assert np.abs(expected["classifier"] - expected["plain"]).max() > 0


def test_cli_errors_are_messages(tiny_ckpt, tmp_path, capsys):
    uncond = write_checkpoint(tmp_path / "u.pt", "digits8_classifier")
    assert main([uncond.as_posix(), "--out-dir", str(tmp_path), "--no-progress"]) == 2
    assert "classifier checkpoint" in capsys.readouterr().err
    assert main([str(tiny_ckpt), "--class-labels", "7", "--out-dir", str(tmp_path), "--no-progress"]) == 2
    assert "must lie in [0, 3)" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.pt"), "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err


def test_python_api_batches_labels_and_super_resolution(tmp_path):
    torch.manual_seed(0)
    cfg = MODEL_PRESETS["sr32_small"]
    model = create_model(cfg).eval()
    diffusion = DiffusionConfig(noise_schedule="cosine", steps=20).build()
    low_res = torch.rand(3, 3, 8, 8) * 2 - 1
    images, labels = sample(model, diffusion, 3, batch_size=2, class_labels=[4], low_res=low_res,
                            timestep_respacing="ddim2", seed=1, progress=False)
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [4, 4, 4]
    assert images.abs().max() <= 1
    save_grid(images, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_to_uint8_uses_the_adm_rounding():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 1.5]).reshape(1, 1, 1, 5)
    assert to_uint8(x).ravel().tolist() == [0, 64, 128, 255, 255]


# ----------------------------------------------------------------------------- gcg.sample_images, save_grid
def test_top_level_api_is_the_sample_module_s_functions():
    import gcg
    import gcg.sample as module

    assert gcg.sample_images is module.sample_images and gcg.save_grid is module.save_grid
    assert gcg.load_model is load_model


def test_sample_images_guidance_matches_sample(tiny_ckpt, tmp_path):
    """steps/sampler, a classifier given as a path and cfg_scale reach `sample` unchanged."""
    from gcg.sample import sample_images

    clf_path = write_checkpoint(tmp_path / "clf.pt", "tiny_classifier", seed=1, perturb=0.2)
    model, diffusion = load_model(tiny_ckpt)
    common = dict(class_labels=[0, 1, 2], seed=3, progress=False)
    got, labels = sample_images(model, diffusion, 3, steps=4, sampler="ddim", cfg_scale=2.0, **common)
    want, _ = sample(model, diffusion, 3, timestep_respacing="ddim4", cfg_scale=2.0, **common)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert labels.tolist() == [0, 1, 2]
    got, _ = sample_images(model, diffusion, 3, steps=5, classifier=clf_path, classifier_scale=20.0, **common)
    want, _ = sample(model, diffusion, 3, timestep_respacing="5", classifier=load_model(clf_path)[0],
                     classifier_scale=20.0, **common)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    plain, _ = sample(model, diffusion, 3, timestep_respacing="5", **common)
    assert (got - plain).abs().max() > 0  # the guidance acted


def test_classifier_guidance_of_an_unconditional_network(tiny_ckpt, tmp_path):
    """The labels steer the classifier only: an unconditional UNet is called without y."""
    from gcg.sample import sample_images

    _, diffusion = load_model(tiny_ckpt)
    model = create_model(dataclasses.replace(MODEL_PRESETS["tiny"], num_classes=None, class_null=False)).eval()
    classifier = load_model(write_checkpoint(tmp_path / "c.pt", "tiny_classifier", perturb=0.2))[0]
    images, labels = sample_images(model, diffusion, 2, class_labels=[1, 2], steps=3, classifier=classifier,
                                   classifier_scale=5.0, progress=False)
    assert images.shape == (2, 1, 8, 8) and labels.tolist() == [1, 2]
    with pytest.raises(ValueError, match="unconditional .*drop class_labels, or pass a classifier"):
        sample_images(model, diffusion, 2, class_labels=[1, 2], steps=3, progress=False)


def _bad_inputs(model, diffusion, classifier, unguided):
    """(call arguments, the one-line message expected) for each misuse of sample_images."""
    return [
        (dict(num_samples=3, class_labels=[0, 5, 1]),
         r"class labels must lie in \[0, 3\) for this 3-class model, got \[5\]: pass labels 0..2"),
        (dict(num_samples=2, classifier_scale=4.0),
         r"classifier_scale needs a classifier: pass classifier=gcg.load_model\(PATH\)\[0\]"),
        (dict(model=unguided, num_samples=2, cfg_scale=2.0),
         r"cfg_scale needs a model trained with a null label .*--set p_uncond=0.1"),
        (dict(num_samples=2, cfg_scale=float("nan")), "cfg_scale must be a finite number, got nan"),
        (dict(num_samples=2, classifier=classifier, classifier_scale=float("inf")),
         "classifier_scale must be a finite number"),
        (dict(model="runs/digits/checkpoint.pt", num_samples=2),
         r"model, diffusion = gcg.load_model\('runs/NAME/checkpoint.pt'\)"),
        (dict(diffusion=None, num_samples=2), "needs a network and its diffusion"),
        (dict(model=classifier, num_samples=2), "model is a noise-aware classifier: pass it as classifier="),
        (dict(num_samples=2, classifier=model), "classifier= got a unet network, not a noise-aware classifier"),
        (dict(num_samples=0), "num_samples must be a whole number >= 1, got 0"),
        (dict(num_samples=2, steps=0), r"steps must be a whole number in \[1, 100\]"),
        (dict(num_samples=2, steps=5, timestep_respacing="5"), "give steps or timestep_respacing, not both"),
        (dict(num_samples=2, sampler="euler"), "sampler must be 'ddpm' or 'ddim', got 'euler'"),
    ]


def test_sample_images_bad_input_is_a_one_line_error_naming_the_fix(tiny_ckpt, tmp_path):
    from gcg.sample import sample_images

    model, diffusion = load_model(tiny_ckpt)
    classifier = load_model(write_checkpoint(tmp_path / "c.pt", "tiny_classifier"))[0]
    unguided = create_model(dataclasses.replace(MODEL_PRESETS["tiny"], class_null=False)).eval()
    for kwargs, message in _bad_inputs(model, diffusion, classifier, unguided):
        args = dict(model=model, diffusion=diffusion, progress=False)
        args.update(kwargs)
        with pytest.raises((ValueError, TypeError), match=message) as info:
            sample_images(args.pop("model"), args.pop("diffusion"), args.pop("num_samples"), **args)
        assert "\n" not in str(info.value), kwargs


def test_save_grid_enlarges_small_images_8x_with_visible_separators(tmp_path):
    """Issue: 8x8 samples were written at 182 px for 100 images. Now each pixel is an 8 x 8 block."""
    from PIL import Image

    x = -torch.ones(100, 1, 8, 8)  # black digits, white separators
    x[:, :, 0, 0] = 1.0             # one white pixel in each digit's corner
    path = save_grid(x, tmp_path / "g.png")
    grid = np.asarray(Image.open(path).convert("L"))
    pad, tile = 4, 64
    assert grid.shape == (10 * (tile + pad) + pad,) * 2 == (684, 684)
    first = grid[pad:pad + tile, pad:pad + tile]
    assert (first[:8, :8] == 255).all() and (first[8:, :] == 0).all() and (first[:, 8:] == 0).all()
    assert (grid[:, :pad] == 255).all() and (grid[pad:pad + tile, pad + tile:2 * pad + tile] == 255).all()
    # larger images: the largest whole factor up to 64 px (16x16 -> 4x, 32x32 -> 2x), never shrunk
    for size, shown in ((16, 64), (32, 64), (64, 64), (128, 128)):
        path = save_grid(torch.zeros(4, 3, size, size), tmp_path / f"g{size}.png", nrow=2)
        assert Image.open(path).size == (2 * (shown + shown // 16) + shown // 16,) * 2, size
    assert Image.open(save_grid(torch.zeros(2, 1, 8, 8), tmp_path / "t.png", nrow=2, tile=32)).size == (70, 36)


def test_cli_grid_is_enlarged(tiny_ckpt, tmp_path):
    from PIL import Image

    assert main([str(tiny_ckpt), "--out-dir", str(tmp_path), "--num-samples", "4", "--steps", "2",
                 "--no-progress"]) == 0
    assert Image.open(tmp_path / "samples_4x8x8x1.png").size == (2 * 68 + 4,) * 2
