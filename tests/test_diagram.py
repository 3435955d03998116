"""gcg.nn.diagram: the level table matches the built UNet, and the drawing names every level."""

import pytest
import torch
from matplotlib.figure import Figure

from gcg.nn.config import MODEL_PRESETS, UNetConfig
from gcg.nn.diagram import draw_unet, unet_levels
from gcg.nn.unet import ResAttnBlock, UNetModel

SMALL = UNetConfig(image_size=8, in_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(4,), num_heads=2, num_heads_upsample=1, num_classes=10)


def _attention_heads(blocks):
    return [b.attn.attention.num_heads for b in blocks if getattr(b, "attn", None) is not None]


@pytest.mark.parametrize("config", [SMALL, MODEL_PRESETS["64x64_diffusion"], MODEL_PRESETS["128x128_diffusion"]],
                         ids=["small", "64x64", "128x128"])
def test_levels_match_the_built_network(config):
    levels = unet_levels(config)
    with torch.device("meta"):
        net = UNetModel(config)
    assert [lv.resolution for lv in levels] == [config.image_size // 2 ** i for i in range(len(config.channel_mult))]
    assert [lv.channels for lv in levels] == [int(m * config.model_channels) for m in config.channel_mult]
    # every skip kept on the way down is consumed by exactly one up-path block
    assert sum(lv.skips for lv in levels) == 1 + len(net.down_blocks) == len(net.up_blocks)
    assert sum(lv.up_blocks for lv in levels) == len(net.up_blocks)
    down_res = [b for b in net.down_blocks if isinstance(b, ResAttnBlock)]
    assert sum(lv.down_blocks for lv in levels) == len(down_res)
    # attention: the heads listed per level, block by block, are those of the built modules
    expected_down = [lv.attention_heads for lv in levels for _ in range(lv.down_blocks) if lv.attention_heads]
    expected_up = [lv.up_attention_heads for lv in reversed(levels) for _ in range(lv.up_blocks) if lv.up_attention_heads]
    assert _attention_heads(net.down_blocks) == expected_down
    assert _attention_heads(net.up_blocks) == expected_up


def test_small_config_levels_in_closed_form():
    top, bottom = unet_levels(SMALL)
    assert (top.resolution, top.channels, top.attention_heads, top.skips, top.up_blocks) == (8, 32, 0, 2, 2)
    assert (bottom.resolution, bottom.channels, bottom.attention_heads, bottom.up_attention_heads) == (4, 64, 2, 1)


def test_draw_unet_labels_every_level_without_pyplot():
    fig = Figure(figsize=(7, 5))
    ax = draw_unet(fig.add_subplot(), MODEL_PRESETS["64x64_diffusion"], title="ImageNet 64")
    texts = [t.get_text() for t in ax.texts]
    for size, channels in [(64, 192), (32, 384), (16, 576), (8, 768)]:
        assert sum(t.startswith(f"{size}×{size} · {channels} ch") for t in texts) == 2, (size, texts)  # down, up
    assert sum("6 heads × 64 ch" in t for t in texts) == 2
    assert not any("attention" in t for t in texts if "64×64 · 192 ch" in t)  # no attention at 64x64
    assert any("BigGAN" in t for t in texts) and any("middle · 8×8" in t for t in texts)
    assert ax.get_title() == "ImageNet 64"
    fig.savefig(__import__("io").BytesIO(), format="png")  # renders


def test_draw_unet_rejects_other_configs():
    with pytest.raises(TypeError, match="UNetConfig"):
        unet_levels(MODEL_PRESETS["64x64_classifier"])
