"""Load OpenAI's released ADM checkpoints (openai/guided-diffusion) into gcg models.

The reference code names modules by position (``input_blocks.5.1.qkv``, ``out.2``); gcg names
them by role (``down_blocks.4.attn.qkv``, ``out_conv``). ``openai_to_gcg`` / ``gcg_to_openai``
translate a state dict between the two layouts for a given config; the translation table is
derived from the config's module structure, so it covers every switch: BigGAN resblocks or conv
resamplers (reference ``op`` / ``conv``), attention or not at each level, class labels, the
super-resolution input, both classifier heads. ``convert_attention_order`` repacks qkv weights
between the legacy and the new head order.
"""

import dataclasses
import functools
import json
import os
import re

import torch

from gcg.checkpoint import pickle_text
from gcg.nn import config_from_dict, create_model, get_preset
from gcg.nn.config import check_state_dict

OPENAI_MODELS = (
    "64x64_diffusion", "128x128_diffusion", "256x256_diffusion", "256x256_diffusion_uncond", "512x512_diffusion",
    "64_256_upsampler", "128_512_upsampler",
    "64x64_classifier", "128x128_classifier", "256x256_classifier", "512x512_classifier",
)

# Diffusion settings of the released diffusion models (guided-diffusion README flags).
OPENAI_DIFFUSION = {
    name: dict(noise_schedule="cosine" if name == "64x64_diffusion" else "linear", steps=1000,
               model_mean_type="epsilon", model_var_type="learned_range", loss_type="mse")
    for name in OPENAI_MODELS if "classifier" not in name
}

RELEASES_URL = "https://github.com/openai/guided-diffusion#download-pre-trained-models"

# ResBlock parameters: gcg name -> reference name.
_RESBLOCK = {"norm1": "in_layers.0", "conv1": "in_layers.2", "emb_proj": "emb_layers.1",
             "norm2": "out_layers.0", "conv2": "out_layers.3", "skip": "skip_connection"}
_EMBED_MLP = {"linear_1": "0", "linear_2": "2"}


def _resblock_or_resampler(sub, resampler_conv_name):
    """Rename inside a block that is a ResBlock ("norm1.weight") or a conv resampler ("conv.weight")."""
    head, _, rest = sub.partition(".")
    if head in _RESBLOCK:
        return f"{_RESBLOCK[head]}.{rest}"
    if head == "conv":
        return f"{resampler_conv_name}.{rest}"
    raise KeyError(sub)


def _gcg_to_reference_name(key, up_blocks_with_attn):
    """One gcg state-dict key -> its reference name. ``up_blocks_with_attn``: indices j whose
    up block has attention (the upsampler then sits at position 2 instead of 1)."""
    m = re.fullmatch(r"(time_embed|aug_embed)\.(linear_[12])\.(\w+)", key)
    if m:
        prefix = "time_embed" if m[1] == "time_embed" else "aug_embed"  # aug_embed: gcg extension
        return f"{prefix}.{_EMBED_MLP[m[2]]}.{m[3]}"
    if key == "label_embed.weight":
        return "label_emb.weight"
    if key.startswith("input_conv."):
        return "input_blocks.0.0." + key[len("input_conv."):]
    m = re.fullmatch(r"down_blocks\.(\d+)\.(.+)", key)
    if m:
        j, sub = int(m[1]) + 1, m[2]
        if sub.startswith("res."):
            return f"input_blocks.{j}.0.{_resblock_or_resampler(sub[4:], 'op')}"
        if sub.startswith("attn."):
            return f"input_blocks.{j}.1.{sub[5:]}"
        return f"input_blocks.{j}.0.{_resblock_or_resampler(sub, 'op')}"  # a downsampler
    m = re.fullmatch(r"middle_block\.(res_1|attn|res_2)\.(.+)", key)
    if m:
        if m[1] == "attn":
            return f"middle_block.1.{m[2]}"
        return f"middle_block.{0 if m[1] == 'res_1' else 2}.{_resblock_or_resampler(m[2], 'conv')}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(res|attn|upsample)\.(.+)", key)
    if m:
        j, part, sub = int(m[1]), m[2], m[3]
        if part == "res":
            return f"output_blocks.{j}.0.{_resblock_or_resampler(sub, 'conv')}"
        if part == "attn":
            return f"output_blocks.{j}.1.{sub}"
        position = 2 if j in up_blocks_with_attn else 1
        return f"output_blocks.{j}.{position}.{_resblock_or_resampler(sub, 'conv')}"
    if key.startswith("out_norm."):
        return "out.0." + key[len("out_norm."):]
    if key.startswith("out_conv."):
        return "out.2." + key[len("out_conv."):]
    if key.startswith("pool."):  # classifier attention-pool head
        return "out.2." + key[len("pool."):]
    if key.startswith("out_proj."):  # classifier adaptive head: norm, SiLU, pool, conv, flatten
        return "out.3." + key[len("out_proj."):]
    raise KeyError(f"no reference name for gcg key {key!r}")


