"""Networks: the ADM UNet, the noise-aware classifier, the MLP denoiser of the toys, their configs
and presets.

Imports run one way: ``layers`` <- ``mlp`` <- ``config`` <- ``unet`` <- ``classifier`` <- this
package, which holds the factory ``create_model`` (config -> network).
"""

from gcg.nn.classifier import EncoderUNetModel
from gcg.nn.config import (MODEL_PRESETS, ClassifierConfig, UNetConfig, config_from_dict, count_parameters,
                           get_preset, load_state_dict_checked)
from gcg.nn.mlp import MLPConfig, MLPDenoiser
from gcg.nn.unet import UNetModel

__all__ = ["MODEL_PRESETS", "ClassifierConfig", "EncoderUNetModel", "MLPConfig", "MLPDenoiser", "UNetConfig",
           "UNetModel", "config_from_dict", "count_parameters", "create_model", "get_preset",
           "load_state_dict_checked"]


def create_model(config):
    """Build the network of ``config`` (a UNetConfig, ClassifierConfig, MLPConfig, dict or preset name).

    Build on the meta device for free shape/parameter inspection:
    ``with torch.device("meta"): model = create_model("256x256_diffusion")``.
    """
    if isinstance(config, str):
        config = get_preset(config)
    elif isinstance(config, dict):
        config = config_from_dict(config)
    if isinstance(config, UNetConfig):
        return UNetModel(config)
    if isinstance(config, ClassifierConfig):
        return EncoderUNetModel(config)
    if isinstance(config, MLPConfig):
        return MLPDenoiser(config)
    raise TypeError(f"create_model expects a UNetConfig, ClassifierConfig, MLPConfig, dict or preset name, "
                    f"got {type(config)}")
