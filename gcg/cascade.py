"""Cascaded diffusion models with conditioning augmentation (chapter 06).

Ho, Saharia, Chan, Fleet, Norouzi & Salimans 2021, "Cascaded Diffusion Models for High Fidelity
Image Generation" (CDM). A cascade is a base diffusion model at low resolution followed by
super-resolution (SR) diffusion models, each conditioned on the previous stage's output
(upsampled and concatenated to its input) and on the class label.

The trick that makes the chain work is *conditioning augmentation* (CDM §3.2): during training
the SR model sees a corrupted version of the true low-resolution image, so at sampling time it
tolerates the base model's imperfect samples.

* Gaussian augmentation: the low-resolution image z_0 is pushed through the forward process of
  the low-resolution diffusion to a level s, z_s ~ q(z_s | z_0) = N(sqrt(abar_s) z_0,
  (1 - abar_s) I) (Eq. (4) in Ho et al. 2020), and s is an extra input of the SR model
  (``aug_level``). Training draws s at random; the best s is searched after training.
* Blur augmentation: a 3x3 Gaussian blur with sigma drawn from a fixed range, applied to a
  fraction of training examples (CDM: 50%), never at sampling.

At sampling time z_s is produced in one of two ways (CDM §3.2):

* ``"truncated"``: run the base model's reverse process only from T down to s and hand its
  z_s over (the base model never denoises below s);
* ``"non_truncated"``: run the base model to z_0, then draw z_s ~ q(z_s | z_0).

``cascade_bpd`` computes the variational bound of the truncated cascade in bits per
(high-resolution) dimension: the base model's terms from T down to s plus the SR model's bound
given z_s.

Conventions: ``aug_level`` s is a timestep of the ORIGINAL (un-respaced) chain of the
low-resolution diffusion, like the ``t`` a model receives; with code indexing (as in the ADM
reference code) level s has alphas_cumprod[s] < 1, so z_s always carries some noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gcg.diffusion import SAMPLERS
from gcg.images import downsample  # area (box) downsampling
from gcg.losses import normal_kl
from gcg.schedules import get_named_beta_schedule

AUGMENTS = ("gaussian", "blur", "none")
MODES = ("non_truncated", "truncated")


# ----------------------------------------------------------------------------------------------
# small helpers


def _randn(shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` (on the generator's device), moved to ``device``."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _rand(shape, generator=None, device=None) -> torch.Tensor:
    """Uniform [0, 1) noise drawn from ``generator``, moved to ``device``."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _model_device(model, default="cpu") -> torch.device:
    """Device of the first parameter of ``model`` (an nn.Module), else ``default``."""
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device(default)


def aug_alphas_cumprod(diffusion=None) -> torch.Tensor:
    """alphas_cumprod [T] (float64, ORIGINAL timesteps) of the forward process used for augmentation.

    ``diffusion`` is a ``GaussianDiffusion`` (respaced or not: its original betas are used), or
    None for DDPM's linear schedule with T = 1000 (Ho et al. 2020 §4).
    """
    if diffusion is None:
        return torch.cumprod(1.0 - get_named_beta_schedule("linear", 1000), dim=0)
    if not hasattr(diffusion, "original_betas"):
        raise TypeError(f"expected a GaussianDiffusion for the augmentation process, got {type(diffusion).__name__}")
    return torch.cumprod(1.0 - diffusion.original_betas.double().cpu(), dim=0)


def _check_images(x, name="x_high"):
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must be an image batch [N, C, H, W], got {shape}")


# ----------------------------------------------------------------------------------------------
# conditioning augmentation (training)