def _resolve_config(config):
    if isinstance(config, str):
        return get_preset(config)
    if isinstance(config, dict):
        return config_from_dict(config)
    return config


@functools.lru_cache(maxsize=32)
def _layout(config_json):
    """(gcg key -> shape, gcg key -> reference key) of a config, from a model built on the meta
    device (no memory, no init); cached per config."""
    with torch.device("meta"):
        model = create_model(config_from_dict(json.loads(config_json)))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with_attn = {int(m[1]) for k in shapes if (m := re.match(r"up_blocks\.(\d+)\.attn\.", k))}
    return shapes, {k: _gcg_to_reference_name(k, with_attn) for k in shapes}


def _expected_shapes(config):
    return dict(_layout(json.dumps(config.to_dict()))[0])


def reference_key_map(config):
    """Ordered dict gcg key -> reference key for every tensor of ``config``'s model."""
    return dict(_layout(json.dumps(_resolve_config(config).to_dict()))[1])


def _translate(state_dict, key_map, shapes, source):
    """Rename ``state_dict`` by ``key_map`` (source key -> target key), checking keys and shapes."""
    check_state_dict(state_dict, {src: shapes[dst] for src, dst in key_map.items()}, what=f"{source} state dict",
                     fix="it does not match this config: check the preset flags (e.g. learn_sigma, num_classes, "
                         "resblock_updown)")
    return {dst: state_dict[src] for src, dst in key_map.items()}


def openai_to_gcg(state_dict, config):
    """Reference-layout state dict -> gcg layout for ``config`` (a config, dict or preset name).

    Tensors are renamed, not copied. Raises ValueError naming the first missing, unexpected or
    wrongly shaped tensor and both shapes. The qkv head order is kept: set the config's
    ``use_new_attention_order`` to the checkpoint's order (or repack with convert_attention_order).
    """
    config = _resolve_config(config)
    shapes = _expected_shapes(config)
    gcg_to_ref = reference_key_map(config)
    return _translate(state_dict, {r: g for g, r in gcg_to_ref.items()}, shapes, "reference-layout")


def gcg_to_openai(state_dict, config):
    """gcg state dict -> the reference key layout (the inverse of ``openai_to_gcg``)."""
    config = _resolve_config(config)
    gcg_to_ref = reference_key_map(config)
    shapes = {gcg_to_ref[k]: s for k, s in _expected_shapes(config).items()}
    return _translate(state_dict, gcg_to_ref, shapes, "gcg")


def repack_qkv(tensor, num_heads, to_new_order):
    """Reorder the output rows of a packed qkv weight [3*H*d, C, 1] or bias [3*H*d] between the
    legacy order [h: q,k,v]... and the new order [q: h...| k: h... | v: h...]."""
    d = tensor.shape[0] // (3 * num_heads)
    grouped = (num_heads, 3, d) if to_new_order else (3, num_heads, d)
    swapped = tensor.reshape(*grouped, *tensor.shape[1:]).transpose(0, 1)  # (H,3,d) <-> (3,H,d)
    return swapped.reshape(tensor.shape)


