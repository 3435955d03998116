"""The trainer: every preset runs (tiny overrides), exact resume, accumulation, fp16 skip, CLI errors."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from gcg.presets import PRESETS, TrainConfig, apply_overrides, get_preset
from gcg.train import (build_model_config, compute_precision, main, sample_grid_plan, setup, train,
                       train_step)

TINY = {"diffusion": "tiny", "super_res": "tiny", "classifier": "tiny_classifier"}


def tiny(preset, tmp_path=None, **overrides):
    """A preset shrunk to seconds: the 'tiny' network, 8x8 images, batch 4, 2 steps."""
    config = dataclasses.replace(get_preset(preset), model_overrides={})  # they fit the big network
    sets = dict(image_size=8, batch_size=4, max_steps=2, log_every=1, sample_steps="ddim2",
                num_sample_images=4, low_res_size=4, dropout=0.0)
    sets["model"] = "toy_mlp" if config.model == "toy_mlp" else TINY[config.task]
    if config.model == "toy_mlp":
        sets.update(image_size=None, dropout=None)
        config = dataclasses.replace(config, model_overrides={"hidden": 32, "depth": 1})
    if config.microbatch:
        sets["microbatch"] = 2
    if tmp_path is not None:
        sets["out_dir"] = str(tmp_path / "run")
    sets.update(overrides)
    return apply_overrides(config, sets)


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    """Ten official-layout ImageNet 64x64 .npz batches of 4 images each."""
    root = tmp_path_factory.mktemp("imagenet64")
    rng = np.random.default_rng(0)
    for k in range(1, 11):
        np.savez(root / f"train_data_batch_{k}.npz",
                 data=rng.integers(0, 256, (4, 3 * 64 * 64), dtype=np.uint8),
                 labels=rng.integers(1, 1001, 4))
    return root


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_trains_and_writes(preset, tmp_path, imagenet_dir):
    overrides = {"data_dir": str(imagenet_dir)} if get_preset(preset).dataset == "imagenet64" else {}
    config = tiny(preset, tmp_path, **overrides)
    result = train(config, progress=False)
    run = tmp_path / "run"
    assert result.step == 2 and len(result.history) == 2
    assert all(np.isfinite(h["loss"]) for h in result.history)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert (run / "checkpoint.pt").is_file() and (run / "loss_curve.png").is_file()
    quartiles = [k for k in records[-1] if k[:-1] in ("loss_q", "acc1_q", "acc5_q")]
    assert quartiles, records[-1]  # per timestep-quartile figures are logged
    if config.task == "classifier":
        assert 0 <= records[-1]["acc1"] <= records[-1]["acc5"] <= 1
    else:
        assert (run / "samples_final.png").is_file()


def test_paper_recipes():
    """The big presets carry the published recipes (Dhariwal & Nichol 2021, Appendix)."""
    d = get_preset("imagenet64")
    assert (d.model, d.noise_schedule, d.diffusion_steps, d.model_var_type, d.loss_type) == (
        "64x64_diffusion", "cosine", 1000, "learned_range", "rescaled_mse")
    assert (d.dropout, d.lr, d.weight_decay, d.batch_size, d.max_steps, d.ema_rates) == (
        0.1, 3e-4, 0.0, 2048, 540_000, (0.9999,))
    c = get_preset("imagenet64-classifier")
    assert (c.task, c.model, c.lr, c.weight_decay, c.batch_size, c.max_steps) == (
        "classifier", "64x64_classifier", 6e-4, 0.2, 1024, 300_000)
    # the network the imagenet64 recipe builds is the released 64x64 model (built on meta: free)
    with torch.device("meta"):
        cfg = build_model_config(d, (3, 64, 64), 1000)
    assert cfg.learn_sigma and cfg.num_classes == 1000 and cfg.model_channels == 192
    assert cfg.num_res_blocks == 3 and cfg.dropout == 0.1


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_resume_is_exact(tmp_path):
    """N + N steps with a resume in between give bit-identical weights, EMA and optimizer state."""
    base = tiny("digits", tmp_path, max_steps=6, dropout=0.1, p_uncond=0.5, ema_rates="0.9,0.99",
                schedule_sampler="loss-second-moment",
                microbatch=2, log_every=2)
    straight = train(dataclasses.replace(base, out_dir=str(tmp_path / "straight")), progress=False)
    train(dataclasses.replace(base, max_steps=3), progress=False)
    resumed = train(base, progress=False, resume=True)
    assert resumed.step == 6
    for a, b in zip(params(straight.model), params(resumed.model)):
        assert torch.equal(a, b)
    for rate in (0.9, 0.99):
        for a, b in zip(params(straight.ema_models[rate]), params(resumed.ema_models[rate])):
            assert torch.equal(a, b)
    # the resumed log continues the first one (which also logged its last step, 3)
    assert [h["step"] for h in resumed.history] == [2, 3, 4, 6]
    assert resumed.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], rel=1e-6)


def test_microbatching_equals_one_big_batch():
    """Gradient accumulation over micro-batches reproduces the full-batch step."""
    results = []
    for micro in (0, 1, 3):
        config = tiny("digits", batch_size=6, max_steps=1, microbatch=micro, p_uncond=0.0)
        results.append(params(train(config, progress=False).model))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fp16_loss_scaling_skips_a_step_with_inf():
    config = tiny("digits", precision="fp16", ema_rates="0.5")
    state, dataset = setup(config)
    x = torch.stack([dataset[i][0] for i in range(4)])
    y = torch.tensor([int(dataset[i][1]) for i in range(4)])
    first = next(state.model.parameters())
    hook = first.register_hook(lambda g: torch.full_like(g, float("inf")))
    before, ema_before = params(state.model), params(state.ema_models[0.5])
    scale = state.scaler.get_scale()
    stats = train_step(state, x, y)
    assert stats["skipped"] and state.scaler.get_scale() == scale / 2
    assert all(torch.equal(a, b) for a, b in zip(before, params(state.model)))
    assert all(torch.equal(a, b) for a, b in zip(ema_before, params(state.ema_models[0.5])))
    hook.remove()
    stats = train_step(state, x, y)
    assert not stats["skipped"]
    assert any(not torch.equal(a, b) for a, b in zip(before, params(state.model)))


def test_nonfinite_gradient_skips_in_fp32_too():
    state, dataset = setup(tiny("digits"))
    x, y = torch.stack([dataset[i][0] for i in range(4)]), torch.arange(4)
    first = next(state.model.parameters())
    first.register_hook(lambda g: torch.full_like(g, float("nan")))
    before = params(state.model)
    assert train_step(state, x, y)["skipped"]
    assert all(torch.equal(a, b) for a, b in zip(before, params(state.model)))


def test_class_null_follows_p_uncond_and_model_overrides_are_checked():
    config = tiny("digits", p_uncond=0.1)
    cfg = build_model_config(config, (1, 8, 8), 10)
    assert cfg.class_null and cfg.num_classes == 10 and cfg.in_channels == 1 and not cfg.learn_sigma
    cfg = build_model_config(apply_overrides(config, ["model.model_channels=64"]), (1, 8, 8), 10)
    assert cfg.model_channels == 64
    with pytest.raises(ValueError, match="unknown network field model.model_chanels"):
        apply_overrides(config, ["model.model_chanels=64"])
    with pytest.raises(ValueError, match="unknown network fields.*model_chanels"):
        build_model_config(dataclasses.replace(config, model_overrides={"model_chanels": 64}), (1, 8, 8), 10)
    with pytest.raises(ValueError, match="classifier model preset"):
        build_model_config(apply_overrides(config, {"task": "classifier"}), (1, 8, 8), 10)


def test_set_parsing_checks_types_and_lists_valid_keys():
    config = apply_overrides(TrainConfig(), ["lr=3e-4", "ema_rates=0.9,0.99", "compile=true",
                                             "data_dir=none", "max_steps=10"])
    assert (config.lr, config.ema_rates, config.compile, config.data_dir, config.max_steps) == (
        3e-4, (0.9, 0.99), True, None, 10)
    with pytest.raises(ValueError, match="unknown config key 'lrr'.*valid keys:.*lr"):
        apply_overrides(config, ["lrr=1"])
    with pytest.raises(ValueError, match="max_steps=2.5: expected an integer"):
        apply_overrides(config, ["max_steps=2.5"])
    with pytest.raises(ValueError, match="expected a boolean"):
        apply_overrides(config, ["compile=perhaps"])
    with pytest.raises(ValueError, match="precision='fp8' is not one of"):
        apply_overrides(config, ["precision=fp8"])
    with pytest.raises(ValueError, match="max_aug_level > 0"):
        apply_overrides(get_preset("photo32-sr8"), ["max_aug_level=0"])
    with pytest.raises(ValueError, match="unknown preset 'imagenet'; valid presets: imagenet64"):
        get_preset("imagenet")


def test_missing_data_exits_with_the_data_message(tmp_path, capsys):
    code = main(["--preset", "imagenet64", "--data-dir", str(tmp_path / "nowhere"),
                 "--out-dir", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "imagenet64" in err and "train_data_batch" in err and "Traceback" not in err
    code = main(["--preset", "imagenet64", "--out-dir", str(tmp_path / "out"), "--no-progress"])
    assert code == 2 and "--data-dir" in capsys.readouterr().err


def test_help_lists_every_preset_on_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name, config in PRESETS.items():
        assert any(line.split()[:1] == [name] and config.description in line for line in out.splitlines())


def test_precision_follows_the_device():
    """fp16/bf16 autocast on CUDA only; a CPU computes in fp32 (fp16 keeps its loss scaler)."""
    assert [compute_precision(p, "cuda:0") for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    assert [compute_precision(p, "cpu") for p in ("fp32", "bf16", "fp16")] == ["fp32"] * 3
    state, dataset = setup(tiny("digits", precision="bf16"))
    dtypes = []
    state.model.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    x, y = torch.stack([dataset[i][0] for i in range(4)]), torch.arange(4)
    train_step(state, x, y)
    assert state.precision == "fp32" and dtypes == [torch.float32]
    state, _ = setup(tiny("digits", precision="fp16"))
    assert state.precision == "fp32" and state.scaler.is_enabled()


def test_sample_grid_plan_scales_the_grid_to_the_budget():
    """n images x S steps = n * S forwards; over budget: n = isqrt(budget), S = budget // n (>= 2)."""
    assert sample_grid_plan(100, "ddim50", 1000, 10**6) == (100, "ddim50")  # within budget: as configured
    assert sample_grid_plan(64, "250", 1000, 16) == (4, "4")
    assert sample_grid_plan(64, "ddim50", 1000, 30) == (5, "ddim6")
    assert sample_grid_plan(64, None, 1000, 100) == (10, "10")  # None = all T steps
    assert sample_grid_plan(3, "250", 1000, 4) == (2, "2")  # never fewer than 2 steps


