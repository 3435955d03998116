"""Presets and configs: the released models' parameter and tensor counts, config round trips,
validation messages, checked state-dict loading."""

import dataclasses
import json

import pytest
import torch

from gcg.nn import (MODEL_PRESETS, ClassifierConfig, UNetConfig, config_from_dict, count_parameters, create_model,
                    get_preset, load_state_dict_checked)

# Published sizes of OpenAI's released guided-diffusion models (issue 3 and
# reference/openai_adm_state_dict_keys.txt): millions of parameters, tensors in the state dict.
RELEASED = {
    "64x64_diffusion": (295.90, 541),
    "64x64_classifier": (65.44, 307),
    "128x128_diffusion": (421.53, 493),
    "128x128_classifier": (42.57, 221),
    "256x256_diffusion": (553.84, 567),
    "256x256_diffusion_uncond": (552.81, 566),
    "256x256_classifier": (54.10, 249),
    "512x512_diffusion": (559.00, 645),
    "512x512_classifier": (54.45, 281),
    "64_256_upsampler": (311.80, 567),
    "128_512_upsampler": (308.84, 537),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_model_sizes(name):
    with torch.device("meta"):
        model = create_model(name)
    millions, tensors = RELEASED[name]
    assert round(count_parameters(model) / 1e6, 2) == millions
    assert len(model.state_dict()) == tensors


def test_small_presets_are_cpu_sized():
    sizes = {}
    for name in ("tiny", "digits8_small", "patch32_small", "sr32_small", "tiny_classifier", "digits8_classifier",
                 "patch32_classifier"):
        with torch.device("meta"):
            sizes[name] = count_parameters(create_model(name))
    assert 0.8e6 < sizes["digits8_small"] < 1.5e6  # "~1M parameters" on the 8x8 digits
    assert sizes["tiny"] < 0.5e6 and max(sizes.values()) < 3e6
    digits = MODEL_PRESETS["digits8_small"]
    assert (digits.image_size, digits.in_channels, digits.num_classes, digits.class_null) == (8, 1, 10, True)
    assert MODEL_PRESETS["sr32_small"].super_res and MODEL_PRESETS["sr32_small"].aug_level_cond


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
def test_config_round_trip_through_json(name):
    config = MODEL_PRESETS[name]
    d = json.loads(json.dumps(config.to_dict()))
    assert d["kind"] == ("classifier" if isinstance(config, ClassifierConfig) else "unet")
    assert config_from_dict(d) == config


def test_get_preset_returns_a_copy_and_create_model_accepts_all_forms():
    cfg = get_preset("tiny")
    cfg.dropout = 0.3
    assert MODEL_PRESETS["tiny"].dropout == 0.0
    a = create_model("tiny")
    b = create_model(MODEL_PRESETS["tiny"].to_dict())
    assert a.config == b.config
    with pytest.raises(ValueError, match="unknown model preset 'nope'"):
        get_preset("nope")
    with pytest.raises(TypeError, match="create_model expects"):
        create_model(3)
    from gcg.nn.config import create_model as old_import_path  # code written before the move still works

    assert old_import_path is create_model


def test_default_channel_mult_and_ablation_fields():
    assert UNetConfig(image_size=256).channel_mult == (1, 1, 2, 2, 4, 4)
    assert UNetConfig(image_size=64, learn_sigma=True, out_channels=3).output_channels == 6
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    # Dhariwal & Nichol 2021, Tables 1-3, plus the conditioning switches
    assert {"model_channels", "num_res_blocks", "num_heads", "num_head_channels", "attention_resolutions",
            "resblock_updown", "use_scale_shift_norm", "resblock_rescale", "dropout", "learn_sigma",
            "num_classes", "class_null", "super_res", "aug_level_cond", "use_checkpoint"} <= fields


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=8, channel_mult=(1, 2), attention_resolutions=(2,)), r"resolution 2 never occurs.*\[8, 4\]"),
    (dict(image_size=8, channel_mult=(1, 2), model_channels=48),
     r"48 channels at level 0 .*multiple of 32: use model_channels=32 or 64"),
    (dict(image_size=8, channel_mult=(0.5, 1), model_channels=96), r"use model_channels=64 or 128"),
    (dict(image_size=8, channel_mult=(1, 2), model_channels="64"), "model_channels must be an integer"),
    (dict(image_size=10, channel_mult=(1, 2, 2), attention_resolutions=()), "cannot be halved 2 times"),
    (dict(image_size=48), "no default channel_mult for image_size=48"),
    (dict(image_size=8, channel_mult=(1, 2), attention_resolutions=(), class_null=True), "needs num_classes"),
    (dict(image_size=8, channel_mult=(1,), attention_resolutions=(8,), dropout=1.0), "dropout"),
])
def test_invalid_unet_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def test_invalid_classifier_config_and_dict_raise():
    with pytest.raises(ValueError, match="pool must be"):
        ClassifierConfig(image_size=64, pool="spatial")
    with pytest.raises(ValueError, match=r"unknown UNetConfig fields \['widht'\]"):
        config_from_dict({"kind": "unet", "widht": 3})
    with pytest.raises(ValueError, match="unknown model kind"):
        config_from_dict({"kind": "vae"})
    with pytest.raises(ValueError, match="num_head_channels=24"):
        create_model(UNetConfig(image_size=8, channel_mult=(1, 2), model_channels=32, attention_resolutions=(4,),
                                num_head_channels=24))


def test_load_state_dict_checked_names_first_mismatch():
    model = create_model("tiny")
    state = model.state_dict()
    key = "down_blocks.0.res.conv1.weight"
    bad = {**state, key: torch.zeros(64, 32, 3, 3)}
    with pytest.raises(ValueError, match=rf"'{key}' has shape \(64, 32, 3, 3\).*expects \(32, 32, 3, 3\)"):
        load_state_dict_checked(model, bad)
    missing = {k: v for k, v in state.items() if k != "out_conv.bias"}
    with pytest.raises(ValueError, match=r"missing tensor 'out_conv.bias' \(model expects shape \(2,\)\)"):
        load_state_dict_checked(model, missing)
    with pytest.raises(ValueError, match="unexpected tensor 'extra.weight'"):
        load_state_dict_checked(model, {**state, "extra.weight": torch.zeros(1)})
    other = create_model("tiny")
    load_state_dict_checked(other, state)
    for k, v in other.state_dict().items():
        assert torch.equal(v, state[k])


def test_both_get_presets_name_the_bad_value_and_list_the_valid_ones():
    """Network presets (gcg.nn) and training recipes (gcg.presets) refuse an unknown name alike:
    ValueError (a one-line error on the command line), the name, then every valid one."""
    from gcg.presets import PRESETS
    from gcg.presets import get_preset as get_training_preset

    for get, kind, valid in ((get_preset, "model preset", MODEL_PRESETS), (get_training_preset, "preset", PRESETS)):
        with pytest.raises(ValueError) as info:
            get("nope")
        assert str(info.value) == f"unknown {kind} 'nope'; valid {kind}s: {', '.join(valid)}"
        assert "\n" not in str(info.value)
