"""One command for a GPU machine: CUDA correctness, training throughput with MFU, DDP, sampling speed.

    python benchmarks/gpu_check.py                      # on a GPU machine: <= 8 minutes, full 296M preset
    python benchmarks/gpu_check.py --cpu-smoke          # same code paths, tiny shapes, on the CPU (CI)

Prints one table and writes it as JSON (``--json``, default gpu_check.json). Sections:
  correctness  imagenet64 UNet and classifier forward/backward on the device vs the CPU in fp32;
               DDIM and DDPM classifier-guided sampling on the same noise; the OpenAI converter's
               round trip on the device. Tolerance: the device may differ from the CPU by at most
               10x the CPU's own fp32 round-off (relative L2 distance of CPU fp32 to CPU fp64 on the
               same weights and inputs) -- two correct fp32 results differ by about the sum of
               their round-offs, so 10x leaves room for other summation orders, never for a bug.
  train_resume 3 steps of `gcg.train.train` on the imagenet64 recipe and random images in fp32,
               bf16 and fp16: a 2-step run resumed to step 3 matches the 3-step run (within one
               Adam step, since CUDA reductions are not bit-reproducible), and an injected inf
               gradient skips the step (fp16: the loss scale halves).
  throughput   img/s, peak memory and model FLOPs utilisation (FLOPs from FlopCounterMode on the
               meta device; peak = the device's dense bf16 TFLOP/s) of whole training steps of
               the 296M preset: bf16/fp16, eager/torch.compile, contiguous/channels_last, at the
               largest micro-batch that fits (a step = 2 micro-batches, as the preset's batch of
               2048 is accumulated on one GPU).
  ddp          the same training step under `torchrun --nproc_per_node N` (NCCL; N = GPUs; on
               the CPU 2 gloo processes), img/s per GPU and scaling efficiency.
  sampling     img/s of DDIM-25 and DDPM-250 at batch 256, unguided and classifier-guided (UNet
               forward + classifier forward/backward per step), bf16 autocast; timed over a few
               steps of each chain and extrapolated (every step of a chain costs the same).
Each section has a time budget (``--budget-s`` split by fixed shares) and skips what does not fit,
saying so in its row.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gcg.convert import convert_attention_order, gcg_to_openai, openai_to_gcg  # noqa: E402
from gcg.data import TensorImageDataset  # noqa: E402
from gcg.guidance import classifier_cond_fn  # noqa: E402
from gcg.nn import create_model, get_preset as get_network  # noqa: E402
from gcg.presets import apply_overrides, get_preset  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device name: NVIDIA data sheets.
PEAK_BF16_TFLOPS = (("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0),
                    ("H100", 989.0), ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
                    ("A10G", 70.0), ("L4", 121.0))
SECTIONS = ("correctness", "train_resume", "throughput", "ddp", "sampling")
SHARES = {"correctness": 0.15, "train_resume": 0.15, "throughput": 0.40, "ddp": 0.12, "sampling": 0.18}
SMOKE_UNET = dict(image_size=16, model_channels=32, num_res_blocks=1, num_head_channels=32,
                  attention_resolutions=(8, 4))
SMOKE_CLASSIFIER = dict(image_size=16, model_channels=32, num_res_blocks=1, num_head_channels=32,
                        attention_resolutions=(8, 4))


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of a device from its name (first match in PEAK_BF16_TFLOPS), else None."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


class Budget:
    """Wall-clock deadlines: each section gets a share of the total (plus what earlier ones left)."""

    def __init__(self, total_s: float, sections=SECTIONS):
        self.total, self.start, self.deadline = total_s, time.perf_counter(), time.perf_counter()
        self.norm = sum(SHARES[s] for s in sections)  # the selected sections share the whole budget

    def open(self, section: str) -> None:
        self.deadline = max(self.deadline, time.perf_counter()) + SHARES[section] / self.norm * self.total

    def left(self) -> float:
        return self.deadline - time.perf_counter()


@dataclasses.dataclass
class Setting:
    """What the run checks: full shapes on a GPU, tiny ones in --cpu-smoke mode."""

    device: torch.device
    smoke: bool
    image_size: int
    unet_overrides: dict
    classifier_overrides: dict
    sample_batch: int
    check_batch: int

    def unet_config(self):
        return dataclasses.replace(get_network("64x64_diffusion"), **self.unet_overrides)

    def classifier_config(self):
        return dataclasses.replace(get_network("64x64_classifier"), **self.classifier_overrides)

    def train_sets(self) -> dict:
        """--set overrides of the imagenet64 recipe for this setting (none on a GPU)."""
        sets = {"image_size": self.image_size, "device": str(self.device)}
        sets.update({f"model.{k}": v for k, v in self.unet_overrides.items() if k != "image_size"})
        return sets


def make_setting(args) -> Setting:
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    device = torch.device("cpu" if smoke else "cuda")
    if smoke:
        return Setting(device, True, 16, dict(SMOKE_UNET), dict(SMOKE_CLASSIFIER), sample_batch=4, check_batch=2)
    return Setting(device, False, 64, {}, {}, sample_batch=256, check_batch=2)


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def perturb_zero_parameters(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give zero-initialised layers (ADM zeroes output convs) small random weights, so a check
    on a freshly built network sees every layer's output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 on the CPU."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@contextlib.contextmanager
def exact_fp32():
    """No TF32 and deterministic cuDNN algorithms on CUDA (fp32 means fp32 for the correctness checks)."""
    b = torch.backends
    flags = b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic
    b.cuda.matmul.allow_tf32 = b.cudnn.allow_tf32 = b.cudnn.benchmark = False
    b.cudnn.deterministic = True
    try:
        yield
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic = flags


def row(section, name, value=None, unit="", passed=None, **extra) -> dict:
    return {"section": section, "name": name, "value": value, "unit": unit, "passed": passed, **extra}


# ----------------------------------------------------------------------------- correctness
def _fwd_bwd(model, x, t, kwargs):
    """(output, grad of every parameter, grad of x) of a scalar test loss."""
    x = x.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    out = model(x, t, **kwargs)
    weights = torch.linspace(-1, 1, out.numel(), device=out.device, dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return out.detach(), grads.detach(), x.grad.detach()


def check_network(setting, name, config, kwargs_fn, rows):
    """Device fp32 vs CPU fp32, both against CPU fp64, for one network's forward and backward."""
    torch.manual_seed(0)
    cpu = perturb_zero_parameters(create_model(config).eval(), 1)
    g = torch.Generator().manual_seed(2)
    n = setting.check_batch
    x = torch.randn(n, config.in_channels, config.image_size, config.image_size, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    kwargs = kwargs_fn(n, g)
    ref64 = _fwd_bwd(_clone_as(cpu, torch.float64), x.double(), t, kwargs)
    ref32 = _fwd_bwd(cpu, x, t, kwargs)
    dev_model = _clone_as(cpu, torch.float32).to(setting.device)
    with exact_fp32():
        dev = _fwd_bwd(dev_model, x.to(setting.device), t.to(setting.device),
                       {k: v.to(setting.device) for k, v in kwargs.items()})
    del dev_model
    for part, i in (("output", 0), ("parameter grads", 1), ("input grad", 2)):
        roundoff = rel_l2(ref32[i], ref64[i])
        err = rel_l2(dev[i], ref32[i])
        tol = 10 * roundoff + 1e-7
        rows.append(row("correctness", f"{name} {part}: {setting.device.type} vs cpu (fp32)", err,
                        "rel L2", err <= tol, tolerance=tol, cpu_fp32_vs_fp64=roundoff))


def _clone_as(model, dtype):
    import copy

    return copy.deepcopy(model).to(dtype)


@contextlib.contextmanager
def float32_noise():
    """Draw the samplers' noise in float32 whatever the sample dtype, so the fp64 reference run
    gets the same numbers (torch.randn's float64 stream differs from its float32 one)."""
    import gcg.diffusion as gd

    original = gd._randn
    gd._randn = lambda shape, device, dtype, generator=None: original(shape, device, torch.float32,
                                                                     generator).to(dtype)
    try:
        yield
    finally:
        gd._randn = original


def check_sampling(setting, rows):
    """DDIM (eta = 0) and DDPM classifier-guided sampling on the device vs the CPU, same noise (a
    CPU generator feeds both), fp32; the CPU fp64 run gives the round-off scale."""
    from gcg.diffusion import DiffusionConfig

    torch.manual_seed(0)
    unet = perturb_zero_parameters(create_model(setting.unet_config()).eval(), 3)
    clf = perturb_zero_parameters(create_model(setting.classifier_config()).eval(), 4)
    diffusion = DiffusionConfig(noise_schedule="cosine", steps=1000, model_var_type="learned_range").build()
    n, size = setting.check_batch, setting.image_size
    y = torch.arange(n) % 1000
    for sampler, spec in (("DDIM", "ddim4"), ("DDPM", "4")):
        chain = diffusion.respace(spec)
        outs = {}
        for key, device, dtype in (("fp64", "cpu", torch.float64), ("cpu", "cpu", torch.float32),
                                   ("dev", setting.device, torch.float32)):
            model, classifier = _clone_as(unet, dtype).to(device), _clone_as(clf, dtype).to(device)
            gen = torch.Generator().manual_seed(5)
            noise = torch.randn(n, 3, size, size, generator=gen).to(device, dtype)
            common = dict(noise=noise, clip_denoised=True, model_kwargs={"y": y.to(device)},
                          cond_fn=classifier_cond_fn(classifier, 1.0), device=device, generator=gen)
            with exact_fp32(), float32_noise(), torch.no_grad():
                if sampler == "DDIM":
                    outs[key] = chain.ddim_sample_loop(model, noise.shape, eta=0.0, **common)
                else:
                    outs[key] = chain.p_sample_loop(model, noise.shape, **common)
        roundoff = rel_l2(outs["cpu"], outs["fp64"])
        err = rel_l2(outs["dev"], outs["cpu"])
        tol = 10 * roundoff + 1e-7
        rows.append(row("correctness", f"{sampler} guided x_0 ({spec}, same noise): "
                        f"{setting.device.type} vs cpu", err, "rel L2", err <= tol, tolerance=tol,
                        cpu_fp32_vs_fp64=roundoff))


def check_converter(setting, rows):
    """gcg -> OpenAI layout -> gcg on the device: identical tensors; the legacy attention order
    (repacked qkv) computes the same function."""
    config = setting.unet_config()
    torch.manual_seed(0)
    model = perturb_zero_parameters(create_model(config).eval(), 6).to(setting.device)
    state = model.state_dict()
    back = openai_to_gcg(gcg_to_openai(state, config), config)
    same = set(back) == set(state) and all(torch.equal(back[k], state[k]) and back[k].device == state[k].device
                                           for k in state)
    rows.append(row("correctness", f"converter gcg->openai->gcg on {setting.device.type}: identical tensors",
                    float(same), "bool", same))
    legacy_state, legacy_config = convert_attention_order(state, config, new_order=False)
    legacy = create_model(legacy_config).eval().to(setting.device)
    legacy.load_state_dict(legacy_state)
    g = torch.Generator().manual_seed(7)
    n = setting.check_batch
    x = torch.randn(n, 3, config.image_size, config.image_size, generator=g).to(setting.device)
    t = torch.randint(0, 1000, (n,), generator=g).to(setting.device)
    y = (torch.arange(n) % 1000).to(setting.device)
    with exact_fp32(), torch.no_grad():
        err = rel_l2(legacy(x, t, y=y), model(x, t, y=y))
    rows.append(row("correctness", "legacy attention order (repacked qkv): same output", err, "rel L2",
                    err <= 1e-5, tolerance=1e-5))


def section_correctness(setting, budget, rows):
    unet, clf = setting.unet_config(), setting.classifier_config()
    check_network(setting, "UNet", unet, lambda n, g: {"y": torch.randint(0, 1000, (n,), generator=g)}, rows)
    check_network(setting, "classifier", clf, lambda n, g: {}, rows)
    check_sampling(setting, rows)
    check_converter(setting, rows)


# ----------------------------------------------------------------------------- train + resume
def random_dataset(n, size, num_classes=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    labels = torch.randint(0, num_classes, (n,), generator=g)
    labels[0] = num_classes - 1  # the trainer infers the label count from the largest label
    return TensorImageDataset(images, labels)


def section_train_resume(setting, budget, rows, workdir):
    from gcg.train import setup, train, train_step

    dataset = random_dataset(16, setting.image_size)
    for precision in ("fp16", "bf16", "fp32"):  # the mixed-precision paths first: fp32 is the CPU's path too
        if budget.left() < 0:
            rows.append(row("train_resume", f"{precision}: skipped (time budget)"))
            continue
        sets = {**setting.train_sets(), "precision": precision, "batch_size": 4, "microbatch": 2,
                "max_steps": 3, "log_every": 1, "save_every": 0, "keep_checkpoints": 1,
                "dropout": 0.1, "seed": 0}
        config = apply_overrides(get_preset("imagenet64"), sets)
        start = time.perf_counter()
        straight = train(dataclasses.replace(config, out_dir=None), progress=False, dataset=dataset)
        run_dir = Path(workdir) / f"resume_{precision}"
        train(dataclasses.replace(config, out_dir=str(run_dir), max_steps=2), progress=False, dataset=dataset)
        resumed = train(dataclasses.replace(config, out_dir=str(run_dir)), progress=False, dataset=dataset,
                        resume=True)
        diff = max(float((a - b).detach().abs().max()) for a, b in zip(straight.model.parameters(),
                                                                 resumed.model.parameters()))
        finite = all(math.isfinite(h["loss"]) for h in resumed.history)
        rows.append(row("train_resume", f"{precision}: 3 steps vs 2 + resume, max |dw|", diff, "abs",
                        diff <= config.lr and finite and resumed.step == 3, tolerance=config.lr,
                        seconds=round(time.perf_counter() - start, 1)))
        shutil.rmtree(run_dir, ignore_errors=True)
        del straight, resumed
        # an inf gradient skips the step (fp16: GradScaler halves its scale; fp32/bf16: non-finite norm)
        state, _ = setup(dataclasses.replace(config, out_dir=None), dataset=dataset)
        x = torch.stack([dataset[i][0] for i in range(4)])
        y = torch.stack([dataset[i][1] for i in range(4)])
        first = next(state.model.parameters())
        hook = first.register_hook(lambda grad: torch.full_like(grad, float("inf")))
        before = [p.detach().clone() for p in state.model.parameters()]
        scale = state.scaler.get_scale() if state.scaler.is_enabled() else 1.0
        stats = train_step(state, x, y)
        unchanged = all(torch.equal(a, b) for a, b in zip(before, state.model.parameters()))
        halved = (not state.scaler.is_enabled()) or state.scaler.get_scale() == scale / 2
        hook.remove()
        ok_after = not train_step(state, x, y)["skipped"]
        rows.append(row("train_resume", f"{precision}: injected inf skips the step"
                        + (" (loss scale halves)" if state.scaler.is_enabled() else ""),
                        float(stats["skipped"]), "bool", bool(stats["skipped"]) and unchanged and halved and ok_after,
                        compute_precision=state.precision))
        del state, before
        _free(setting.device)


def _free(device):
    import gc

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- throughput
def flops_per_image(config, image_size: int) -> float:
    """Forward + backward FLOPs of one training image (FlopCounterMode on the meta device; the
    label embedding is left out: meta tensors hold no labels, and a lookup costs no FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = create_model(dataclasses.replace(config, num_classes=None, class_null=False))
    x = torch.empty(1, config.in_channels, image_size, image_size, device="meta")
    t = torch.zeros(1, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, t).square().mean().backward()
    return float(counter.get_total_flops())


def train_config(setting, precision, micro, steps_batch, compile_=False, channels_last=False):
    sets = {**setting.train_sets(), "precision": precision, "batch_size": steps_batch, "microbatch": micro,
            "compile": compile_ and not setting.smoke, "channels_last": channels_last, "out_dir": None}
    return apply_overrides(get_preset("imagenet64"), sets)


def time_steps(setting, config, dataset, budget_s, compile_=False, max_steps=20):
    """(img/s, peak memory MiB, seconds spent) of whole train_steps after warm-up steps."""
    from gcg.train import setup, train_step

    start = time.perf_counter()
    state, _ = setup(config, dataset=dataset)
    if compile_ and setting.smoke:  # no C++ toolchain wait on a CPU: trace with dynamo, run eagerly
        state.forward = torch.compile(state.forward, backend="eager")
    b = config.batch_size
    x = torch.stack([dataset[i % len(dataset)][0] for i in range(b)])
    y = torch.stack([dataset[i % len(dataset)][1] for i in range(b)])
    for _ in range(2):  # warm-up (compilation, cuDNN autotuning, allocator)
        train_step(state, x, y)
    synchronize(setting.device)
    if setting.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0, steps = time.perf_counter(), 0
    while steps < max_steps and (steps < 2 or time.perf_counter() - t0 < budget_s):
        train_step(state, x, y)
        steps += 1
        if steps == 1:
            synchronize(setting.device)
    synchronize(setting.device)
    seconds = time.perf_counter() - t0
    if setting.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del state
    _free(setting.device)
    return b * steps / seconds, peak, time.perf_counter() - start


def largest_microbatch(setting, dataset, budget) -> tuple[int, list]:
    """The largest bf16 micro-batch whose training step fits in 90% of device memory: extrapolate
    from the peak at a probe batch (memory is affine in the batch), then step down on OOM."""
    if setting.smoke:
        return 2, ["cpu: micro-batch 2"]
    notes = []
    total = torch.cuda.get_device_properties(0).total_memory / 2**20
    probe = 16
    _, peak, _ = time_steps(setting, train_config(setting, "bf16", probe, probe), dataset, 0.0, max_steps=1)
    _, peak2, _ = time_steps(setting, train_config(setting, "bf16", 2 * probe, 2 * probe), dataset, 0.0,
                             max_steps=1)
    per_image = max((peak2 - peak) / probe, 1.0)
    static = peak - probe * per_image
    guess = int((0.9 * total - static) / per_image) // 16 * 16
    notes.append(f"probe: {per_image:.0f} MiB/image + {static:.0f} MiB static of {total:.0f} MiB")
    micro = max(16, min(guess, 512))  # beyond a few hundred images a step only gets longer, not faster
    while micro >= 16:
        try:
            time_steps(setting, train_config(setting, "bf16", micro, micro), dataset, 0.0, max_steps=1)
            return micro, notes
        except torch.cuda.OutOfMemoryError:
            notes.append(f"micro-batch {micro}: out of memory")
            _free(setting.device)
            micro = micro * 3 // 4 // 16 * 16
    return 16, notes


def section_throughput(setting, budget, rows, info):
    config0 = setting.unet_config()
    flops = flops_per_image(config0, setting.image_size)
    peak = info.get("peak_bf16_tflops")
    params = sum(p.numel() for p in create_model(config0).parameters()) if setting.smoke else None
    if params is None:
        with torch.device("meta"):
            params = sum(p.numel() for p in create_model(config0).parameters())
    rows.append(row("throughput", "model FLOPs per training image (fwd+bwd)", flops / 1e9, "GFLOP",
                    parameters=params))
    dataset = random_dataset(64, setting.image_size)
    micro, notes = largest_microbatch(setting, dataset, budget)
    rows.append(row("throughput", "largest per-GPU micro-batch (bf16)", micro, "images", notes=notes))
    variants = [("bf16", False, False), ("bf16", True, False), ("fp16", False, False), ("bf16", True, True),
                ("bf16", False, True), ("fp16", True, False)]  # most informative first: the budget may cut the tail
    for i, (precision, compile_, channels_last) in enumerate(variants):
        name = (f"train {precision}{' compile' if compile_ else ''}{' channels_last' if channels_last else ''}"
                f", micro {micro} x 2")
        left = budget.left()
        need = 90 if compile_ and not setting.smoke else 10  # compilation alone takes about a minute
        if left < need and not setting.smoke:
            rows.append(row("throughput", name + ": skipped (time budget)"))
            continue
        per_variant = max(3.0, left / (len(variants) - i) / 2) if not setting.smoke else 0.0
        try:
            rate, mem, spent = time_steps(setting, train_config(setting, precision, micro, 2 * micro, compile_,
                                                                channels_last), dataset, per_variant,
                                          compile_=compile_, max_steps=8 if not setting.smoke else 2)
        except torch.cuda.OutOfMemoryError:
            _free(setting.device)
            rows.append(row("throughput", name + ": out of memory"))
            continue
        mfu = rate * flops / (peak * 1e12) if peak else None
        rows.append(row("throughput", name, rate, "img/s", peak_memory_mib=round(mem), mfu=mfu,
                        seconds=round(spent, 1)))


# ----------------------------------------------------------------------------- DDP
def ddp_worker(args) -> None:
    """One torchrun rank: time train_steps of the same per-GPU batch; rank 0 writes img/s."""
    from gcg import dist
    from gcg.train import setup, train_step

    setting = make_setting(args)
    info = dist.init_distributed("auto" if not setting.smoke else "cpu")
    world = info.world_size
    micro = args.ddp_micro
    config = train_config(setting, "bf16", micro, 2 * micro * world)
    dataset = random_dataset(max(64, 2 * micro * world), setting.image_size)
    state, _ = setup(dataclasses.replace(config, device="auto" if not setting.smoke else "cpu"), dataset=dataset)
    n = config.batch_size // world
    x = torch.stack([dataset[i % len(dataset)][0] for i in range(n)])
    y = torch.stack([dataset[i % len(dataset)][1] for i in range(n)])
    for _ in range(2):
        train_step(state, x, y)
    synchronize(state.info.device)
    t0, steps = time.perf_counter(), 0
    while steps < args.ddp_steps:
        train_step(state, x, y)
        steps += 1
    synchronize(state.info.device)
    seconds = torch.tensor([time.perf_counter() - t0], device=state.info.device)
    torch.distributed.all_reduce(seconds, op=torch.distributed.ReduceOp.MAX)
    if info.is_main:
        Path(args.ddp_out).write_text(json.dumps({"world_size": world, "global_batch": config.batch_size,
                                                  "img_per_s": config.batch_size * steps / float(seconds)}))
    dist.cleanup()


def section_ddp(setting, budget, rows, single_rate, micro, workdir):
    gpus = torch.cuda.device_count() if not setting.smoke else 0
    if not setting.smoke and gpus < 2:
        rows.append(row("ddp", f"{gpus} GPU: no DDP run (needs >= 2 GPUs)"))
        return
    nproc = gpus if gpus >= 2 else 2
    out = Path(workdir) / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(Path(__file__).resolve()), "--ddp-worker", "--ddp-out", str(out), "--ddp-micro", str(micro),
           "--ddp-steps", str(2 if setting.smoke else 10)] + (["--cpu-smoke"] if setting.smoke else [])
    env = dict(os.environ)
    if setting.smoke:
        env["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=max(30.0, budget.left() + 60))
    except subprocess.TimeoutExpired:
        rows.append(row("ddp", f"torchrun x {nproc}: timed out", passed=False))
        return
    if proc.returncode != 0 or not out.is_file():
        rows.append(row("ddp", f"torchrun x {nproc}: failed (exit {proc.returncode})", passed=False,
                        stderr=proc.stderr[-2000:]))
        return
    result = json.loads(out.read_text())
    backend = "gloo" if setting.smoke else "nccl"
    per_gpu = result["img_per_s"] / nproc
    rows.append(row("ddp", f"torchrun x {nproc} ({backend}), bf16, micro {micro} x 2 per rank", result["img_per_s"],
                    "img/s", passed=True, per_process=per_gpu,
                    scaling_efficiency=per_gpu / single_rate if single_rate else None,
                    seconds=round(time.perf_counter() - start, 1)))


# ----------------------------------------------------------------------------- sampling
def section_sampling(setting, budget, rows):
    from gcg.diffusion import DiffusionConfig

    torch.manual_seed(0)
    unet = create_model(setting.unet_config()).eval().to(setting.device)
    clf = create_model(setting.classifier_config()).eval().to(setting.device)
    diffusion = DiffusionConfig(noise_schedule="cosine", steps=1000, model_var_type="learned_range").build()
    n, size = setting.sample_batch, setting.image_size
    y = torch.arange(n, device=setting.device) % 1000
    cases = [("DDIM-25", "ddim25", False), ("DDIM-25", "ddim25", True), ("DDPM-250", "250", False),
             ("DDPM-250", "250", True)]
    for i, (name, spec, guided) in enumerate(cases):
        label = f"{name} {'classifier-guided' if guided else 'unguided'}, batch {n}"
        left = budget.left()
        if left < 3 and not setting.smoke:
            rows.append(row("sampling", label + ": skipped (time budget)"))
            continue
        chain = diffusion.respace(spec)
        loop = chain.ddim_sample_loop_progressive if spec.startswith("ddim") else chain.p_sample_loop_progressive
        cond_fn = classifier_cond_fn(clf, 1.0) if guided else None
        gen = torch.Generator(setting.device).manual_seed(0)
        timed_steps, warmup, t0 = 0, 2, None
        max_steps = 2 if setting.smoke else min(chain.num_timesteps, 10)  # every step costs the same
        step_budget = left / (len(cases) - i)
        autocast = torch.autocast(setting.device.type, dtype=torch.bfloat16, enabled=not setting.smoke)
        with autocast, torch.no_grad():
            for k, _ in enumerate(loop(unet, (n, 3, size, size), model_kwargs={"y": y}, cond_fn=cond_fn,
                                       device=setting.device, generator=gen)):
                if k + 1 == warmup:
                    synchronize(setting.device)
                    t0 = time.perf_counter()
                elif k + 1 > warmup:
                    timed_steps += 1
                    if k + 1 >= max_steps + warmup or (timed_steps >= 3 and
                                                       time.perf_counter() - t0 > step_budget * 0.8):
                        break
                if setting.smoke and k + 1 >= warmup + 1:
                    break
        synchronize(setting.device)
        per_step = (time.perf_counter() - t0) / max(timed_steps, 1)
        rows.append(row("sampling", label, n / (per_step * chain.num_timesteps), "img/s",
                        ms_per_step=per_step * 1e3, timed_steps=timed_steps, chain_steps=chain.num_timesteps,
                        precision="bf16 autocast" if not setting.smoke else "fp32"))
    del unet, clf
    _free(setting.device)


# ----------------------------------------------------------------------------- driver
def device_info(setting) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "smoke": setting.smoke,
            "device": str(setting.device)}
    if setting.device.type == "cuda":
        name = torch.cuda.get_device_name(0)
        info.update(device_name=name, gpus=torch.cuda.device_count(), cuda=torch.version.cuda,
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                    peak_bf16_tflops=peak_tflops(name))
    else:
        info.update(device_name=f"cpu ({torch.get_num_threads()} threads)", peak_bf16_tflops=None)
    return info


def format_table(report: dict) -> str:
    lines = [f"gcg GPU check on {report['info']['device_name']} (torch {report['info']['torch']}"
             f"{', CPU smoke mode: tiny shapes' if report['info']['smoke'] else ''}), "
             f"{report['elapsed_s']:.0f} s"]
    lines.append(f"{'section':<13} {'check':<68} {'value':>12} {'unit':<8} {'MFU':>6} {'peak MiB':>9} {'ok':>4}")
    for r in report["rows"]:
        value = r["value"]
        text = "" if value is None else (f"{value:.3g}" if isinstance(value, float) else str(value))
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else ""
        mem = str(r.get("peak_memory_mib", ""))
        ok = {True: "yes", False: "NO", None: ""}[r["passed"]]
        lines.append(f"{r['section']:<13} {r['name'][:68]:<68} {text:>12} {r['unit']:<8} {mfu:>6} {mem:>9} {ok:>4}")
    return "\n".join(lines)


def run_check(args) -> dict:
    setting = make_setting(args)
    if not setting.smoke:
        torch.backends.cudnn.benchmark = True
    budget = Budget(args.budget_s, args.sections)
    info = device_info(setting)
    rows: list[dict] = []
    single_rate, micro = None, 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gcg_gpu_check_") as workdir:
        for section in SECTIONS:
            if section not in args.sections:
                continue
            budget.open(section)
            t0 = time.perf_counter()
            try:
                if section == "correctness":
                    section_correctness(setting, budget, rows)
                elif section == "train_resume":
                    section_train_resume(setting, budget, rows, workdir)
                elif section == "throughput":
                    section_throughput(setting, budget, rows, info)
                    micro = next((r["value"] for r in rows if r["name"].startswith("largest per-GPU")), 2)
                    single_rate = next((r["value"] for r in rows if r["name"].startswith("train bf16, micro")),
                                       None)
                elif section == "ddp":
                    section_ddp(setting, budget, rows, single_rate, micro, workdir)
                elif section == "sampling":
                    section_sampling(setting, budget, rows)
            except Exception as exc:  # one broken section must not hide the others' figures
                rows.append(row(section, f"{section} failed: {type(exc).__name__}: {exc}"[:300], passed=False))
            info.setdefault("section_seconds", {})[section] = round(time.perf_counter() - t0, 1)
    return {"info": info, "rows": rows, "elapsed_s": time.perf_counter() - start,
            "sections": {s: [r for r in rows if r["section"] == s] for s in SECTIONS if s in args.sections},
            "all_passed": all(r["passed"] is not False for r in rows)}


def parse_sections(text: str) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b') in SECTIONS order; an unknown name is an argparse error naming the choices."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {','.join(SECTIONS)}")
    return tuple(s for s in SECTIONS if s in names)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (automatic without CUDA)")
    p.add_argument("--json", default="gpu_check.json", help="where to write the report")
    p.add_argument("--budget-s", type=float, default=420.0, help="total time budget of the sections")
    p.add_argument("--sections", type=parse_sections, default=SECTIONS,
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default: all), e.g. to finish "
                        "what an earlier run skipped")
    p.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ddp-out", help=argparse.SUPPRESS)
    p.add_argument("--ddp-micro", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--ddp-steps", type=int, default=10, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args)
        return 0
    report = run_check(args)
    print(format_table(report))
    Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    print(f"written: {args.json}")
    return 0 if report["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