def convert_attention_order(state_dict, config, new_order=True):
    """Repack every attention block's qkv (not the classifier's attention-pool head, which always
    uses the new order) so a model with ``use_new_attention_order=new_order`` computes the same
    function. Returns (new_state_dict, new_config); gcg layout in and out."""
    config = _resolve_config(config)
    if config.use_new_attention_order == new_order:
        return dict(state_dict), config
    new_config = dataclasses.replace(config, use_new_attention_order=new_order)
    with torch.device("meta"):
        model = create_model(config)
    heads = {name: mod.attention.num_heads for name, mod in model.named_modules() if name.endswith("attn")}
    out = dict(state_dict)
    for key, tensor in state_dict.items():
        m = re.fullmatch(r"(.*attn)\.qkv\.(weight|bias)", key)
        if m:
            out[key] = repack_qkv(tensor, heads[m[1]], to_new_order=new_order)
    return out, new_config


def _read_state_dict(path, stem, map_location):
    """``torch.load(path, weights_only=True)`` of a released state dict; one-line errors for a
    truncated file, a gcg checkpoint (any format) and anything that is not a dict of tensors."""
    gcg_hint = (f"{path!r} is a gcg training checkpoint, not an OpenAI release: load it with "
                f"gcg.checkpoint.load_model({path!r})")
    try:
        state_dict = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated (miniz), not a torch file, or pickled objects
        if "model_config" in pickle_text(path):
            raise ValueError(gcg_hint) from None
        reason = str(exc).split(". ")[0].splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"OpenAI checkpoint {path!r} is unreadable ({type(exc).__name__}: {reason}); it is "
                         f"truncated or not a PyTorch file: download {stem}.pt again ({RELEASES_URL})") from None
    if isinstance(state_dict, dict) and "model_config" in state_dict:
        raise ValueError(gcg_hint)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path!r} does not hold a state dict (a dict of tensors) as OpenAI's releases do; "
                         f"download {stem}.pt from {RELEASES_URL}")
    return state_dict


def load_openai_checkpoint(path, name, attention_order=None, map_location="cpu"):
    """Load an OpenAI guided-diffusion release (e.g. ``64x64_diffusion.pt``) as a gcg model in eval mode.

    name: one of OPENAI_MODELS (the file's stem), or a UNetConfig / ClassifierConfig for a model
    trained with other flags of the reference code. attention_order: None keeps the file's qkv
    order; "new" or "legacy" repacks the weights (same function, other head layout).
    Diffusion settings of a release: ``OPENAI_DIFFUSION[name]`` (fields of gcg.DiffusionConfig).
    """
    if isinstance(name, str) and name not in OPENAI_MODELS:
        raise ValueError(f"unknown OpenAI model {name!r}; choose one of {list(OPENAI_MODELS)} or pass a config")
    if attention_order not in (None, "new", "legacy"):
        raise ValueError(f"attention_order must be None, 'new' or 'legacy', got {attention_order!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        stem = name if isinstance(name, str) else "<model>"
        raise FileNotFoundError(
            f"OpenAI checkpoint {path!r} not found. The released weights are linked from the "
            f"openai/guided-diffusion README ({RELEASES_URL}); download {stem}.pt there and pass its path, "
            f"e.g. put it at models/{stem}.pt and call load_openai_checkpoint('models/{stem}.pt', {stem!r})."
        )
    state_dict = _read_state_dict(path, name if isinstance(name, str) else "<model>", map_location)
    config = _resolve_config(name)
    state_dict = openai_to_gcg(state_dict, config)
    if attention_order is not None:
        state_dict, config = convert_attention_order(state_dict, config, new_order=attention_order == "new")
    with torch.device("meta"):  # no random init of ~500M parameters; the weights are assigned
        model = create_model(config)
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, assign=True)
    return model.eval()
