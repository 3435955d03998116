"""Configs of the ADM UNet and classifier, the model presets, and checked state-dict loading.

The networks import this module; it imports none of them. ``create_model`` (config -> network)
lives in ``gcg.nn``; ``from gcg.nn.config import create_model`` keeps working.

Field names follow the ADM reference flags (``model_channels`` is ``--num_channels``,
``attention_resolutions`` are feature-map sizes, e.g. (32, 16, 8)), so the flags of OpenAI's
released models (guided-diffusion README) read straight into a config. Every ablation of
Dhariwal & Nichol 2021, Tables 1-3, is a field.
"""

import dataclasses
from dataclasses import dataclass

from gcg.nn.mlp import MLPConfig


# Default channel multipliers per image size, as in the reference code.
DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}


def _resolve_channel_mult(image_size, channel_mult):
    if channel_mult is not None:
        return tuple(channel_mult)
    if image_size not in DEFAULT_CHANNEL_MULT:
        raise ValueError(
            f"no default channel_mult for image_size={image_size}; pass channel_mult explicitly, "
            f"e.g. channel_mult=(1, 2)"
        )
    return DEFAULT_CHANNEL_MULT[image_size]


def _valid_widths(model_channels, mult, near=1):
    """model_channels values near `model_channels` for which every model_channels * m is a
    multiple of NORM_GROUPS (32), up to `near` on each side."""
    def ok(c):
        return all(int(m * c) == m * c and int(m * c) % 32 == 0 for m in mult)

    below = [c for c in range(model_channels - 1, 0, -1) if ok(c)][:near]
    above = [c for c in range(model_channels + 1, 64 * model_channels + 64) if ok(c)][:near]
    return sorted(below) + above


