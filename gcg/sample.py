"""Checkpoint(s) in, samples out: ``python -m gcg.sample CKPT`` and ``sample(...)`` for notebooks.

DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) or DDIM (Song et al. 2020, Eq. (12)) over a
respaced chain ("250", "ddim25"; Nichol & Dhariwal 2021 Sec. 4), optionally guided by a noisy
classifier (Dhariwal & Nichol 2021, Algorithms 1-2, via `gcg.guidance.classifier_cond_fn`) or
classifier-free (Ho & Salimans 2021, via `gcg.guidance.ClassifierFreeGuidance`).
Writes ``samples_NxHxWxC.npz`` (``arr_0`` uint8 NHWC, ``arr_1`` int labels: the format the
ADM evaluation suite and `gcg.evaluate` read) and a PNG grid. From Python, ``gcg.sample_images``
(argument checks, then `sample`) and ``gcg.save_grid``.
"""
from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gcg.images import enlarge_for_grid, to_uint8  # noqa: F401  (to_uint8: re-exported)
from gcg.nn.precision import PRECISIONS, autocast, check_precision, resolve_precision


def _model_config(model):
    cfg = getattr(model, "config", None) or getattr(model, "cfg", None)
    if cfg is None:
        raise ValueError("cannot infer the sample shape from this model: pass shape=(C, H, W)")
    return cfg


def sample_shape(model) -> tuple:
    """One example's shape from a gcg network's config: (C, H, W), or (D,) for the toy MLP."""
    cfg = _model_config(model)
    if hasattr(cfg, "dim"):
        return (cfg.dim,)
    return (cfg.in_channels, cfg.image_size, cfg.image_size)


@torch.no_grad()
def generate(model, diffusion, num_samples: int, shape: tuple | None = None, class_labels=None,
             sampler: str | None = None, timestep_respacing=None, eta: float = 0.0, cond_fn=None,
             cond_at: str = "x_t", low_res: torch.Tensor | None = None, aug_level: float | None = None,
             clip_denoised: bool = True, generator: torch.Generator | None = None, device=None,
             progress: bool = False, precision: str = "fp32"):
    """One batch of samples x_0 [num_samples, *shape] in [-1, 1] (float32, on `device`).

    sampler: "ddpm" or "ddim" (default: "ddim" when `timestep_respacing` starts with "ddim").
    class_labels: [num_samples] int labels for a class-conditional model (or None).
    low_res: [num_samples, C, h, w] condition of a super-resolution model, used as given;
    aug_level: its conditioning-augmentation level s (a model with aug_level_cond needs one; 0 =
    clean condition). Noising the condition to level s is `gcg.cascade`'s job.
    `model` may be any callable model(x, t, **kw) (e.g. a ClassifierFreeGuidance wrapper).
    precision: "fp32", or "bf16" / "fp16" autocast for the network calls (and a guiding classifier's
    gradient) where the device runs it (`gcg.nn.precision.resolve_precision`; else fp32 with a
    warning); the chain's arithmetic and the returned samples stay float32.
    """
    device = torch.device(device) if device is not None else _device_of(model)
    precision = _runs_in(precision, device)
    shape = tuple(shape) if shape is not None else sample_shape(model)
    spec = timestep_respacing
    if sampler is None:
        sampler = "ddim" if isinstance(spec, str) and spec.startswith("ddim") else "ddpm"
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    chain = diffusion.respace(spec) if spec else diffusion
    kwargs = {}
    if class_labels is not None:
        kwargs["y"] = torch.as_tensor(class_labels, dtype=torch.long, device=device)
    if low_res is not None:
        kwargs["low_res"] = low_res.to(device)
    if aug_level is not None:
        kwargs["aug_level"] = torch.full((num_samples,), float(aug_level), device=device)
    if isinstance(model, torch.nn.Module):
        model.eval()
    common = dict(clip_denoised=clip_denoised, cond_fn=cond_fn, model_kwargs=kwargs, device=device,
                  progress=progress, generator=generator)
    with autocast(precision, device):
        x = chain.sample_loop(model, (num_samples, *shape), sampler=sampler, eta=eta, cond_at=cond_at, **common)
    return x.float()


