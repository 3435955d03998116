"""Networks: the ADM UNet, the noise-aware classifier, their configs and presets."""
