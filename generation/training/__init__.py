"""Shared training infrastructure (`loop.train`, `TrainConfig`, `TrainTask`) and the stage-1 task.

A new model is trained by writing a `TrainTask` subclass (data, model, loss, validation, export) and a
`TrainConfig` subclass (its settings); the loop brings accelerate, EMA, LR schedules, checkpoints with
exact resume, metrics.jsonl / config.json, validation grids and the non-finite / OOM guards.
"""

from .config import TrainConfig, add_config_arguments, config_from_args, setting
from .errors import DataCheckError, NonFiniteLossError, TrainingError, TrainingOOMError
from .loop import TrainResult, train, weight_dtype
from .task import TrainTask

__all__ = [
    "DataCheckError", "NonFiniteLossError", "TrainConfig", "TrainResult", "TrainTask", "TrainingError",
    "TrainingOOMError", "add_config_arguments", "config_from_args", "setting", "train", "weight_dtype",
]  # fmt: skip
