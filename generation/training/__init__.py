"""Shared training infrastructure and the three tasks built on it.

- stage 1, the multi-task hand generator: `HandTrainConfig`, `HandTask`, `train_hand` (``train-hand``);
- stage 2, the body outpainter ControlNet: `BodyTrainConfig`, `BodyTask`, `train_body` (``train-body``);
- the autoencoder of the ``mini`` preset: `VaeTrainConfig`, `VaeTask`, `train_vae` (``train-vae``).

A new model is trained by writing a `TrainTask` subclass (data, model, loss, validation, export) and a
`TrainConfig` subclass (its settings); `train(task, config)` brings accelerate, EMA, LR schedules,
checkpoints with exact resume, metrics.jsonl / config.json, validation grids and the non-finite / OOM
guards. Names are imported lazily so that building CLI options does not import torch.
"""

from importlib import import_module

_EXPORTS = {
    "TrainConfig": "config",
    "setting": "config",
    "DataCheckError": "errors",
    "NonFiniteLossError": "errors",
    "TrainingError": "errors",
    "TrainingOOMError": "errors",
    "TrainResult": "loop",
    "train": "loop",
    "weight_dtype": "loop",
    "TrainTask": "task",
    "HandTrainConfig": "hand_config",
    "HandTask": "hand",
    "train_hand": "hand",
    "BodyTrainConfig": "body_config",
    "BodyTask": "body",
    "train_body": "body",
    "VaeTrainConfig": "vae_config",
    "VaeTask": "vae",
    "train_vae": "vae",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