def _check_common(cfg):
    """Validation shared by the UNet and the classifier configs."""
    for name in ("image_size", "in_channels", "model_channels", "num_res_blocks"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if cfg.image_size < 1 or cfg.in_channels < 1 or cfg.model_channels < 1 or cfg.num_res_blocks < 1:
        raise ValueError("image_size, in_channels, model_channels and num_res_blocks must be positive")
    mult = cfg.channel_mult
    levels = len(mult)
    if cfg.image_size % 2 ** (levels - 1):
        raise ValueError(
            f"image_size={cfg.image_size} cannot be halved {levels - 1} times (channel_mult has {levels} "
            f"levels); use fewer levels or an image size divisible by {2 ** (levels - 1)}"
        )
    for level, m in enumerate(mult):
        ch = m * cfg.model_channels
        if ch != int(ch) or int(ch) % 32:
            choices = " or ".join(str(c) for c in _valid_widths(cfg.model_channels, mult))
            raise ValueError(
                f"model_channels={cfg.model_channels} gives {ch:g} channels at level {level} "
                f"(channel_mult={mult}), but GroupNorm normalises in 32 groups, so every level's width "
                f"model_channels x channel_mult must be a multiple of 32: use model_channels={choices}, "
                f"or change channel_mult"
            )
    sizes = [cfg.image_size // 2 ** i for i in range(levels)]
    for r in cfg.attention_resolutions:
        if r not in sizes:
            raise ValueError(
                f"attention resolution {r} never occurs: the feature maps are {sizes}; "
                f"attention_resolutions lists feature-map sizes, not downsample rates"
            )
    if cfg.num_head_channels <= 0 and cfg.num_heads < 1:
        raise ValueError("set num_heads >= 1 or num_head_channels > 0")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")


def _dict_to_tuple(d, names):
    for n in names:
        if isinstance(d.get(n), list):
            d[n] = tuple(d[n])
    return d


@dataclass
class UNetConfig:
    """The ADM UNet (Dhariwal & Nichol 2021, Sec. 3). ``out_channels`` are data channels; with
    ``learn_sigma`` the network outputs 2 * out_channels (mean | variance values v)."""

    image_size: int = 64
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = None  # None: same as in_channels
    num_res_blocks: int = 2
    attention_resolutions: tuple = (32, 16, 8)  # feature-map sizes that get self-attention
    dropout: float = 0.0
    channel_mult: tuple = None  # None: the reference default for image_size
    num_classes: int = None  # None: unconditional
    use_checkpoint: bool = False
    num_heads: int = 4
    num_head_channels: int = -1  # > 0 overrides num_heads: heads = channels // num_head_channels
    num_heads_upsample: int = -1  # -1: same as num_heads
    use_scale_shift_norm: bool = True  # AdaGN; False: add the embedding, then GroupNorm
    resblock_updown: bool = False  # BigGAN residual up/down-sampling blocks
    use_new_attention_order: bool = False  # QKV head order; False = legacy
    learn_sigma: bool = False
    resblock_rescale: bool = False  # divide residual sums by sqrt(2) (Table 1 ablation)
    class_null: bool = False  # label row num_classes = "no label", for classifier-free guidance
    super_res: bool = False  # forward takes low_res, upsampled bilinearly and concatenated
    aug_level_cond: bool = False  # forward takes aug_level [N], embedded like t and added
    conv_resample: bool = True  # plain (non-BigGAN) resampling uses convs

    kind = "unet"

    def __post_init__(self):
        self.channel_mult = _resolve_channel_mult(self.image_size, self.channel_mult)
        self.attention_resolutions = tuple(self.attention_resolutions)
        if self.out_channels is None:
            self.out_channels = self.in_channels
        if self.num_heads_upsample == -1:
            self.num_heads_upsample = self.num_heads
        _check_common(self)
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None (unconditional), got {self.num_classes}")
        if self.class_null and self.num_classes is None:
            raise ValueError("class_null=True needs num_classes (the null label is row num_classes)")

    @property
    def output_channels(self):
        """Channels the network outputs: out_channels, doubled with learn_sigma."""
        return self.out_channels * (2 if self.learn_sigma else 1)

    def to_dict(self):
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclass
class ClassifierConfig:
    """The noise-aware classifier (Dhariwal & Nichol 2021, Sec. 4.1): the UNet's downsampling
    trunk and middle block, then a pooling head ("attention" or "adaptive") -> logits."""

    image_size: int = 64
    in_channels: int = 3
    model_channels: int = 128  # --classifier_width
    num_classes: int = 1000
    num_res_blocks: int = 2  # --classifier_depth
    attention_resolutions: tuple = (32, 16, 8)
    dropout: float = 0.0
    channel_mult: tuple = None
    use_checkpoint: bool = False
    num_heads: int = 1
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False
    resblock_rescale: bool = False
    pool: str = "attention"  # "attention" (attention pooling over the final map) or "adaptive"
    conv_resample: bool = True

    kind = "classifier"

    def __post_init__(self):
        self.channel_mult = _resolve_channel_mult(self.image_size, self.channel_mult)
        self.attention_resolutions = tuple(self.attention_resolutions)
        _check_common(self)
        if self.pool not in ("attention", "adaptive"):
            raise ValueError(f"pool must be 'attention' or 'adaptive', got {self.pool!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    @property
    def out_channels(self):
        return self.num_classes

    def to_dict(self):
        return {"kind": self.kind, **dataclasses.asdict(self)}


def config_from_dict(d):
    """Rebuild a UNetConfig or ClassifierConfig from ``config.to_dict()`` (key "kind" picks which)."""
    d = dict(d)
    kind = d.pop("kind", "unet")
    if kind == "mlp":  # the vector-data denoiser of the toy preset
        return MLPConfig(**d)
    cls = {"unet": UNetConfig, "classifier": ClassifierConfig}.get(kind)
    if cls is None:
        raise ValueError(f"unknown model kind {kind!r}; expected 'unet', 'classifier' or 'mlp'")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid fields are {sorted(names)}")
    return cls(**_dict_to_tuple(d, ("attention_resolutions", "channel_mult")))


# OpenAI's released models, with the flags from the guided-diffusion README.
_ADM = dict(learn_sigma=True, num_classes=1000, resblock_updown=True, use_scale_shift_norm=True,
            attention_resolutions=(32, 16, 8), num_res_blocks=2, model_channels=256)
_ADM_CLASSIFIER = dict(model_channels=128, num_res_blocks=2, attention_resolutions=(32, 16, 8),
                       num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True, pool="attention")

MODEL_PRESETS = {
    # --- OpenAI guided-diffusion releases ---
    "64x64_diffusion": UNetConfig(**{**_ADM, "image_size": 64, "model_channels": 192, "num_res_blocks": 3,
                                     "num_head_channels": 64, "dropout": 0.1, "use_new_attention_order": True}),
    "128x128_diffusion": UNetConfig(**_ADM, image_size=128, num_heads=4),
    "256x256_diffusion": UNetConfig(**_ADM, image_size=256, num_head_channels=64),
    "256x256_diffusion_uncond": UNetConfig(**{**_ADM, "num_classes": None}, image_size=256, num_head_channels=64),
    "512x512_diffusion": UNetConfig(**_ADM, image_size=512, num_head_channels=64),
    "64_256_upsampler": UNetConfig(**{**_ADM, "model_channels": 192}, image_size=256, num_heads=4, super_res=True),
    "128_512_upsampler": UNetConfig(**{**_ADM, "model_channels": 192, "attention_resolutions": (32, 16)},
                                    image_size=512, num_head_channels=64, super_res=True,
                                    channel_mult=(1, 1, 2, 2, 4, 4)),
    "64x64_classifier": ClassifierConfig(**{**_ADM_CLASSIFIER, "num_res_blocks": 4}, image_size=64),
    "128x128_classifier": ClassifierConfig(**_ADM_CLASSIFIER, image_size=128),
    "256x256_classifier": ClassifierConfig(**_ADM_CLASSIFIER, image_size=256),
    "512x512_classifier": ClassifierConfig(**_ADM_CLASSIFIER, image_size=512),
    # --- small presets for CPU work ---
    # tests: ~0.35M parameters exercising conditioning, attention, learned sigma
    "tiny": UNetConfig(image_size=8, in_channels=1, model_channels=32, channel_mult=(1, 1), num_res_blocks=1,
                       attention_resolutions=(4,), num_head_channels=32, num_classes=3, class_null=True,
                       learn_sigma=True, resblock_updown=True),
    # sklearn digits: 8x8x1, 10 classes, ~1.15M parameters, null label row for classifier-free guidance
    "digits8_small": UNetConfig(image_size=8, in_channels=1, model_channels=32, channel_mult=(1, 2),
                                num_res_blocks=2, attention_resolutions=(4,), num_head_channels=32,
                                num_classes=10, class_null=True, resblock_updown=True, dropout=0.1),
    # 32x32 RGB patches of skimage photographs (class = source photo)
    "patch32_small": UNetConfig(image_size=32, in_channels=3, model_channels=32, channel_mult=(1, 2, 2),
                                num_res_blocks=2, attention_resolutions=(8,), num_head_channels=32,
                                num_classes=10, class_null=True, resblock_updown=True, dropout=0.1),
    # cascade stage 2: 8x8 -> 32x32 super-resolution with conditioning-augmentation level
    "sr32_small": UNetConfig(image_size=32, in_channels=3, model_channels=32, channel_mult=(1, 2, 2),
                             num_res_blocks=2, attention_resolutions=(8,), num_head_channels=32,
                             num_classes=10, class_null=True, resblock_updown=True, super_res=True,
                             aug_level_cond=True),
    "tiny_classifier": ClassifierConfig(image_size=8, in_channels=1, model_channels=32, channel_mult=(1, 2),
                                        num_res_blocks=1, attention_resolutions=(4,), num_head_channels=32,
                                        num_classes=3),
    "digits8_classifier": ClassifierConfig(image_size=8, in_channels=1, model_channels=32, channel_mult=(1, 2),
                                           num_res_blocks=2, attention_resolutions=(4,), num_head_channels=32,
                                           num_classes=10),
    "patch32_classifier": ClassifierConfig(image_size=32, in_channels=3, model_channels=32,
                                           channel_mult=(1, 2, 2, 4), num_res_blocks=1,
                                           attention_resolutions=(8,), num_head_channels=32, num_classes=10),
}


def get_preset(name):
    """A fresh copy of preset ``name`` (edit it freely; dataclasses.replace for variants); an
    unknown name raises ValueError listing the valid ones (the same error as the training
    presets' `gcg.training.presets.get_preset`)."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid model presets: {', '.join(MODEL_PRESETS)}")
    return dataclasses.replace(MODEL_PRESETS[name])


def count_parameters(model):
    """Number of scalar parameters of ``model`` (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


def check_state_dict(state_dict, shapes, what: str = "state dict",
                     fix: str = "the checkpoint was written for a different config") -> None:
    """Raise a ValueError naming the first tensor of ``state_dict`` that is missing, of the wrong
    shape, or unexpected, given ``shapes`` (name -> expected shape); the message ends with ``fix``.
    ``what`` names the state dict in the message ("gcg state dict", ...)."""
    for key, shape in shapes.items():
        shape = tuple(shape)
        if key not in state_dict:
            raise ValueError(f"{what} is missing tensor {key!r} (model expects shape {shape}); {fix}")
        got = tuple(state_dict[key].shape)
        if got != shape:
            raise ValueError(f"tensor {key!r} has shape {got} in the {what} but the model expects {shape}; {fix}")
    extra = [k for k in state_dict if k not in shapes]
    if extra:
        raise ValueError(f"{what} has unexpected tensor {extra[0]!r} (shape {tuple(state_dict[extra[0]].shape)}) "
                         f"that the model does not have; {fix}")


def load_state_dict_checked(model, state_dict):
    """``model.load_state_dict(state_dict)`` that fails with a ValueError naming the first
    mismatched tensor (missing, unexpected, or of the wrong shape) and both shapes
    (`check_state_dict`)."""
    check_state_dict(state_dict, {key: tensor.shape for key, tensor in model.state_dict().items()})
    model.load_state_dict(state_dict)
    return model


def __getattr__(name):
    # create_model moved to gcg.nn (it imports the networks, which import this module)
    if name == "create_model":
        from gcg.nn import create_model

        return create_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
