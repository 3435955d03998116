"""gcg.nn.precision: which precision runs where (bf16 on CPUs with bf16 units), and bf16 sampling.

Tolerance of bf16 vs fp32: bf16 keeps 8 significant bits (unit roundoff u = 2^-9 ~ 2e-3). Each
convolution rounds its input and weights to bf16 and accumulates in fp32, so it adds a relative
error of a few u; through the tiny networks' ~10 layers (and a sampling chain whose updates are
contractions) the measured relative L2 errors are 0.5-1.6e-2. We allow 0.05 (25 u) and require at
least 1e-4, far above fp32 round-off (~1e-7), which proves autocast actually ran in bf16.
"""
import platform

import pytest
import torch

import gcg.nn.precision
from gcg.checkpoint import save_checkpoint
from gcg.diffusion import DiffusionConfig
from gcg.guidance import classifier_cond_fn
from gcg.nn.config import MODEL_PRESETS, create_model
from gcg.nn.precision import autocast, check_precision, cpu_bf16_missing, resolve_precision
from gcg.sample import generate, main, sample, sample_images

BF16_TOL, FP32_ROUNDOFF = 0.05, 1e-4


def relative_error(a, b):
    return ((a.double() - b.double()).norm() / a.double().norm()).item()


def perturbed(preset, seed=0):
    torch.manual_seed(seed)
    model = create_model(MODEL_PRESETS[preset]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # zero-initialised output layers act
    return model


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(gcg.nn.precision, "cpu_bf16_missing", lambda: None)


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(gcg.nn.precision, "cpu_bf16_missing", lambda: "this CPU lacks AVX512_BF16 and AMX")


def test_which_precision_runs_where(cpu_with_bf16):
    assert [resolve_precision(p, "cuda") for p in ("fp32", "bf16", "fp16")] == [
        ("fp32", None), ("bf16", None), ("fp16", None)]
    assert resolve_precision("fp32", "cpu") == ("fp32", None)
    assert resolve_precision("bf16", "cpu") == ("bf16", None)
    assert resolve_precision("fp16", "cpu") == ("fp32", "precision=fp16 autocast is for CUDA; computing in fp32 on cpu")
    assert resolve_precision("bf16", "mps")[0] == "fp32"


def test_a_cpu_without_bf16_units_computes_in_fp32_and_says_why(cpu_without_bf16):
    assert resolve_precision("bf16", "cpu") == (
        "fp32", "precision=bf16 on a CPU needs bf16 units: this CPU lacks AVX512_BF16 and AMX; computing in fp32")


def test_the_bf16_check_names_the_missing_instruction_set(monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert "lacks AVX512_BF16 and AMX" in cpu_bf16_missing()
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
        assert cpu_bf16_missing() is None
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert "no oneDNN" in cpu_bf16_missing()


def test_bad_precision_names_the_choices():
    with pytest.raises(ValueError, match=r"^precision must be one of 'fp32', 'bf16', 'fp16', got 'bfloat16'$"):
        check_precision("bfloat16")
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast("half", "cpu")


def test_bf16_unet_and_classifier_gradient_are_close_to_fp32_and_differ():
    """The forward output and the guidance gradient stay float32; bf16 rounds them within BF16_TOL."""
    unet, classifier = perturbed("tiny"), perturbed("tiny_classifier", seed=1)
    x, t, y = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 10, 50, 90]), \
        torch.tensor([0, 1, 2, 0])
    grad = classifier_cond_fn(classifier, 1.0)
    outputs = {}
    for precision in ("fp32", "bf16"):
        with torch.no_grad(), autocast(precision, "cpu"):
            outputs[precision] = unet(x, t, y=y), grad(x, t, y=y)
    for fp32, bf16 in zip(outputs["fp32"], outputs["bf16"]):
        assert bf16.dtype == torch.float32
        assert FP32_ROUNDOFF < relative_error(fp32, bf16) < BF16_TOL


def test_bf16_sampling_is_close_to_fp32_on_the_same_noise(cpu_with_bf16, recwarn):
    model = perturbed("tiny")
    diffusion = DiffusionConfig(noise_schedule="cosine", steps=100, model_var_type="learned_range").build()
    samples = {p: generate(model, diffusion, 6, class_labels=[0, 1, 2, 0, 1, 2], timestep_respacing="ddim8",
                           generator=torch.Generator().manual_seed(1), precision=p) for p in ("fp32", "bf16")}
    assert samples["bf16"].dtype == torch.float32
    assert FP32_ROUNDOFF < relative_error(samples["fp32"], samples["bf16"]) < BF16_TOL
    assert not recwarn.list


def test_sample_without_bf16_units_warns_once_and_gives_fp32(cpu_without_bf16):
    model = perturbed("tiny")
    diffusion = DiffusionConfig(noise_schedule="cosine", steps=100, model_var_type="learned_range").build()
    fp32, _ = sample(model, diffusion, 3, class_labels=[0], timestep_respacing="4", progress=False)
    with pytest.warns(UserWarning) as caught:
        bf16, _ = sample(model, diffusion, 3, class_labels=[0], timestep_respacing="4", progress=False,
                         precision="bf16")
    assert [str(w.message) for w in caught] == [
        "gcg.sample: precision=bf16 on a CPU needs bf16 units: this CPU lacks AVX512_BF16 and AMX; computing in fp32"]
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=0)


def test_sample_images_refuses_an_unknown_precision():
    model = perturbed("tiny")
    diffusion = DiffusionConfig(noise_schedule="cosine", steps=100, model_var_type="learned_range").build()
    with pytest.raises(ValueError, match=r"^precision must be one of 'fp32', 'bf16', 'fp16', got 'fp8'$"):
        sample_images(model, diffusion, 2, precision="fp8")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    diffusion = DiffusionConfig(noise_schedule="cosine", steps=100, model_var_type="learned_range")
    save_checkpoint(path, {"model_config": MODEL_PRESETS["tiny"].to_dict(), "model": perturbed("tiny").state_dict(),
                           "diffusion_config": diffusion.to_dict(), "ema": {}})
    return path


def test_cli_precision(tiny_ckpt, tmp_path, capsys, cpu_without_bf16):
    args = [str(tiny_ckpt), "--num-samples", "2", "--steps", "2", "--no-progress", "--device", "cpu"]
    assert main(args + ["--out-dir", str(tmp_path), "--precision", "bf16"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gcg.sample: precision=bf16 on a CPU needs bf16 units: this CPU lacks AVX512_BF16 and AMX; "
                   "computing in fp32"]
    assert main(args + ["--out-dir", str(tmp_path), "--precision", "bfloat16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--precision: invalid choice: 'bfloat16'" in err[0] and "'bf16'" in err[0], err
