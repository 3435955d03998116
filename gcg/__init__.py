"""gcg — guided and cascaded diffusion, a runnable textbook.

The public names below are imported lazily (PEP 562), so ``import gcg`` is cheap and each
chapter's module loads only when used. The map of chapters to modules is in the README.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # chapter 01-03: schedules, Gaussian diffusion, respacing, samplers
    "get_named_beta_schedule": "gcg.schedules",
    "betas_for_alpha_bar": "gcg.schedules",
    "space_timesteps": "gcg.schedules",
    "GaussianDiffusion": "gcg.diffusion",
    "DiffusionConfig": "gcg.diffusion",
    "normal_kl": "gcg.losses",
    "discretized_gaussian_log_likelihood": "gcg.losses",
    "UniformSampler": "gcg.resample",
    "LossSecondMomentResampler": "gcg.resample",
    "create_named_schedule_sampler": "gcg.resample",
    "Gaussian": "gcg.toy",
    "GaussianMixture": "gcg.toy",
    # images: value ranges, box downsampling, sample grids (every chapter)
    "downsample": "gcg.images",
    "image_grid": "gcg.images",
    "plot_image_grid": "gcg.images",
    # chapter 04: guidance
    "classifier_cond_fn": "gcg.guidance",
    "ClassifierFreeGuidance": "gcg.guidance",
    "label_dropout": "gcg.guidance",
    # chapter 05: networks and checkpoints
    "UNetModel": "gcg.nn.unet",
    "EncoderUNetModel": "gcg.nn.classifier",
    "UNetConfig": "gcg.nn.config",
    "ClassifierConfig": "gcg.nn.config",
    "MODEL_PRESETS": "gcg.nn.config",
    "create_model": "gcg.nn",
    "load_openai_checkpoint": "gcg.convert",
    "MLPConfig": "gcg.nn.mlp",
    # chapter 06: cascades
    "Cascade": "gcg.cascade",
    "CascadeStage": "gcg.cascade",
    "super_res_kwargs": "gcg.cascade",
    "cascade_bpd": "gcg.cascade",
    # chapter 07: metrics
    "frechet_distance": "gcg.metrics",
    "fid_from_features": "gcg.metrics",
    "inception_score": "gcg.metrics",
    "precision_recall": "gcg.metrics",
    "kid": "gcg.metrics",
    "energy_distance": "gcg.metrics",
    "load_fid_inception": "gcg.inception",
    "train_feature_net": "gcg.features",
    # chapter 08: data, training, checkpoints
    "make_dataset": "gcg.data",
    "make_loader": "gcg.data",
    "DataError": "gcg.data",
    "TrainConfig": "gcg.training.config",
    "load_model": "gcg.checkpoint",
    # from Python: load_model -> sample_images -> save_grid (the README's "From Python")
    "sample_images": "gcg.sample",
    "save_grid": "gcg.sample",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gcg' has no attribute {name!r}")


def __dir__():
    return __all__
