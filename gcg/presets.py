"""Training recipes: one `TrainConfig` dataclass, the named `PRESETS`, and `--set key=value` parsing.

A preset is a `TrainConfig`; `python -m gcg.train --preset NAME --set lr=1e-4` starts from the preset
and overrides fields. Network fields are overridden with a ``model.`` prefix
(``--set model.model_channels=64``); they patch the `gcg.nn.config.MODEL_PRESETS` entry named by
``model``. The paper recipes follow Dhariwal & Nichol 2021, Appendix (ImageNet 64 diffusion model and
classifier) and Nichol & Dhariwal 2021 (cosine schedule, L_hybrid).
"""
from __future__ import annotations

import ast
import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field

TASKS = ("diffusion", "classifier", "super_res")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULE_SAMPLERS = ("uniform", "loss-second-moment")
LOGS = ("jsonl", "tensorboard")


@dataclass
class TrainConfig:
    """Everything one training run needs. `batch_size` is GLOBAL (summed over devices)."""

    # what to train
    task: str = "diffusion"  # "diffusion" | "classifier" (noise-aware) | "super_res"
    model: str = "digits8_small"  # a gcg.nn.config.MODEL_PRESETS name
    model_overrides: dict = field(default_factory=dict)  # --set model.<field>=value
    dropout: float | None = None  # None keeps the network preset's value
    # data (gcg.data.make_dataset)
    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None  # None = the dataset's native size
    class_cond: bool = True  # feed labels y to the model (diffusion / super_res)
    p_uncond: float = 0.0  # classifier-free guidance: drop labels to the null label
    # diffusion (gcg.diffusion.DiffusionConfig)
    noise_schedule: str = "linear"
    diffusion_steps: int = 1000
    model_mean_type: str = "epsilon"
    model_var_type: str = "fixed_small"  # "learned_range" => the network outputs 2C channels
    loss_type: str = "mse"  # "rescaled_mse" with learned_range = L_hybrid
    schedule_sampler: str = "uniform"  # or "loss-second-moment" (importance-sampled L_vlb)
    classifier_t_max: float = 1.0  # classifier task: t ~ U[0, classifier_t_max * T)
    # super-resolution stage (gcg.cascade.super_res_kwargs)
    low_res_size: int = 16
    augment: str = "gaussian"  # "gaussian" | "blur" | "none"
    max_aug_level: float = 0.0
    # optimisation
    batch_size: int = 128  # global batch; per device = batch_size / world_size
    microbatch: int = 0  # examples per forward pass (gradient accumulation); 0 = per-device batch
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_anneal_steps: int = 0  # 0 = constant lr; else linear decay to 0 over this many steps
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    max_steps: int = 1000
    ema_rates: tuple[float, ...] = (0.999,)
    ema_warmup: bool = False  # rate_t = min(rate, (1 + t) / (10 + t)) (gcg.train.ema_warmup_rate); off = ADM
    precision: str = "fp32"  # "fp32" | "bf16" (autocast) | "fp16" (autocast + dynamic loss scaling)
    compile: bool = False  # torch.compile the model
    channels_last: bool = False
    # bookkeeping
    seed: int = 0
    device: str = "auto"  # "auto" = cuda:LOCAL_RANK when available, else cpu
    out_dir: str | None = None  # None = write nothing (notebooks)
    log_every: int = 50
    log: str = "jsonl"  # "jsonl" (metrics.jsonl) | "tensorboard" (also out_dir/tensorboard events)
    save_every: int = 200  # checkpoint every K steps and at the end (0 = only at the end)
    keep_checkpoints: int = 2
    sample_every: int = 0  # PNG grid from the EMA model every K steps (0 = only at the end)
    num_sample_images: int = 64
    sample_steps: str = "ddim50"  # respacing used for the periodic grids
    description: str = ""  # one line for `--help`

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ema_rates"] = list(self.ema_rates)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys: {sorted(names)}")
        d = dict(d)
        if "ema_rates" in d:
            d["ema_rates"] = tuple(float(r) for r in d["ema_rates"])
        return cls(**d)


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
    """A fresh copy of the preset `name`; an unknown name raises ValueError listing the valid ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], model_overrides=dict(PRESETS[name].model_overrides))


def describe_presets() -> str:
    """One line per preset, for `--help`."""
    width = max(len(n) for n in PRESETS)
    return "\n".join(f"  {n:<{width}}  {c.description}" for n, c in PRESETS.items())


# ---------------------------------------------------------------- --set key=value parsing
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _parse_value(text: str, annotation, key: str):
    """Convert `text` to `annotation` (int, float, bool, str, X | None, tuple[X, ...], bare tuple)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse_value(text, inner, key)
    if origin is tuple or annotation is tuple:
        inner = args[0] if args else _number
        items = [s.strip() for s in text.strip("()[] ").split(",") if s.strip()]
        return tuple(_parse_value(s, inner, key) for s in items)
    if annotation is _number:
        try:
            return _parse_value(text, int, key)
        except ValueError:
            try:
                return _parse_value(text, float, key)
            except ValueError:
                raise ValueError(f"--set {key}={text}: expected numbers, e.g. {key}=1,2,2") from None
    if annotation is bool:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"--set {key}={text}: expected a boolean (true/false)")
    if annotation in (int, float):
        try:
            number = float(text)
            value = number if annotation is float else int(number)
        except (ValueError, OverflowError):
            raise ValueError(f"--set {key}={text}: expected {_kind(annotation)}") from None
        if not math.isfinite(number):
            raise ValueError(f"--set {key}={text}: expected a finite number")
        if annotation is int and number != value:
            raise ValueError(f"--set {key}={text}: expected {_kind(annotation)}")
        return value
    if annotation is dict:
        raise ValueError(f"--set {key}=...: set network fields one by one as model.<field>=value")
    return text


