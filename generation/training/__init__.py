"""Shared training infrastructure and the stage-1 task.

A new model is trained by writing a `TrainTask` subclass (data, model, loss, validation, export) and a
`TrainConfig` subclass (its settings); `train(task, config)` brings accelerate, EMA, LR schedules,
checkpoints with exact resume, metrics.jsonl / config.json, validation grids and the non-finite / OOM
guards. Names are imported lazily so that building CLI options does not import torch.
"""

from importlib import import_module

_EXPORTS = {
    "TrainConfig": "config", "add_config_arguments": "config", "config_from_args": "config", "setting": "config",
    "DataCheckError": "errors", "NonFiniteLossError": "errors", "TrainingError": "errors",
    "TrainingOOMError": "errors", "TrainResult": "loop", "train": "loop", "weight_dtype": "loop",
    "TrainTask": "task", "HandTrainConfig": "hand_config", "HandTask": "hand", "train_hand": "hand",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
