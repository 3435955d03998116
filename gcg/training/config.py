"""What a training run is: `TrainConfig`, its checks, and the rules that turn it into the pieces.

A `TrainConfig` names a network preset, a data set, a diffusion and an optimiser. Three rules
reconcile it with the data and the objective, so a preset never has to repeat what the data says:

  `diffusion_config`    the `gcg.diffusion.DiffusionConfig` (the decoder of L_0 follows the data:
                        discretized for 8-bit images, Gaussian for the continuous toy mixture);
  `data_properties`     (shape of one example, number of classes) read off a data set;
  `build_model_config`  the network preset made consistent with both (size, channels, classes,
                        learned sigma, null label, super-resolution input), then `--set model.*`.

`RESUMABLE_FIELDS` and `check_resume_config` say which fields a resumed run may change.
Named recipes are in `gcg.training.presets`, ``--set`` / config.json parsing in
`gcg.training.overrides`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import torch

from gcg.diffusion import DiffusionConfig
from gcg.nn.config import MODEL_PRESETS, ClassifierConfig
from gcg.nn.mlp import MLP_PRESETS, MLPConfig
from gcg.nn.precision import PRECISIONS

TASKS = ("diffusion", "classifier", "super_res")
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


# ----------------------------------------------------------------------------- reconciliation
# network presets a TrainConfig.model may name: the UNets and classifiers, and the toys' MLPs
NETWORK_PRESETS = {**MODEL_PRESETS, **MLP_PRESETS}


def diffusion_config(config: TrainConfig) -> DiffusionConfig:
    """The `gcg.diffusion.DiffusionConfig` of a training config (stored in checkpoints)."""
    return DiffusionConfig(noise_schedule=config.noise_schedule, steps=config.diffusion_steps,
                           model_mean_type=config.model_mean_type,
                           model_var_type=config.model_var_type, loss_type=config.loss_type,
                           decoder="discretized" if config.dataset != "toy-gmm" else "gaussian")


def data_properties(dataset) -> tuple[tuple, int | None]:
    """(shape of one example, number of classes or None) of a `gcg.data` data set: its
    `num_classes`, else its toy mixture's, else len(class_names), else max(labels) + 1."""
    x = dataset[0][0]
    num_classes = getattr(dataset, "num_classes", None)
    if num_classes is None and getattr(dataset, "toy", None) is not None:
        num_classes = getattr(dataset.toy, "num_classes", None)
    if num_classes is None and getattr(dataset, "class_names", None):
        num_classes = len(dataset.class_names)
    if num_classes is None and getattr(dataset, "labels", None) is not None:
        num_classes = int(torch.as_tensor(dataset.labels).max()) + 1
    return tuple(torch.as_tensor(x).shape), num_classes


def build_model_config(config: TrainConfig, data_shape: tuple, num_classes: int | None):
    """The network config: the `MODEL_PRESETS[config.model]` entry made consistent with the data
    (size, channels, classes) and the objective (learn_sigma, class_null, super_res), then patched
    with `config.model_overrides`."""
    if config.model not in NETWORK_PRESETS:
        raise ValueError(f"unknown model preset {config.model!r}; valid model presets: "
                         f"{', '.join(NETWORK_PRESETS)}")
    base = NETWORK_PRESETS[config.model]
    is_vector = isinstance(base, MLPConfig)
    if is_vector != (len(data_shape) == 1) or len(data_shape) not in (1, 3):
        raise ValueError(f"data set {config.dataset!r} yields examples of shape {data_shape} but model "
                         f"{config.model!r} expects {'vectors [D]' if is_vector else 'images [C, H, W]'}")
    channels = data_shape[0]
    changes = dict(dim=channels) if is_vector else dict(image_size=data_shape[-1], in_channels=channels)
    if isinstance(base, ClassifierConfig):
        if config.task != "classifier":
            raise ValueError(f"model {config.model!r} is a classifier; set task=classifier or pick a UNet")
        if num_classes is None:
            raise ValueError(f"data set {config.dataset!r} has no labels to train a classifier on")
        changes["num_classes"] = num_classes
    else:
        if config.task == "classifier":
            raise ValueError(f"task=classifier needs a classifier model preset, got UNet {config.model!r}")
        cond = config.class_cond and num_classes is not None
        changes.update(num_classes=num_classes if cond else None,
                       class_null=cond and (config.p_uncond > 0 or base.class_null),
                       learn_sigma=config.model_var_type in ("learned", "learned_range"))
        if is_vector and config.task != "diffusion":
            raise ValueError(f"model {config.model!r} supports task=diffusion only")
        if not is_vector:
            changes.update(out_channels=channels, super_res=config.task == "super_res",
                           aug_level_cond=config.task == "super_res" and config.augment == "gaussian")
        if config.p_uncond > 0 and not cond:
            raise ValueError("p_uncond > 0 needs a labelled data set and class_cond=True")
    if config.dropout is not None and not is_vector:
        changes["dropout"] = config.dropout
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(config.model_overrides) - names)
    if unknown:
        raise ValueError(f"unknown network fields {unknown} (from --set model.<field>); "
                         f"valid fields of {type(base).__name__}: {sorted(names)}")
    changes.update(config.model_overrides)
    return dataclasses.replace(base, **changes)


# ----------------------------------------------------------------------------- resuming
# TrainConfig fields that may differ between a run and its resumption: its length, the cadence of
# logs, checkpoints and grids, where things live, and how (not what) a step computes. Every other
# field defines the objective, the data stream or the update rule, so a change on resume is an
# error (`check_resume_config`); a new TrainConfig field belongs to that group until listed here.
RESUMABLE_FIELDS = frozenset({
    "max_steps", "log_every", "save_every", "keep_checkpoints", "sample_every", "num_sample_images",
    "sample_steps", "description", "out_dir", "data_dir", "device", "compile", "channels_last", "log",
    "microbatch",  # gradient accumulation: the same sum, other float rounding
    "precision",  # autocast rounding, not the objective (e.g. a bf16 run resumed where bf16 is missing)
    "ema_rates",  # a new rate starts from the current weights; a dropped one is no longer kept
})
# compared as the network config they build (`gcg.training.state.restore`), which names the changed field
NETWORK_FIELDS = frozenset({"model", "model_overrides", "dropout"})


def _set_value(value) -> str:
    """`value` as `--set key=VALUE` text."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def check_resume_config(stored: dict | None, config: TrainConfig, path) -> None:
    """Raise ValueError naming every field outside RESUMABLE_FIELDS / NETWORK_FIELDS whose value in
    `config` differs from the checkpoint's `train_config` (a field the checkpoint predates counts
    as its default), with both values and the `--set` that restores the checkpoint's."""
    if not stored:
        return
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(TrainConfig)}
    plain = lambda v: json.loads(json.dumps(v))  # noqa: E731  tuples -> lists, as stored
    changed = [(name, stored.get(name, defaults[name]), value) for name, value in config.to_dict().items()
               if name not in RESUMABLE_FIELDS | NETWORK_FIELDS
               and plain(stored.get(name, defaults[name])) != plain(value)]
    if changed:
        detail = "; ".join(f"{n}={before!r} in the checkpoint, {now!r} now" for n, before, now in changed)
        fix = " ".join(f"--set {n}={_set_value(before)}" for n, before, _ in changed)
        raise ValueError(f"cannot resume from {path}: {detail} (this changes what the run computes); "
                         f"resume with {fix}, or train into a new --out-dir")