def _runs_in(precision: str, device) -> str:
    """The precision that runs on `device`; a one-line warning when it is not `precision`."""
    runs, reason = resolve_precision(check_precision(precision), device)
    if reason:
        warnings.warn(f"gcg.sample: {reason}", stacklevel=3)
    return runs


def _device_of(model) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    inner = getattr(model, "model", None)  # e.g. ClassifierFreeGuidance
    return _device_of(inner) if inner is not None else torch.device("cpu")


def sample(model, diffusion, num_samples: int, batch_size: int | None = None, class_labels=None,
           sampler: str | None = None, timestep_respacing=None, eta: float = 0.0, classifier=None,
           classifier_scale: float = 1.0, cfg_scale: float = 0.0, cond_at: str = "x_t",
           low_res: torch.Tensor | None = None, aug_level: float | None = None, seed: int = 0, device=None, clip_denoised: bool = True,
           progress: bool = True, shape: tuple | None = None, precision: str = "fp32"):
    """Draw `num_samples` samples in batches; returns (images [N, *shape] float in [-1, 1] on CPU,
    labels [N] int64 or None).

    class_labels: one label per sample, or None (a class-conditional model then gets labels drawn
    uniformly with the seed; labels are required for guidance). classifier + classifier_scale:
    classifier guidance; cfg_scale w > 0: classifier-free guidance (1 + w) eps(x, y) - w eps(x)
    with the model's null label. The same seed and batch_size give the same samples.
    precision: "fp32" (default), or "bf16" / "fp16" autocast where the device runs it (`generate`).
    """
    from gcg.guidance import ClassifierFreeGuidance, classifier_cond_fn

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    device = torch.device(device) if device is not None else _device_of(model)
    precision = _runs_in(precision, device)
    config = getattr(model, "config", None) or getattr(model, "cfg", None)
    num_classes = getattr(config, "num_classes", None)
    labels = None
    if class_labels is not None:
        labels = torch.as_tensor(class_labels, dtype=torch.long).flatten()
        if len(labels) == 1:
            labels = labels.expand(num_samples).clone()
        if len(labels) != num_samples:
            raise ValueError(f"got {len(labels)} class labels for {num_samples} samples: give one "
                             "label, or one per sample")
        if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
            bad = sorted({int(v) for v in labels if not 0 <= v < num_classes})
            raise ValueError(f"class labels must lie in [0, {num_classes}) for this {num_classes}-class "
                             f"model, got {bad[:8]}: pass labels 0..{num_classes - 1}")
    elif num_classes is not None or classifier is not None:
        k = num_classes or _classifier_classes(classifier)
        labels = torch.randint(0, k, (num_samples,), generator=torch.Generator().manual_seed(seed))
    if cfg_scale:
        null_label = getattr(model, "null_label", None)
        if null_label is None:
            raise ValueError("cfg_scale needs a model trained with a null label (class_null=True): "
                             "train with --set p_uncond=0.1 (the digits preset does), or use classifier "
                             "guidance (classifier=...) instead")
        guided = ClassifierFreeGuidance(model, cfg_scale, null_label)
    else:
        guided = model
    if labels is not None and config is not None and hasattr(config, "num_classes") and num_classes is None:
        if classifier is None:
            raise ValueError("this model is unconditional (num_classes=None): drop class_labels, or pass "
                             "a classifier to guide it towards them")
        guided = _WithoutLabels(guided)  # the labels steer the classifier only
    cond_fn = classifier_cond_fn(classifier.to(device), classifier_scale) if classifier is not None else None
    if low_res is not None and len(low_res) != num_samples:
        raise ValueError(f"low_res has {len(low_res)} images for {num_samples} samples")
    if aug_level is None and getattr(config, "aug_level_cond", False):
        aug_level = 0.0  # a clean low-resolution condition
    batch_size = batch_size or num_samples
    outputs = []
    batches = range(0, num_samples, batch_size)
    bar = tqdm(total=num_samples, disable=not progress or len(batches) == 1, desc="sampling", unit="img")
    for start in batches:
        rows = slice(start, min(start + batch_size, num_samples))
        n = rows.stop - rows.start
        batch_gen = torch.Generator(device).manual_seed(seed * 1_000_003 + start)
        x = generate(guided, diffusion, n, shape=shape or sample_shape(model),
                     class_labels=None if labels is None else labels[rows], sampler=sampler,
                     timestep_respacing=timestep_respacing, eta=eta, cond_fn=cond_fn, cond_at=cond_at,
                     low_res=None if low_res is None else low_res[rows], aug_level=aug_level,
                     clip_denoised=clip_denoised, generator=batch_gen, device=device,
                     progress=progress and len(batches) == 1, precision=precision)
        outputs.append(x.float().cpu())
        bar.update(n)
    bar.close()
    return torch.cat(outputs), labels


