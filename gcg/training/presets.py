"""Training recipes: the named `PRESETS` (each a `TrainConfig`) for ``--preset NAME``.

The paper recipes follow Dhariwal & Nichol 2021, Appendix (ImageNet 64 diffusion model and
classifier), Nichol & Dhariwal 2021 (cosine schedule, L_hybrid) and Ho et al. 2021 (the cascade);
the CPU-sized ones train the book's chapters in minutes.
"""
from __future__ import annotations

import dataclasses

from gcg.training.config import TrainConfig


def _imagenet64() -> TrainConfig:
    # Dhariwal & Nichol 2021, Appendix: 296M params, cosine, T=1000, L_hybrid, dropout 0.1,
    # AdamW lr 3e-4, batch 2048, 540K steps, EMA 0.9999, fp16 with loss scaling.
    return TrainConfig(
        model="64x64_diffusion", dropout=0.1, dataset="imagenet64", image_size=64,
        noise_schedule="cosine", diffusion_steps=1000, model_var_type="learned_range",
        loss_type="rescaled_mse", batch_size=2048, microbatch=64, lr=3e-4, max_steps=540_000,
        ema_rates=(0.9999,), precision="fp16", log_every=100, save_every=10_000,
        sample_every=10_000, sample_steps="250",
        description="ADM ImageNet 64x64 class-conditional diffusion (296M, L_hybrid, 540K steps)")


def _imagenet64_classifier() -> TrainConfig:
    # Dhariwal & Nichol 2021, Appendix: 65M classifier, lr 6e-4, weight decay 0.2, batch 1024,
    # 300K steps, on x_t ~ q(x_t | x_0) of the same cosine schedule.
    return TrainConfig(
        task="classifier", model="64x64_classifier", dataset="imagenet64", image_size=64,
        noise_schedule="cosine", diffusion_steps=1000, batch_size=1024, microbatch=128, lr=6e-4,
        weight_decay=0.2, max_steps=300_000, ema_rates=(), precision="fp16", log_every=100,
        save_every=10_000,
        description="ADM ImageNet 64x64 noise-aware classifier (65M) for classifier guidance")


def _imagenet64_cascade() -> dict[str, TrainConfig]:
    # Ho et al. 2021 (CDM), ImageNet 64: a 32x32 class-conditional base model and a 32->64
    # super-resolution model with Gaussian conditioning augmentation.
    base = dataclasses.replace(
        _imagenet64(), model="64x64_diffusion", image_size=32,
        model_overrides={"attention_resolutions": (16, 8)},
        description="CDM ImageNet 64 cascade, stage 1: 32x32 class-conditional base model")
    sr = dataclasses.replace(
        _imagenet64(), task="super_res", model="64x64_diffusion", low_res_size=32,
        augment="gaussian", max_aug_level=0.25,
        description="CDM ImageNet 64 cascade, stage 2: 32->64 super-resolution, Gaussian aug")
    return {"imagenet64-base32": base, "imagenet64-sr32": sr}


def _offline() -> dict[str, TrainConfig]:
    # 800 steps with the EMA warm-up score as well as 1200 steps' raw weights (benchmarks/README.md)
    digits = TrainConfig(
        model="digits8_small", dataset="digits", image_size=8, noise_schedule="cosine",
        diffusion_steps=1000, batch_size=128, lr=1e-3, max_steps=800, ema_rates=(0.999,), ema_warmup=True,
        p_uncond=0.1, log_every=50, sample_every=500, num_sample_images=100,
        description="8x8 sklearn digits, class-conditional 1.2M UNet, CFG-ready (2 idle CPU cores: ~5 min)")
    return {
        "digits": digits,
        "digits-classifier": dataclasses.replace(
            digits, task="classifier", model="digits8_classifier", p_uncond=0.0, lr=1e-3,
            weight_decay=0.05, max_steps=1000, ema_rates=(), sample_every=0,
            description="noise-aware classifier on the 8x8 digits, for classifier guidance"),
        "photo32": TrainConfig(
            model="patch32_small", dataset="photo-patches", image_size=32, noise_schedule="cosine",
            batch_size=64, lr=5e-4, max_steps=2000, ema_rates=(0.999,), ema_warmup=True, sample_every=500,
            description="32x32 class-conditional patches of scikit-image photographs (CPU)"),
        "photo8": TrainConfig(
            model="tiny", dataset="photo-patches", image_size=8, noise_schedule="cosine",
            batch_size=128, lr=1e-3, max_steps=1500, ema_rates=(0.999,), sample_every=500,
            description="cascade stage 1 (CPU): 8x8 photo-patch base model"),
        "photo32-sr8": TrainConfig(
            task="super_res", model="sr32_small", dataset="photo-patches", image_size=32,
            low_res_size=8, augment="gaussian", max_aug_level=0.2, noise_schedule="cosine",
            batch_size=64, lr=5e-4, max_steps=2000, ema_rates=(0.999,), sample_every=500,
            description="cascade stage 2 (CPU): 8->32 photo-patch super-resolution"),
        "glyphs16": TrainConfig(
            model="digits8_small", dataset="glyphs", image_size=16, noise_schedule="cosine",
            batch_size=64, lr=2e-3, max_steps=2000, ema_rates=(0.995,), p_uncond=0.1,
            sample_every=500, num_sample_images=100,
            model_overrides=dict(channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(),
                                 resblock_updown=False, dropout=0.0),
            description="cascade stage 1 (CPU): 16x16 font-digit base model, class-conditional, CFG-ready"),
        "glyphs32-sr16": TrainConfig(
            task="super_res", model="sr32_small", dataset="glyphs", image_size=32, low_res_size=16,
            augment="gaussian", max_aug_level=0.4, noise_schedule="cosine", model_mean_type="start_x",
            batch_size=16, lr=1e-3, max_steps=1500, ema_rates=(0.995,), sample_every=500,
            num_sample_images=100,
            model_overrides=dict(channel_mult=(1, 2, 2), num_res_blocks=1, attention_resolutions=(),
                                 resblock_updown=False),
            description="cascade stage 2 (CPU): 16->32 font-digit super-resolution, x0-prediction, Gaussian aug"),
        "toy": TrainConfig(
            model="toy_mlp", dataset="toy-gmm", image_size=None, diffusion_steps=100,
            batch_size=256, lr=2e-3, max_steps=2000, ema_rates=(0.99,), ema_warmup=True, sample_every=0,
            num_sample_images=512,
            description="2-D class-labelled Gaussian mixture, small MLP denoiser (seconds)"),
    }


PRESETS: dict[str, TrainConfig] = {
    "imagenet64": _imagenet64(),
    "imagenet64-classifier": _imagenet64_classifier(),
    **_imagenet64_cascade(),
    **_offline(),
}


def get_preset(name: str) -> TrainConfig:
    """A fresh copy of the preset `name`; an unknown name raises ValueError listing the valid ones
    (the same error as `gcg.nn.get_preset` for network presets)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], model_overrides=dict(PRESETS[name].model_overrides))


def describe_presets() -> str:
    """One line per preset, for `--help`."""
    width = max(len(n) for n in PRESETS)
    return "\n".join(f"  {n:<{width}}  {c.description}" for n, c in PRESETS.items())
