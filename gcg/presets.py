"""Training recipes and configs, under their first import path: ``from gcg.presets import get_preset``.

They live in `gcg.training`: `TrainConfig` and its checks in `gcg.training.config`, the named
`PRESETS` in `gcg.training.presets`, ``--set key=value`` and config.json parsing in
`gcg.training.overrides`.
"""
from gcg.training.config import LOGS, PRECISIONS, SCHEDULE_SAMPLERS, TASKS, TrainConfig, validate
from gcg.training.overrides import apply_overrides, config_from_dict, load_config_file
from gcg.training.presets import PRESETS, describe_presets, get_preset

__all__ = ["LOGS", "PRECISIONS", "PRESETS", "SCHEDULE_SAMPLERS", "TASKS", "TrainConfig", "apply_overrides",
           "config_from_dict", "describe_presets", "get_preset", "load_config_file", "validate"]
