"""The trainer, in the order a run uses it (``python -m gcg.train`` is the command line around it).

  config     `TrainConfig`, its checks, the rules that fit network / diffusion to the data,
             which fields a resumed run may change
  presets    the named recipes (``--preset NAME``)
  overrides  ``--set key=value`` and a run's config.json, type-checked
  tasks      the three objectives: diffusion, noise-aware classifier, super-resolution stage
  state      `TrainState`, random streams, checkpoints (save / restore / resume)
  build      config -> `TrainState` (`setup`)
  step       one optimizer step: draws, loss, accumulation, AdamW, EMA (`train_step`)
  monitor    metric windows, metrics.jsonl, TensorBoard, loss curve, sample grids
  signals    SIGINT / SIGTERM: finish the step, save, stop on every rank
  loop       `train(config)`, top to bottom

Imports run one way, top of this list to bottom; nothing here imports the command line.
The names below are imported lazily (``from gcg.training import train``).
"""

from importlib import import_module

# public name -> module that defines it
_EXPORTS = {
    "TrainConfig": "gcg.training.config",
    "build_model_config": "gcg.training.config",
    "diffusion_config": "gcg.training.config",
    "RESUMABLE_FIELDS": "gcg.training.config",
    "PRESETS": "gcg.training.presets",
    "get_preset": "gcg.training.presets",
    "apply_overrides": "gcg.training.overrides",
    "load_config_file": "gcg.training.overrides",
    "TrainState": "gcg.training.state",
    "setup": "gcg.training.build",
    "train_step": "gcg.training.step",
    "update_ema": "gcg.training.step",
    "TrainResult": "gcg.training.loop",
    "train": "gcg.training.loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gcg.training' has no attribute {name!r}")


def __dir__():
    return __all__