def test_cpu_smoke_run_of_the_gpu_recipe(tmp_path, imagenet_dir, capsys):
    """`--preset imagenet64 --batch-size 2 --max-steps 2` on a CPU: fp32 with a one-line notice, and
    an end-of-run grid of 4 images x 4 steps instead of the recipe's 64 x 250 (the tiny network
    stands in for the 296M one; everything else is the recipe: fp16 loss scaler, L_hybrid, DDPM)."""
    code = main(["--preset", "imagenet64", "--data-dir", str(imagenet_dir), "--batch-size", "2",
                 "--max-steps", "2", "--out-dir", str(tmp_path / "run"), "--no-progress",
                 "--set", "model=tiny", "--set", "image_size=8", "--set", "dropout=0.0"])
    err = capsys.readouterr().err
    assert code == 0, err
    notices = [line for line in err.splitlines() if "autocast is for CUDA" in line]
    assert notices == ["gcg.train: precision=fp16 autocast is for CUDA; computing in fp32 on cpu "
                       "(its dynamic loss scaler still runs)"]
    # budget = max(16, 3 forwards x 2 steps x 2 images) = 16 -> 4 images x 4 DDPM steps
    assert "samples_final.png: 4 images x 4 steps, scaled to this short run (configured: 64 x 250)" in err
    assert (tmp_path / "run" / "samples_final.png").is_file()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "fp16"
