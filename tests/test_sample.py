"""gcg.sample: checkpoint in, a valid samples npz + PNG grid out; guidance flags wired through."""
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
