"""The trainer, one concern per module (``python -m gcg.train`` is its command line).

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

Each module imports only those above it in this list, and nothing here imports the command line
(tests/test_layering.py). Import from the modules: ``from gcg.training.loop import train``
(``gcg.train`` re-exports the trainer's names too).
"""