def gaussian_augment(
    low_res: torch.Tensor,
    aug_level: Union[torch.Tensor, int],
    diffusion=None,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Gaussian conditioning augmentation z_s ~ q(z_s | z_0) (CDM §3.2).

    z_s = sqrt(abar_s) z_0 + sqrt(1 - abar_s) eps: the forward process of the low-resolution
    diffusion (Eq. (4) in Ho et al. 2020) run to level s.

    :param low_res: z_0 [N, C, h, w] (or [N, D]) in [-1, 1].
    :param aug_level: s, an int or a LongTensor [N] of original timesteps in [0, T).
    :param diffusion: the low-resolution ``GaussianDiffusion`` (None: linear, T=1000).
    :return: z_s, same shape as ``low_res``.
    """
    abar = aug_alphas_cumprod(diffusion)
    s = torch.as_tensor(aug_level, dtype=torch.long).cpu().reshape(-1)
    if s.numel() == 1:
        s = s.expand(low_res.shape[0])
    if s.shape[0] != low_res.shape[0]:
        raise ValueError(f"aug_level has {s.shape[0]} entries for a batch of {low_res.shape[0]}")
    if s.min() < 0 or s.max() >= len(abar):
        raise ValueError(
            f"aug_level must lie in [0, {len(abar)}) (timesteps of the low-resolution chain), "
            f"got values in [{int(s.min())}, {int(s.max())}]"
        )
    view = (-1,) + (1,) * (low_res.dim() - 1)
    a = abar[s].to(device=low_res.device, dtype=low_res.dtype).view(view)
    if noise is None:
        noise = _randn(low_res.shape, generator, low_res.device, low_res.dtype)
    return a.sqrt() * low_res + (1.0 - a).sqrt() * noise


def augmented_condition(
    low_res: torch.Tensor,
    aug_level: Union[torch.Tensor, int],
    diffusion=None,
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
) -> dict:
    """The non-truncated hand-over (CDM §3.2): z_s ~ q(z_s | z_0) and s, as SR model kwargs.

    :param low_res: z_0 [N, C, h, w], e.g. the previous stage's finished samples.
    :param aug_level: s, an int or a tensor [N] of original timesteps (``gaussian_augment``).
    :param noise: eps [N, C, h, w]; passing the same eps for every s reuses one z_0 and one eps
        across a search over s (common random numbers), so only the SR stage is re-run.
    :return: {"low_res": z_s [N, C, h, w], "aug_level": float [N] on z_0's device}.
    """
    z_s = gaussian_augment(low_res, aug_level, diffusion, generator, noise)
    s = torch.as_tensor(aug_level, dtype=torch.float32).reshape(-1).to(low_res.device)
    return {"low_res": z_s, "aug_level": s.expand(low_res.shape[0]).clone()}


def gaussian_blur_3x3(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image [N, C, h, w] with its own 3x3 Gaussian kernel of std ``sigma`` [N].

    Kernel k(i, j) proportional to exp(-(i^2 + j^2) / (2 sigma^2)), i, j in {-1, 0, 1}, normalised
    to sum 1; sigma = 0 is the identity. Borders are padded by replication, so constant images
    stay constant.
    """
    _check_images(x, "x")
    n, c, h, w = x.shape
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).cpu()
    if sigma.shape[0] != n:
        raise ValueError(f"sigma has {sigma.shape[0]} entries for a batch of {n}")
    offsets = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    safe = sigma.clamp_min(1e-12)[:, None]
    taps = torch.exp(-(offsets[None, :] ** 2) / (2 * safe**2))  # [N, 3]; sigma -> 0 gives (0, 1, 0)
    taps = taps / taps.sum(dim=1, keepdim=True)
    kernel = (taps[:, :, None] * taps[:, None, :]).to(x.dtype).to(x.device)  # separable, [N, 3, 3]
    weight = kernel[:, None].repeat_interleave(c, dim=0)  # [N*C, 1, 3, 3]
    padded = F.pad(x.reshape(1, n * c, h, w), (1, 1, 1, 1), mode="replicate")
    return F.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


def blur_augment(
    low_res: torch.Tensor,
    sigma_range: Tuple[float, float] = (0.4, 0.6),
    prob: float = 0.5,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Blur conditioning augmentation (CDM §3.2, used for the high-resolution SR stages).

    Each example is blurred with probability ``prob`` by a 3x3 Gaussian kernel with
    sigma ~ U(sigma_range); the others pass unchanged. Training only: a cascade never blurs at
    sampling time.

    :return: (augmented [N, C, h, w], sigma [N] with 0 where no blur was applied).
    """
    _check_images(low_res, "low_res")
    lo, hi = sigma_range
    if not (0 < lo <= hi):
        raise ValueError(f"blur_sigma must be a range (low, high) with 0 < low <= high, got {sigma_range}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"blur_prob must lie in [0, 1], got {prob}")
    n = low_res.shape[0]
    applied = _rand((n,), generator, "cpu") < prob
    sigma = lo + (hi - lo) * _rand((n,), generator, "cpu")
    sigma = torch.where(applied, sigma, torch.zeros_like(sigma))
    out = low_res.clone()
    if applied.any():
        idx = applied.nonzero().squeeze(1).to(low_res.device)
        out[idx] = gaussian_blur_3x3(low_res[idx], sigma[applied])
    return out, sigma


def max_aug_timestep(max_aug_level: Optional[float], num_timesteps: int) -> int:
    """The exclusive upper end of the training range of s, in timesteps of a T-step chain.

    ``max_aug_level`` in (0, 1] is a fraction of the chain (rounded, at least one level);
    a value > 1 is a number of timesteps; None is the whole chain, T.
    """
    if max_aug_level is None:
        return num_timesteps
    level = float(max_aug_level)
    if level <= 0:
        raise ValueError(
            f"max_aug_level must be > 0 for Gaussian augmentation (s is drawn from [0, max)), got "
            f"{max_aug_level}; use a fraction of the chain in (0, 1] or a number of timesteps"
        )
    if level <= 1:
        return max(1, round(level * num_timesteps))
    if level != int(level) or level > num_timesteps:
        raise ValueError(
            f"max_aug_level={max_aug_level} is read as a number of timesteps and must be an integer "
            f"<= T={num_timesteps}; use a fraction in (0, 1] for a share of the chain"
        )
    return int(level)


def super_res_kwargs(
    x_high: torch.Tensor,
    low_res_size: int,
    augment: str = "gaussian",
    max_aug_level: Optional[float] = None,
    diffusion=None,
    generator: Optional[torch.Generator] = None,
    blur_sigma: Tuple[float, float] = (0.4, 0.6),
    blur_prob: float = 0.5,
) -> dict:
    """Model kwargs of a super-resolution training batch: the (augmented) low-resolution condition.

    Downsamples ``x_high`` (area) to ``low_res_size``, then applies conditioning augmentation:

    * ``"gaussian"``: s ~ U{0, ..., max - 1} per example and z_s ~ q(z_s | z_0) of the
      low-resolution ``diffusion`` (None: linear, T = 1000); the SR model receives s as
      ``aug_level`` (CDM §3.2). ``max_aug_level``: a fraction of the chain in (0, 1], or a
      number of timesteps > 1; None = the whole chain (see ``max_aug_timestep``).
    * ``"blur"``: a 3x3 Gaussian blur, sigma ~ U(blur_sigma), on a ``blur_prob`` fraction of the
      examples (CDM: 50%); ``aug_level`` is None.
    * ``"none"``: the clean low-resolution image; ``aug_level`` is None.

    :param x_high: [N, C, H, W] in [-1, 1].
    :return: {"low_res": [N, C, h, w], "aug_level": float [N] (original timesteps s) or None}.
    """
    _check_images(x_high)
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    low = downsample(x_high, low_res_size)
    if augment == "none":
        return {"low_res": low, "aug_level": None}
    if augment == "blur":
        low, _ = blur_augment(low, blur_sigma, blur_prob, generator)
        return {"low_res": low, "aug_level": None}
    max_s = max_aug_timestep(max_aug_level, len(aug_alphas_cumprod(diffusion)))
    n = x_high.shape[0]
    if generator is None:
        s = torch.randint(0, max_s, (n,))
    else:
        s = torch.randint(0, max_s, (n,), generator=generator, device=generator.device).cpu()
    low = gaussian_augment(low, s, diffusion, generator)
    return {"low_res": low, "aug_level": s.to(device=x_high.device, dtype=torch.float32)}


def random_crops(
    images: torch.Tensor, size: int, generator: Optional[torch.Generator] = None, align: int = 2
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One random ``size`` x ``size`` crop of each image, at offsets that are multiples of ``align``.

    Training data for a fully convolutional super-resolution stage: with ``align`` equal to the
    downsampling factor, ``downsample(crop)`` is the matching crop of ``downsample(image)``, so a
    model trained on crops sees the same (low, high) pairs as one trained on whole images, at a
    fraction of the cost, and is then applied at full size.

    :param images: [N, C, H, W].
    :return: (crops [N, C, size, size], offsets [N, 2] (row, column) int64).
    """
    _check_images(images, "images")
    n, _, height, width = images.shape
    if align < 1 or size % align:
        raise ValueError(f"crop size {size} must be a multiple of align={align} (the downsampling factor)")
    if not 0 < size <= min(height, width):
        raise ValueError(f"crop size must lie in [1, {min(height, width)}] for {height}x{width} images, got {size}")
    choices = (torch.tensor([height, width]) - size) // align + 1  # offsets per axis
    u = _rand((n, 2), generator, "cpu")
    offsets = (u * choices).long().clamp_max(choices - 1) * align
    rows = offsets[:, 0, None] + torch.arange(size)  # [N, size]
    cols = offsets[:, 1, None] + torch.arange(size)
    idx = torch.arange(n)[:, None, None]
    crops = images.permute(0, 2, 3, 1)[idx, rows[:, :, None].to(images.device), cols[:, None, :].to(images.device)]
    return crops.permute(0, 3, 1, 2).contiguous(), offsets


# ----------------------------------------------------------------------------------------------
# the sampling pipeline


@dataclass
class CascadeStage:
    """One stage of a cascade: a model, its diffusion, how to sample it, and (SR stages) how it
    receives the previous stage's output.

    :param model: callable ``model(x, t, **model_kwargs)``; SR stages get ``low_res`` and, when
        ``aug_level`` is set, ``aug_level`` [N] float.
    :param diffusion: the stage's ``GaussianDiffusion`` (sampled as is when ``steps`` is None).
    :param shape: (C, H, W) of this stage's samples ((D,) for [N, D] toy data).
    :param sampler: ``"ddpm"`` (ancestral) or ``"ddim"``.
    :param steps: respacing spec of the sampler ("250", "ddim25", ...); None = the full chain.
    :param eta: DDIM's eta (0 = deterministic).
    :param aug_level: SR stages: the augmentation level s (an original timestep of the previous
        stage's chain). None: the model takes no ``aug_level`` (e.g. OpenAI's released upsamplers)
        and the previous stage's sample is passed unchanged.
    :param mode: ``"non_truncated"`` (previous stage runs to z_0, then z_s ~ q(z_s | z_0)) or
        ``"truncated"`` (previous stage stops at z_s); CDM §3.2.
    :param aug_diffusion: forward process of the Gaussian augmentation; None = the previous
        stage's diffusion (what a model trained with ``super_res_kwargs(diffusion=...)`` saw).
    :param class_cond: pass the class labels ``y`` to this stage's model.
    :param clip_denoised: clip predicted x_0 to [-1, 1] while sampling.
    """

    model: Callable
    diffusion: object
    shape: Tuple[int, int, int]
    sampler: str = "ddpm"
    steps: Optional[Union[str, int]] = None
    eta: float = 0.0
    aug_level: Optional[int] = None
    mode: str = "non_truncated"
    aug_diffusion: object = None
    class_cond: bool = True
    clip_denoised: bool = True

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "truncated" and self.aug_level is None:
            raise ValueError("mode='truncated' needs aug_level=s: the level where the previous stage stops")
        if len(tuple(self.shape)) == 0:
            raise ValueError(f"shape must be (C, H, W) (or (D,) for toy data), got {self.shape}")
        self.shape = tuple(int(v) for v in self.shape)

    def sampling_diffusion(self):
        """The (respaced) diffusion the sampler walks."""
        return self.diffusion if self.steps is None else self.diffusion.respace(str(self.steps))


def _stop_index(stage: CascadeStage, aug_level: int) -> int:
    """Chain index k of the stage's sampling chain whose timestep is s (truncated sampling)."""
    tmap = stage.sampling_diffusion().timestep_map.cpu()
    hits = (tmap == int(aug_level)).nonzero()
    if len(hits) == 0:
        nearest = tmap[(tmap - int(aug_level)).abs().argsort()[:3]].sort().values.tolist()
        raise ValueError(
            f"truncated sampling stops the previous stage at s={aug_level}, but its sampler "
            f"(steps={stage.steps!r}) never visits that timestep; nearest ones: {nearest}. "
            "Choose s among the sampler's timesteps or use mode='non_truncated'"
        )
    return int(hits[0, 0])


def sample_stage(
    stage: CascadeStage,
    n: int,
    model_kwargs: Optional[dict] = None,
    stop_at: Optional[int] = None,
    cond_fn: Optional[Callable] = None,
    generator: Optional[torch.Generator] = None,
    device=None,
    progress: bool = False,
    cond_at: str = "x_t",
) -> torch.Tensor:
    """Sample one stage: its reverse process from z_T down to z_0, or down to z_s (``stop_at=s``).

    Truncated sampling (CDM §3.2) keeps only the reverse steps T -> s of the chain, so the
    result is distributed as the model's marginal at level s, approximately q(z_s).
    ``cond_at`` ("x_t" or "mean") is where a DDPM stage evaluates ``cond_fn``
    (``GaussianDiffusion.condition_mean``); a DDIM stage always uses the score form.

    :return: [n, C, H, W].
    """
    diffusion = stage.sampling_diffusion()
    shape = (n,) + stage.shape
    device = _model_device(stage.model) if device is None else torch.device(device)
    noise = _randn(shape, generator, device)
    loop_kwargs = dict(
        noise=noise, clip_denoised=stage.clip_denoised, cond_fn=cond_fn, model_kwargs=model_kwargs,
        device=device, progress=progress, generator=generator,
    )
    ddim = stage.sampler == "ddim"  # a DDIM stage guides the score at x_t; eta is DDIM's alone
    loop_kwargs.update(sampler=stage.sampler, eta=stage.eta if ddim else 0.0, cond_at="x_t" if ddim else cond_at)
    if stop_at is None:
        return diffusion.sample_loop(stage.model, shape, **loop_kwargs)
    k = _stop_index(stage, stop_at)
    num_steps = diffusion.num_timesteps - 1 - k  # steps from chain index T'-1 down to k
    sample = noise
    if num_steps == 0:
        return sample
    steps = diffusion.sample_loop(stage.model, shape, progressive=True, **loop_kwargs)
    for i, out in enumerate(steps):
        sample = out["sample"]
        if i + 1 == num_steps:
            break
    steps.close()
    return sample


class Cascade:
    """A cascaded diffusion model: base -> SR -> SR ... (Ho et al. 2021, CDM).

    ``stages[0]`` is the base model; each later stage is a super-resolution model conditioned on
    the previous stage's output through ``low_res`` (and ``aug_level`` s with Gaussian
    conditioning augmentation). Class labels flow to every class-conditional stage. Classifier
    guidance, when given, acts on the base stage only (the ADM-G + ADM-U arrangement of Dhariwal
    & Nichol 2021).
    """

    def __init__(self, stages: Sequence[CascadeStage]):
        stages = list(stages)
        if not stages:
            raise ValueError("a Cascade needs at least one stage (the base model)")
        for i, stage in enumerate(stages):
            if not isinstance(stage, CascadeStage):
                raise TypeError(f"stage {i} must be a CascadeStage, got {type(stage).__name__}")
        if stages[0].aug_level is not None or stages[0].mode == "truncated":
            raise ValueError("stage 0 is the base model: it has no low-resolution input, so no aug_level or mode")
        for i in range(1, len(stages)):
            prev, stage = stages[i - 1], stages[i]
            if stage.aug_level is None:
                continue
            abar = aug_alphas_cumprod(stage.aug_diffusion or prev.diffusion)
            if not 0 <= int(stage.aug_level) < len(abar):
                raise ValueError(f"stage {i}: aug_level must lie in [0, {len(abar)}), got {stage.aug_level}")
            if stage.mode == "truncated":
                prev_abar = aug_alphas_cumprod(prev.diffusion)
                if stage.aug_diffusion is not None and not torch.allclose(abar, prev_abar):
                    raise ValueError(
                        f"stage {i}: truncated sampling hands over the previous stage's z_s, so the "
                        "augmentation process must be the previous stage's diffusion (drop aug_diffusion)"
                    )
                _stop_index(prev, stage.aug_level)
        self.stages = stages

    def __len__(self):
        return len(self.stages)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        y: Optional[torch.Tensor] = None,
        cond_fn: Optional[Callable] = None,
        generator: Optional[torch.Generator] = None,
        device=None,
        progress: bool = False,
        return_stages: bool = False,
        cond_at: str = "x_t",
    ):
        """Sample ``n`` images through every stage.

        :param y: class labels [n] (int64), given to each stage with ``class_cond=True``.
        :param cond_fn: classifier guidance for the base stage (``gcg.guidance.classifier_cond_fn``).
        :param cond_at: where a DDPM base stage evaluates the guidance gradient, "x_t" (the
            reference code) or "mean" (the derivation's expansion point); see ``condition_mean``.
        :param return_stages: also return each stage's output (z_s for a stage that hands over a
            truncated sample).
        :return: images [n, C, H, W] of the last stage, or (images, [stage outputs]).
        """
        device = _model_device(self.stages[0].model) if device is None else torch.device(device)
        if y is not None:
            y = torch.as_tensor(y, device=device)
            if y.shape != (n,):
                raise ValueError(f"y must hold one label per sample, shape ({n},), got {tuple(y.shape)}")
        outputs: List[torch.Tensor] = []
        handover = {}  # the previous stage's output as this stage's low_res (and aug_level) kwargs
        for i, stage in enumerate(self.stages):
            kwargs = dict(handover)
            if y is not None and stage.class_cond:
                kwargs["y"] = y
            nxt = self.stages[i + 1] if i + 1 < len(self.stages) else None
            stop_at = nxt.aug_level if nxt is not None and nxt.mode == "truncated" else None
            out = sample_stage(
                stage, n, kwargs, stop_at=stop_at, cond_fn=cond_fn if i == 0 else None,
                generator=generator, device=device, progress=progress, cond_at=cond_at,
            )
            outputs.append(out)
            if nxt is None:
                continue
            if nxt.aug_level is not None and nxt.mode == "non_truncated":
                handover = augmented_condition(out, nxt.aug_level, nxt.aug_diffusion or stage.diffusion, generator)
            else:  # truncated (out is z_s already) or no augmentation level
                handover = {"low_res": out}
                if nxt.aug_level is not None:
                    handover["aug_level"] = torch.full((n,), float(nxt.aug_level), device=device)
        return (outputs[-1], outputs) if return_stages else outputs[-1]


# ----------------------------------------------------------------------------------------------
# the bound


@torch.no_grad()
def cascade_bpd(
    base_model: Callable,
    base_diffusion,
    sr_model: Callable,
    sr_diffusion,
    x_high: torch.Tensor,
    aug_level: int,
    low_res: Union[torch.Tensor, int],
    model_kwargs: Optional[dict] = None,
    clip_denoised: bool = True,
    decoder: Optional[str] = None,
    generator: Optional[torch.Generator] = None,
    progress: bool = False,
) -> dict:
    """Variational bound of a two-stage truncated cascade, in bits per high-resolution dimension.

    With z_0 = D(x) the downsampled image and the base chain truncated at s (CDM §3.2),

        -log p(x) <= KL(q(z_T | z_0) || p(z_T))
                     + sum_{t=s+1}^{T} E_q KL(q(z_{t-1} | z_t, z_0) || p(z_{t-1} | z_t))
                     + E_{z_s ~ q(z_s | z_0)} L_SR(x | z_s),

    the base model's terms of Eq. (5) in Ho et al. 2020 from T down to s, plus the SR model's own
    bound (its full Eq. (5), decoder included) given z_s. Each expectation is estimated with one
    draw per example and term, as in ADM's ``calc_bpd_loop``.

    :param x_high: [N, C, H, W] (or [N, D] toy data with ``low_res`` given as a tensor).
    :param aug_level: s, an original timestep that the base diffusion's chain visits.
    :param low_res: z_0 [N, ...], or an int size to downsample ``x_high`` to.
    :param model_kwargs: extra kwargs for both models (e.g. ``y``).
    :param decoder: the SR model's L_0 term (None: ``sr_diffusion``'s own; "gaussian" for toy data).
    :return: {"total_bpd", "base_bpd", "sr_bpd"} each [N] (bits per dim of x_high, so
        total = base + sr), and "base_terms_bpd" [N, K] (prior first, then t = T-1 ... s+1).
    """
    model_kwargs = dict(model_kwargs or {})
    z0 = downsample(x_high, low_res) if isinstance(low_res, int) else low_res
    if z0.shape[0] != x_high.shape[0]:
        raise ValueError(f"low_res has {z0.shape[0]} examples for {x_high.shape[0]} high-resolution ones")
    n, device = x_high.shape[0], x_high.device
    nats_per_bpd = math.log(2.0) * x_high[0].numel()
    tmap = base_diffusion.timestep_map.cpu()
    hits = (tmap == int(aug_level)).nonzero()
    if len(hits) == 0:
        raise ValueError(
            f"aug_level s={aug_level} is not a timestep of the base chain (it visits {tmap[:3].tolist()} ... "
            f"{tmap[-3:].tolist()}); choose s from base_diffusion.timestep_map"
        )
    k = int(hits[0, 0])
    T = base_diffusion.num_timesteps
    sum_dims = lambda v: v.reshape(n, -1).sum(dim=1)  # noqa: E731

    # L_T = KL(q(z_T | z_0) || N(0, I))
    mean, _, log_var = base_diffusion.q_mean_variance(z0, torch.full((n,), T - 1, dtype=torch.long, device=device))
    terms = [sum_dims(normal_kl(mean, log_var, torch.zeros_like(z0), torch.zeros_like(z0)))]
    # L_{t-1} = KL(q(z_{t-1} | z_t, z_0) || p(z_{t-1} | z_t)) for chain indices t = T-1 ... k+1
    for i in tqdm(range(T - 1, k, -1), disable=not progress, desc="base terms"):
        t = torch.full((n,), i, dtype=torch.long, device=device)
        z_t = base_diffusion.q_sample(z0, t, noise=_randn(z0.shape, generator, device, z0.dtype))
        true_mean, _, true_log_var = base_diffusion.q_posterior_mean_variance(z0, z_t, t)
        out = base_diffusion.p_mean_variance(
            base_model, z_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs
        )
        terms.append(sum_dims(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])))
    base_terms = torch.stack(terms, dim=1) / nats_per_bpd

    # SR bound given z_s ~ q(z_s | z_0); the chain index k of the base chain is level s
    t_s = torch.full((n,), k, dtype=torch.long, device=device)
    z_s = base_diffusion.q_sample(z0, t_s, noise=_randn(z0.shape, generator, device, z0.dtype))
    sr_kwargs = dict(model_kwargs, low_res=z_s, aug_level=torch.full((n,), float(aug_level), device=device))
    sr = sr_diffusion.calc_bpd_loop(
        sr_model, x_high, clip_denoised=clip_denoised, model_kwargs=sr_kwargs, progress=progress,
        decoder=decoder, generator=generator,
    )
    sr_bpd = sr["total_bpd"]
    base_bpd = base_terms.sum(dim=1)
    return {"total_bpd": base_bpd + sr_bpd, "base_bpd": base_bpd, "sr_bpd": sr_bpd, "base_terms_bpd": base_terms}
