"""The trainer: every preset runs (tiny overrides), exact resume, accumulation, fp16 skip, CLI errors,
signals (SIGINT/SIGTERM save and resume exactly), resume checks."""
import dataclasses
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gcg.checkpoint import checkpoint_path, load_checkpoint
from gcg.presets import PRESETS, TrainConfig, apply_overrides, get_preset, validate
from gcg.train import (NETWORK_FIELDS, RESUMABLE_FIELDS, build_model_config, compute_precision,
                       interrupted_message, main, precision_notice, resolve_resume, sample_grid_plan, setup,
                       train, train_step)

ROOT = Path(__file__).resolve().parents[1]

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


def test_sample_grids_every_sample_every_steps_and_the_last_one_once(tmp_path):
    result = train(tiny("digits", tmp_path, max_steps=4, sample_every=2), progress=False)
    grids = sorted(p.name for p in (tmp_path / "run").glob("samples_*.png"))
    assert result.step == 4 and grids == ["samples_0000002.png", "samples_final.png"]


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


def test_precision_follows_the_device(monkeypatch):
    """fp16/bf16 autocast on CUDA; on a CPU bf16 only with bf16 units, else fp32 (fp16 keeps its
    loss scaler). The CPU's bf16 check is patched both ways, so this runs on any CPU."""
    import gcg.nn.precision

    assert [compute_precision(p, "cuda:0") for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    monkeypatch.setattr(gcg.nn.precision, "cpu_bf16_missing", lambda: "this CPU lacks AVX512_BF16 and AMX")
    assert [compute_precision(p, "cpu") for p in ("fp32", "bf16", "fp16")] == ["fp32"] * 3
    state, dataset = setup(tiny("digits", precision="bf16"))
    dtypes = []
    state.model.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    x, y = torch.stack([dataset[i][0] for i in range(4)]), torch.arange(4)
    train_step(state, x, y)
    assert state.precision == "fp32" and dtypes == [torch.float32]
    assert precision_notice(state) == ("gcg.train: precision=bf16 on a CPU needs bf16 units: this CPU lacks "
                                       "AVX512_BF16 and AMX; computing in fp32")
    state, _ = setup(tiny("digits", precision="fp16"))
    assert state.precision == "fp32" and state.scaler.is_enabled()

    monkeypatch.setattr(gcg.nn.precision, "cpu_bf16_missing", lambda: None)  # a CPU with bf16 units
    assert [compute_precision(p, "cpu") for p in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp32"]
    state, dataset = setup(tiny("digits", precision="bf16"))
    convs = []
    state.model.input_conv.register_forward_hook(lambda module, args, out: convs.append(out.dtype))
    train_step(state, x, y)
    assert state.precision == "bf16" and precision_notice(state) is None
    assert convs == [torch.bfloat16]  # autocast is on: the first convolution computes in bf16
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
               for p in state.model.parameters())  # weights and gradients stay fp32


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


# ----------------------------------------------------------------------------- signals and resume
CLI_SETTINGS = ["model=tiny", "image_size=8", "batch_size=4", "dropout=0.1", "p_uncond=0.5", "log_every=1",
                "sample_every=0", "num_sample_images=2", "sample_steps=ddim2", "ema_rates=0.9",
                "schedule_sampler=loss-second-moment"]


def cli_args(out, max_steps):
    return ["--preset", "digits", "--max-steps", str(max_steps), "--out-dir", str(out), "--no-progress",
            *[a for s in CLI_SETTINGS for a in ("--set", s)]]


def start_and_signal(cmds, out, signum, which=0, env_extra=({},)):
    """Start the processes `cmds`, wait until two steps are logged, send `signum` to process `which`;
    returns [(returncode, stderr)] of each."""
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra})
             for cmd, extra in zip(cmds, env_extra)]
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 240
    try:
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
            assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
            assert time.monotonic() < deadline, "no training step logged in 240 s"
            time.sleep(0.05)
        procs[which].send_signal(signum)
        errs = [p.communicate(timeout=240)[1] for p in procs]
        return [(p.returncode, err) for p, err in zip(procs, errs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def state_tensors(result):
    """Weights, every EMA and the optimizer's moments of a TrainResult (for bit-exact comparison)."""
    return [*params(result.model), *[p for ema in result.ema_models.values() for p in params(ema)]]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_saves_and_the_run_resumes_exactly(signum, tmp_path):
    out = tmp_path / "run"
    # bit-exact comparison across processes needs the same float reduction order: one thread in both
    args = [*cli_args(out, 100_000), "--threads", "1"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _signal_then_resume(signum, out, args)
    finally:
        torch.set_num_threads(threads)


def _signal_then_resume(signum, out, args):
    [(code, err)] = start_and_signal([[sys.executable, "-m", "gcg.train", *args]], out, signum)
    assert code == 128 + signum and "Traceback" not in err, err
    step = load_checkpoint(out / "checkpoint.pt")["step"]
    assert step >= 2
    assert err.strip().splitlines()[-1] == (
        f"gcg.train: stopped by {signum.name} at step {step}/100000; saved {checkpoint_path(out, step)}; "
        f"resume with: python -m gcg.train {shlex.join(args)} --resume")
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1] == step  # the step running when the signal came was finished and saved
    # resume to step + 2 (as the printed command would, with another --max-steps) == never interrupted
    config = apply_overrides(apply_overrides(get_preset("digits"), {"out_dir": str(out)}), CLI_SETTINGS)
    resumed = train(dataclasses.replace(config, max_steps=step + 2), progress=False, resume=True)
    straight = train(dataclasses.replace(config, max_steps=step + 2, out_dir=None), progress=False)
    assert resumed.step == straight.step == step + 2
    assert all(torch.equal(a, b) for a, b in zip(state_tensors(resumed), state_tensors(straight), strict=True))
    assert resumed.history[-1]["loss"] == straight.history[-1]["loss"]


@pytest.mark.slow  # two gloo processes
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_a_signal_to_one_ddp_rank_stops_every_rank_after_the_same_step(tmp_path):
    out = tmp_path / "ddp"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    cmd = [sys.executable, "-m", "gcg.train", *cli_args(out, 100_000)]
    envs = [{"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": port} for r in (0, 1)]
    results = start_and_signal([cmd, cmd], out, signal.SIGTERM, which=1, env_extra=envs)
    assert [code for code, _ in results] == [143, 143], [err[-2000:] for _, err in results]
    saved = load_checkpoint(out / "checkpoint.pt")
    assert [r["data_step"] for r in saved["rng"]["per_rank"]] == [saved["step"]] * 2
    assert "stopped by SIGTERM" in results[0][1] and "torchrun --nproc_per_node 2" in results[0][1]


def test_interrupted_message_drops_the_old_resume_argument():
    from gcg.train import TrainResult

    result = TrainResult(None, None, None, [], step=7, config=TrainConfig(max_steps=9), stopped_by="SIGINT",
                         checkpoint=Path("r/checkpoint_0000007.pt"))
    for argv in (["--preset", "toy", "--resume", "r/x.pt", "--no-progress"], ["--preset", "toy", "--resume",
                 "--no-progress"], ["--preset", "toy", "--resume=r/x.pt", "--no-progress"]):
        assert interrupted_message(result, argv) == (
            "gcg.train: stopped by SIGINT at step 7/9; saved r/checkpoint_0000007.pt; resume with: "
            "python -m gcg.train --preset toy --no-progress --resume")


def test_resume_with_nothing_to_resume_starts_fresh_and_a_fresh_run_keeps_old_checkpoints(tmp_path, capsys):
    config = tiny("digits", tmp_path)
    assert train(config, progress=False, resume=True).step == 2
    err = capsys.readouterr().err
    assert f"gcg.train: warning: --resume: no checkpoint in {tmp_path / 'run'} yet; starting a fresh run" in err
    with pytest.raises(ValueError, match=r"already holds a run's checkpoints \(checkpoint_0000002.pt\); "
                                         "continue it with --resume"):
        train(config, progress=False)
    with pytest.raises(FileNotFoundError, match="--resume .*nope.pt: no such checkpoint"):
        train(config, progress=False, resume=str(tmp_path / "nope.pt"))


def test_resume_takes_the_newest_checkpoint_and_clears_unfinished_writes(tmp_path, capsys):
    config = tiny("digits", tmp_path, max_steps=3, save_every=1)
    train(config, progress=False)
    run = tmp_path / "run"
    # a kill between renaming checkpoint_0000003.pt and re-linking checkpoint.pt, and temp files
    # of writes that never finished
    (run / "checkpoint.pt").unlink()
    os.link(run / "checkpoint_0000002.pt", run / "checkpoint.pt")
    (run / ".checkpoint_0000004.pt.tmp-99999").write_bytes(bytes(2_000_000))
    (run / ".checkpoint.pt.link-4").write_bytes(b"")
    assert resolve_resume(True, run) == run / "checkpoint_0000003.pt"
    assert resolve_resume(str(run), None) == run / "checkpoint_0000003.pt"
    capsys.readouterr()
    result = train(dataclasses.replace(config, max_steps=4), progress=False, resume=True)
    assert result.step == 4 and result.checkpoint == run / "checkpoint_0000004.pt"
    assert f"removed 2 temp file(s) of unfinished checkpoint writes (2.0 MB) from {run}" in capsys.readouterr().err
    assert sorted(p.name for p in run.glob(".*")) == []
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 4


@pytest.mark.parametrize("field, value, stored", [
    ("noise_schedule", "linear", "'cosine'"), ("diffusion_steps", 500, "1000"),
    ("model_var_type", "learned_range", "'fixed_small'"), ("loss_type", "rescaled_mse", "'mse'"),
    ("model_mean_type", "start_x", "'epsilon'"), ("p_uncond", 0.0, "0.1"), ("lr", 0.01, "0.001"),
    ("batch_size", 8, "4"), ("seed", 1, "0")])
def test_resume_refuses_a_change_of_the_maths(field, value, stored, tmp_path):
    config = tiny("digits", tmp_path)
    train(config, progress=False)
    changed = dataclasses.replace(config, max_steps=4, **{field: value})
    with pytest.raises(ValueError, match=rf"cannot resume from .*checkpoint_0000002.pt: {field}={stored} in the "
                                         rf"checkpoint, {value!r} now .*resume with --set {field}="):
        train(changed, progress=False, resume=True)


def test_resume_allows_length_cadence_and_how_steps_compute(tmp_path, capsys):
    config = tiny("digits", tmp_path, p_uncond=0.0)
    train(config, progress=False)
    changed = dataclasses.replace(config, max_steps=3, log_every=3, save_every=5, microbatch=2,
                                  precision="bf16", ema_rates=(0.999, 0.5), sample_steps="ddim3",
                                  keep_checkpoints=3, description="longer")
    assert train(changed, progress=False, resume=True).step == 3
    capsys.readouterr()
    code = main(["--preset", "digits", "--out-dir", str(tmp_path / "run"), "--resume", "--no-progress",
                 "--set", "model=tiny", "--set", "image_size=8", "--set", "noise_schedule=linear"])
    err = capsys.readouterr().err
    # the start-up summary comes first; the refusal is one line after it, before any training step
    assert code == 2 and "Traceback" not in err and "steps" not in err.splitlines()[-1]
    assert "noise_schedule='cosine' in the checkpoint, 'linear' now" in err.splitlines()[-1]


def test_every_resumable_field_exists_and_the_maths_fields_are_checked():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert RESUMABLE_FIELDS | NETWORK_FIELDS <= names
    for field in ("task", "dataset", "image_size", "noise_schedule", "diffusion_steps", "model_mean_type",
                  "model_var_type", "loss_type", "schedule_sampler", "p_uncond", "class_cond", "low_res_size",
                  "augment", "max_aug_level", "classifier_t_max", "batch_size", "lr", "weight_decay",
                  "lr_anneal_steps", "grad_clip", "seed"):
        assert field in names and field not in RESUMABLE_FIELDS | NETWORK_FIELDS, field


def test_the_loader_leaves_the_global_rng_alone():
    """The DataLoader draws its base seed from its own (seed, epoch) generator, not the global one."""
    from gcg.data import make_loader

    loader = make_loader(torch.utils.data.TensorDataset(torch.arange(10.0), torch.arange(10)), batch_size=4)
    before = torch.get_rng_state()
    batches = [next(loader)[1].tolist() for _ in range(5)]  # two batches per epoch: three epochs begun
    assert torch.equal(torch.get_rng_state(), before)
    resumed = make_loader(torch.utils.data.TensorDataset(torch.arange(10.0), torch.arange(10)), batch_size=4,
                          start_step=3)
    assert [next(resumed)[1].tolist() for _ in range(2)] == batches[3:]


def test_save_every_flag_and_its_check(tmp_path, capsys):
    args = ["--preset", "digits", "--max-steps", "3", "--no-progress", "--set", "model=tiny",
            "--set", "image_size=8", "--set", "batch_size=4", "--set", "sample_every=0",
            "--set", "num_sample_images=2", "--set", "sample_steps=ddim2"]
    assert main([*args, "--out-dir", str(tmp_path / "a"), "--save-every", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "a").glob("checkpoint_*.pt")) == [
        "checkpoint_0000002.pt", "checkpoint_0000003.pt"]  # every step, the newest keep_checkpoints=2
    capsys.readouterr()
    assert main([*args, "--out-dir", str(tmp_path / "b"), "--save-every", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --save-every: must be >= 0, got -1" in err
    with pytest.raises(ValueError, match="save_every=-1 must be >= 0"):  # the config check behind --set
        validate(dataclasses.replace(get_preset("digits"), save_every=-1))
    assert get_preset("digits").save_every > 0 and all(  # the CPU presets save periodically
        c.save_every > 0 for c in PRESETS.values())


@pytest.mark.parametrize("preset, task", [("digits", "DiffusionTask"), ("digits-classifier", "ClassifierTask"),
                                          ("photo32-sr8", "SuperResTask")])
def test_each_task_draws_its_t_and_returns_the_statistics_it_names(preset, task):
    """`train_step` takes t and the per-example losses from the config's task (gcg.training.tasks)."""
    from gcg.training import tasks

    config = tiny(preset, batch_size=64, classifier_t_max=0.25)
    state, dataset = setup(config)
    assert type(state.task) is getattr(tasks, task)
    x = torch.stack([torch.as_tensor(dataset[i % len(dataset)][0]) for i in range(64)])
    y = torch.tensor([int(dataset[i % len(dataset)][1]) for i in range(64)])
    stats = train_step(state, x, y)
    per_example = set(stats) - {"t", "grad_norm", "skipped", "loss_scale"}
    assert per_example and per_example <= set(state.task.stats)
    assert all(stats[k].shape == (64,) for k in per_example)
    if task == "ClassifierTask":  # t ~ U{0, ..., classifier_t_max * T - 1}, every example weighted 1
        assert per_example == {"loss", "correct1", "correct5"} and not state.task.makes_samples
        assert stats["t"].max() < 250 and stats["t"].min() >= 0
    else:  # the schedule sampler's uniform t over all T
        assert "mse" in per_example and state.task.makes_samples and stats["t"].max() >= 250


def test_make_task_names_the_valid_tasks():
    from gcg.training.tasks import make_task

    with pytest.raises(ValueError, match="unknown task 'denoise'; valid tasks: diffusion, super_res, classifier"):
        make_task("denoise")


def test_every_configurable_task_has_a_class():
    """`TrainConfig.task` is validated against config.TASKS; each name must build its task object."""
    from gcg.training import config, tasks

    assert set(config.TASKS) == set(tasks.TASKS)
    assert [type(tasks.make_task(name)).__name__ for name in config.TASKS] == [
        "DiffusionTask", "ClassifierTask", "SuperResTask"]


def test_gcg_train_still_exports_what_code_imported_from_it():
    """The trainer moved into gcg.training; gcg.train re-exports the same objects."""
    import gcg.train
    from gcg.training import build, config, loop, state, step

    for name in gcg.train.__all__:
        assert hasattr(gcg.train, name), name
    assert gcg.train.train is loop.train and gcg.train.setup is build.setup and gcg.train.save is state.save
    assert gcg.train.RESUMABLE_FIELDS is config.RESUMABLE_FIELDS and gcg.train.update_ema is step.update_ema
    for private in ("_losses", "_draw_global", "_optimizer_step"):  # shown by chapters 04 and 08
        assert getattr(gcg.train, private) is getattr(step, private)