class _number:
    """Marker: an int or a float (the items of the networks' bare ``tuple`` fields)."""


def _kind(annotation) -> str:
    return {int: "an integer", float: "a number", bool: "a boolean (true/false)", str: "a string",
            dict: "an object", _number: "a number"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _coerce(value, annotation, key: str, source: str):
    """Check a value that is already typed (JSON, a Python dict) against `annotation`; lists become
    tuples. Raises ValueError naming `source` and the field."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, source)
    if origin is tuple or annotation is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{source}: field {key!r} must be a list, got {value!r}")
        inner = args[0] if args else _number
        return tuple(_coerce(v, inner, key, source) for v in value)
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          _number: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          str: lambda v: isinstance(v, str), dict: lambda v: isinstance(v, dict)}.get(annotation)
    if ok is not None and not ok(value):
        raise ValueError(f"{source}: field {key!r} must be {_kind(annotation)}, got {value!r}")
    return float(value) if annotation is float else value


def _network_fields(model: str) -> dict | None:
    """{field: annotation} of the network config that model preset `model` builds (None if unknown)."""
    from gcg.nn.config import MODEL_PRESETS
    from gcg.nn.mlp import MLP_PRESETS

    base = {**MODEL_PRESETS, **MLP_PRESETS}.get(model)
    if base is None:
        return None
    hints = typing.get_type_hints(type(base))
    fields = {}
    for f in dataclasses.fields(base):
        annotation = hints[f.name]
        if f.default is None and typing.get_origin(annotation) not in (typing.Union, types.UnionType):
            annotation = annotation | None  # `out_channels: int = None`
        fields[f.name] = annotation
    return fields


def _model_override(config: "TrainConfig", name: str, value, source: str | None = None):
    """One network field override, typed against the network config of `config.model`: text from
    ``--set`` is parsed; a value from a file (`source`) or a Python dict is type-checked."""
    fields = _network_fields(config.model)
    if fields is None:  # an unknown model preset: building the model says so
        return _literal(value) if isinstance(value, str) and source is None else value
    if name not in fields:
        raise ValueError(f"{source + ': ' if source else ''}unknown network field model.{name} for model "
                         f"{config.model!r}; valid fields: {', '.join(sorted(fields))}")
    if isinstance(value, str) and source is None:
        return _parse_value(value, fields[name], f"model.{name}")
    return _coerce(value, fields[name], f"model.{name}", source or "model_overrides")


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        return text


def apply_overrides(config: TrainConfig, overrides: list[str] | dict) -> TrainConfig:
    """Return a copy of `config` with ``key=value`` strings (or a dict) applied, types checked.

    ``model.<field>=value`` entries go to `config.model_overrides`, typed and checked against the
    fields of the network config that ``model`` names (after the other keys are applied, so
    ``model=X`` may come in any position). Unknown keys raise, listing the valid ones.
    """
    hints = typing.get_type_hints(TrainConfig)
    items = list(overrides.items()) if isinstance(overrides, dict) else [_split(s) for s in overrides]
    changes, network = {}, []
    for key, value in items:
        if key.startswith("model."):
            network.append((key[len("model."):], value))
            continue
        if key not in hints:
            raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(hints))} "
                             "(network fields: model.<field>)")
        changes[key] = _parse_value(value, hints[key], key) if isinstance(value, str) else value
    config = dataclasses.replace(config, **changes, model_overrides=dict(config.model_overrides))
    for name, value in network:
        config.model_overrides[name] = _model_override(config, name, value)
    validate(config)
    return config


def config_from_dict(data: dict, source: str = "config") -> TrainConfig:
    """A `TrainConfig` from a dict such as `TrainConfig.to_dict` wrote (e.g. a run's config.json),
    every field type-checked; an unknown field raises ValueError naming it and `source`. Fields
    the dict lacks (written by an older gcg) take TrainConfig's defaults."""
    hints = typing.get_type_hints(TrainConfig)
    if "kind" in data and "task" not in data:
        raise ValueError(f"{source} describes a network (kind={data['kind']!r}), not a training run; "
                         "pass the config.json that gcg.train wrote in the run's --out-dir")
    unknown = [k for k in data if k not in hints]
    if unknown:
        raise ValueError(f"{source}: unknown field {unknown[0]!r}"
                         + (f" (and {unknown[1:]})" if unknown[1:] else "")
                         + " is not a TrainConfig field of this gcg; remove it from the file")
    values = {k: _coerce(v, hints[k], k, source) for k, v in data.items() if k != "model_overrides"}
    config = dataclasses.replace(TrainConfig(), **values)
    overrides = _coerce(data.get("model_overrides", {}), dict, "model_overrides", source)
    for name, value in overrides.items():
        config.model_overrides[name] = _model_override(config, name, value, source)
    try:
        validate(config)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return config


def load_config_file(path) -> TrainConfig:
    """The `TrainConfig` of a run's config.json (``python -m gcg.train --config PATH``); one-line
    ValueError for a missing, non-JSON or foreign file, naming the offending field."""
    from pathlib import Path

    path, source = Path(path), f"--config {path}"
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such file; pass the config.json a run wrote in its --out-dir")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{source} is not a JSON file ({exc}); pass the config.json a run wrote "
                         "in its --out-dir") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source} holds a JSON {type(data).__name__}, not a config object; pass the "
                         "config.json a run wrote in its --out-dir")
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in data]
    config = config_from_dict(data, source)
    if missing:
        print(f"gcg.train: {source} has no {', '.join(missing)} (written by an older gcg): using the "
              "defaults", file=sys.stderr)
    return config


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"--set expects key=value, got {item!r}")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def validate(config: TrainConfig) -> None:
    """Raise ValueError naming the bad field and the allowed values."""
    checks = [("task", TASKS), ("precision", PRECISIONS), ("schedule_sampler", SCHEDULE_SAMPLERS),
              ("augment", ("gaussian", "blur", "none"))]
    for name, allowed in checks:
        if getattr(config, name) not in allowed:
            raise ValueError(f"{name}={getattr(config, name)!r} is not one of {allowed}")
    if config.log not in LOGS:
        raise ValueError(f"log={config.log!r} is not one of {LOGS}")
    if config.max_steps < 1:
        raise ValueError(f"max_steps={config.max_steps} must be >= 1 (the total number of optimizer steps)")
    if config.batch_size <= 0 or config.microbatch < 0:
        raise ValueError("batch_size must be > 0 and microbatch >= 0 (0 = no accumulation)")
    if config.save_every < 0:
        raise ValueError(f"save_every={config.save_every} must be >= 0 (0 = checkpoint only at the end)")
    if config.task == "super_res" and config.augment == "gaussian" and config.max_aug_level <= 0:
        raise ValueError("task=super_res with augment=gaussian needs max_aug_level > 0 (a fraction of the "
                         "low-resolution chain in (0, 1], or a number of timesteps); use augment=none "
                         "to train without conditioning augmentation")
    if not 0.0 <= config.p_uncond < 1.0:
        raise ValueError(f"p_uncond={config.p_uncond} must be in [0, 1)")
    if not 0.0 < config.classifier_t_max <= 1.0:
        raise ValueError(f"classifier_t_max={config.classifier_t_max} must be in (0, 1]")
    if any(not 0.0 < r < 1.0 for r in config.ema_rates):
        raise ValueError(f"ema_rates={config.ema_rates} must each be in (0, 1)")