def sample_images(model, diffusion, num_samples: int, *, class_labels=None, steps: int | None = None,
                  sampler: str = "ddpm", classifier=None, classifier_scale: float | None = None,
                  cfg_scale: float | None = None, seed: int = 0, batch_size: int | None = None,
                  device=None, progress: bool = True, precision: str = "fp32", **options):
    """Samples of a trained model, optionally guided: ``(images [N, C, H, W] in [-1, 1] on CPU, labels [N])``.

    The checked entry point of `sample` (exported as ``gcg.sample_images``; ``gcg.sample`` is
    this module). model, diffusion: as returned by ``gcg.load_model(path)``. class_labels: one
    label, or one per sample (default: drawn with the seed). steps: sampling steps over a
    respaced chain (default: all); sampler: "ddpm" (Ho et al. 2020, Alg. 2) or "ddim" (Song et
    al. 2020, eta = 0). classifier: a noise-aware classifier (a network, or its checkpoint path)
    with classifier_scale s (default 1; Dhariwal & Nichol 2021, Alg. 1-2). cfg_scale w:
    classifier-free guidance (1 + w) eps(x, y) - w eps(x) (Ho & Salimans 2021), for a model trained
    with p_uncond > 0. precision: "fp32" (default); "bf16" runs bf16 autocast on CUDA and on CPUs
    with bf16 units (AVX512_BF16 / AMX; ~1.5x faster for a 64x64 ADM UNet), elsewhere fp32 with a warning; "fp16"
    on CUDA only. options: the rest of `sample`'s arguments (eta, low_res, aug_level, ...).
    """
    if isinstance(model, (str, Path)) or diffusion is None or not hasattr(diffusion, "p_sample_loop"):
        raise TypeError("sample_images needs a network and its diffusion: model, diffusion = "
                        "gcg.load_model('runs/NAME/checkpoint.pt') (a diffusion model's checkpoint, "
                        "not a classifier's)")
    if getattr(getattr(model, "config", None), "kind", None) == "classifier":
        raise ValueError("model is a noise-aware classifier: pass it as classifier=..., with the "
                         "diffusion model as model")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a whole number >= 1, got {num_samples!r}")
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    check_precision(precision)
    if steps is not None:
        if "timestep_respacing" in options:
            raise ValueError("give steps or timestep_respacing, not both")
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= diffusion.num_timesteps:
            raise ValueError(f"steps must be a whole number in [1, {diffusion.num_timesteps}] (the "
                             f"model's chain length), got {steps!r}")
        options["timestep_respacing"] = f"ddim{steps}" if sampler == "ddim" else str(steps)
    for name, value in (("classifier_scale", classifier_scale), ("cfg_scale", cfg_scale)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if classifier is None and classifier_scale is not None:
        raise ValueError("classifier_scale needs a classifier: pass classifier=gcg.load_model(PATH)[0] "
                         "(a noise-aware classifier, e.g. from `python -m gcg.train --preset digits-classifier`)")
    if isinstance(classifier, (str, Path)):
        from gcg.checkpoint import load_model

        classifier = load_model(classifier, device=device or _device_of(model))[0]
    if classifier is not None:
        kind = getattr(getattr(classifier, "config", None), "kind", None)
        if kind not in (None, "classifier"):
            raise ValueError(f"classifier= got a {kind} network, not a noise-aware classifier: train one "
                             "with `python -m gcg.train --preset digits-classifier` and load it with "
                             "gcg.load_model")
    return sample(model, diffusion, num_samples, batch_size=batch_size, class_labels=class_labels,
                  sampler=sampler, classifier=classifier,
                  classifier_scale=1.0 if classifier_scale is None else classifier_scale,
                  cfg_scale=cfg_scale or 0.0, seed=seed, device=device, progress=progress, precision=precision,
                  **options)


class _WithoutLabels(torch.nn.Module):
    """An unconditional network under classifier guidance: called without the labels y."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t, y=None, **kwargs):
        return self.model(x, t, **kwargs)


def _classifier_classes(classifier) -> int:
    cfg = getattr(classifier, "config", None)
    if cfg is None or getattr(cfg, "num_classes", None) is None:
        raise ValueError("classifier guidance needs class labels: pass class_labels")
    return cfg.num_classes


# ----------------------------------------------------------------------------- files
def save_samples(images: torch.Tensor, labels, out_dir) -> Path:
    """Write ``samples_NxHxWxC.npz`` (arr_0 uint8 NHWC, arr_1 labels if any); vector data [N, D]
    is stored as float32 in ``samples_NxD.npz``. Returns the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = {}
    if images.ndim == 4:
        arrays["arr_0"] = to_uint8(images)
    else:
        arrays["arr_0"] = images.detach().float().cpu().numpy()
    if labels is not None:
        arrays["arr_1"] = torch.as_tensor(labels).cpu().numpy().astype(np.int64)
    path = out_dir / f"samples_{'x'.join(str(s) for s in arrays['arr_0'].shape)}.npz"
    np.savez(path, **arrays)
    return path


def save_grid(images: torch.Tensor, path, nrow: int | None = None, labels=None, tile: int = 64) -> Path:
    """A PNG of images [N, C, H, W] in [-1, 1] as a grid (nrow per row, default ~sqrt(N)); for
    vector data [N, D] a scatter plot of the first two coordinates (coloured by `labels`).

    Each image is enlarged by nearest-neighbour upsampling to the largest integer multiple of its
    size not above `tile` pixels (8x8 digits: 8x, 64 px; 32x32: 2x; at least 1x), with white
    separators a sixteenth of a tile wide, then tiled by ``torchvision.utils.save_image``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if images.ndim == 2:
        return _save_scatter(images, path, labels)
    from torchvision.utils import save_image

    tiles, padding = enlarge_for_grid(images, tile)
    save_image(tiles, path, nrow=nrow or math.ceil(math.sqrt(len(tiles))), padding=padding, pad_value=1.0)
    return path


def _save_scatter(points: torch.Tensor, path: Path, labels=None) -> Path:
    from matplotlib.figure import Figure  # not pyplot: leaves a notebook's inline backend alone

    p = points.detach().float().cpu().numpy()
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.scatter(p[:, 0], p[:, 1], s=3, c=None if labels is None else np.asarray(labels), cmap="tab10")
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def load_low_res(path, num_samples: int) -> tuple[torch.Tensor, np.ndarray | None]:
    """Images [N, C, h, w] in [-1, 1] (and labels) from a previous stage's samples npz."""
    from gcg.cli import read_npz

    data = read_npz(path, "--low-res")
    if "arr_0" not in data:
        raise ValueError(f"--low-res {path}: no 'arr_0' array of images (keys: {sorted(data)}); pass the "
                         "samples npz of the previous stage (gcg.sample writes it)")
    arr, labels = data["arr_0"], data.get("arr_1")
    if arr.ndim != 4 or arr.dtype != np.uint8:
        raise ValueError(f"{path}: arr_0 must be uint8 NHWC images, got {arr.dtype} {arr.shape}")
    if len(arr) < num_samples:
        raise ValueError(f"{path} holds {len(arr)} images, fewer than --num-samples {num_samples}")
    x = torch.from_numpy(arr[:num_samples]).permute(0, 3, 1, 2).float() / 127.5 - 1
    return x, None if labels is None else labels[:num_samples]


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    from gcg.cli import ArgumentParser, add_threads_argument, finite_float, int_list, positive_int

    p = ArgumentParser(prog="python -m gcg.sample", description=__doc__.split("\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a gcg training checkpoint (checkpoint.pt)")
    p.add_argument("--out-dir", default=".", help="where the npz and the PNG grid go")
    p.add_argument("--num-samples", type=positive_int, default=64)
    p.add_argument("--batch-size", type=positive_int, default=None, help="samples per forward batch")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default=None,
                   help="default: ddim if the respacing starts with 'ddim', else ddpm")
    p.add_argument("--steps", type=positive_int, help="number of sampling steps (shorthand for the respacing)")
    p.add_argument("--timestep-respacing", help="e.g. 250, ddim25, 10,10,10 (default: the full chain)")
    p.add_argument("--eta", type=finite_float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument("--class-labels", type=int_list, help="comma-separated labels, one or one per sample")
    p.add_argument("--classifier", help="a noise-aware classifier checkpoint for guidance")
    p.add_argument("--classifier-scale", type=finite_float, default=None,
                   help="classifier-guidance scale s (needs --classifier; default 1)")
    p.add_argument("--cfg-scale", type=finite_float, default=0.0, help="classifier-free guidance weight w")
    p.add_argument("--cond-at", choices=("x_t", "mean"), default="x_t",
                   help="DDPM guidance: gradient at x_t (reference code) or at the mean")
    p.add_argument("--low-res", help="super-resolution: the previous stage's samples npz")
    p.add_argument("--aug-level", type=finite_float, default=None,
                   help="super-resolution: the conditioning-augmentation level s fed to the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16/fp16: autocast on CUDA; bf16 also on CPUs with bf16 units (AVX512_BF16 / AMX), "
                        "else fp32 with a notice")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA")
    add_threads_argument(p)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    """``python -m gcg.sample``; user errors print one line and return 2 (`gcg.cli.run`)."""
    from gcg.cli import run

    return run("gcg.sample", _main, argv)


def _main(argv) -> int:
    from gcg.checkpoint import load_model
    from gcg.cli import UsageError, check_device, check_output_dir, set_threads

    args = build_parser().parse_args(argv)
    device = check_device(args.device)
    check_output_dir(args.out_dir, "--out-dir")
    if args.eta < 0:
        raise UsageError(f"--eta {args.eta}: DDIM's eta must be >= 0 (0 = deterministic, 1 = DDPM-like)")
    for flag, path in (("checkpoint", args.checkpoint), ("--classifier", args.classifier),
                       ("--low-res", args.low_res)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: file not found" + (
                "; train one with python -m gcg.train" if flag != "--low-res" else ""))
    spec = args.timestep_respacing
    if args.steps is not None:
        if spec is not None:
            raise UsageError("give --steps or --timestep-respacing, not both")
        spec = f"ddim{args.steps}" if args.sampler == "ddim" else str(args.steps)
    if args.classifier_scale is not None and args.classifier is None:
        raise UsageError(f"--classifier-scale {args.classifier_scale} needs --classifier CKPT, a noise-aware "
                         "classifier checkpoint (python -m gcg.train --preset digits-classifier); "
                         "for classifier-free guidance use --cfg-scale")
    set_threads(args.threads)
    precision, reason = resolve_precision(args.precision, device)
    if reason:
        print(f"gcg.sample: {reason}", file=sys.stderr)
    model, diffusion = load_model(args.checkpoint, use_ema=not args.no_ema, device=device)
    if diffusion is None or getattr(model.config, "kind", "unet") == "classifier":
        raise UsageError(f"{args.checkpoint} is a classifier checkpoint; pass it as --classifier")
    classifier = load_model(args.classifier, device=device)[0] if args.classifier else None
    labels = args.class_labels
    low_res = None
    if args.low_res:
        low_res, stored = load_low_res(args.low_res, args.num_samples)
        labels = labels if labels is not None or stored is None else stored.tolist()
    images, labels = sample(model, diffusion, args.num_samples, batch_size=args.batch_size,
                            class_labels=labels, sampler=args.sampler, timestep_respacing=spec,
                            eta=args.eta, classifier=classifier,
                            classifier_scale=1.0 if args.classifier_scale is None else args.classifier_scale,
                            cfg_scale=args.cfg_scale,
                            cond_at=args.cond_at, low_res=low_res, aug_level=args.aug_level,
                            seed=args.seed, device=device, precision=precision,
                            progress=not args.no_progress)
    path = save_samples(images, labels, args.out_dir)
    grid = save_grid(images[:256], path.with_suffix(".png"), labels=None if labels is None else labels[:256])
    print(f"gcg.sample: wrote {path} and {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
