"""Run settings as plain dataclasses, and their round trip to argparse and JSON.

`TrainConfig` holds what every training run needs (optimisation, precision, checkpoints, logging).
A task subclasses it with its own fields (`HandTrainConfig` for stage 1, the body task for stage 2).
Every field carries a ``help`` in its metadata; `add_config_arguments` turns the fields into
``--kebab-case`` options, so a new field is a new CLI option with no other change.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


def setting(default, help: str, **kwargs):
    """A dataclass field with a help string (shown by the CLI and written next to config.json)."""
    return field(default=default, metadata={"help": help, **kwargs})


# Learning rate per preset when --learning-rate is not given: the tiny random models need a large one
# to learn anything in a few hundred steps; 1e-5 is the usual rate for fine-tuning Stable Diffusion.
PRESET_LEARNING_RATES = {"tiny": 1e-3, "sd": 1e-5}
# Training side per preset when --resolution is not given. The tiny preset trains at 64 px whatever the
# manifest's crop size, so the CPU demo stays fast; sd trains at SD-1.5's native 512 px.
PRESET_RESOLUTION = {"tiny": 64, "sd": 512}


@dataclass
class TrainConfig:
    """Settings shared by every training task. Fields in order of how often people change them."""

    out: str = setting(
        "runs/train", "run folder: checkpoints, metrics.jsonl, config.json, validation grids, final model"
    )
    steps: int = setting(1000, "optimizer steps in total (a resumed run continues up to this count)")
    batch_size: int = setting(4, "samples per device per micro-batch")
    learning_rate: float = setting(1e-5, "peak learning rate")
    lr_schedule: str = setting("constant_with_warmup", "learning-rate schedule", choices=LR_SCHEDULES)
    lr_warmup_steps: int = setting(0, "linear warm-up steps")
    gradient_accumulation_steps: int = setting(
        1, "micro-batches per optimizer step (effective batch = batch x this x GPUs)"
    )
    mixed_precision: str = setting(
        "no", "no / fp16 / bf16 (bf16 on Ampere or newer GPUs)", choices=MIXED_PRECISION
    )
    gradient_checkpointing: bool = setting(
        False, "recompute activations in the backward pass: less memory, ~30%% slower"
    )
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0 disables clipping)")
    use_8bit_adam: bool = setting(
        False, "bitsandbytes 8-bit AdamW (must be installed; a clear error otherwise)"
    )
    adam_beta1: float = setting(0.9, "AdamW beta1")
    adam_beta2: float = setting(0.999, "AdamW beta2")
    adam_weight_decay: float = setting(1e-2, "AdamW weight decay")
    adam_epsilon: float = setting(1e-8, "AdamW epsilon")
    ema: bool = setting(
        True, "keep an exponential moving average of the weights; the final model and validation use it"
    )
    ema_decay: float = setting(0.9999, "EMA decay (warm-up starts lower)")
    ema_warmup: bool = setting(
        True, "EMA warm-up: the decay grows with the step count (useful for short runs)"
    )
    checkpoint_every: int = setting(
        500, "save a resumable checkpoint every N optimizer steps (0: only at the end)"
    )
    checkpoints_total_limit: int = setting(
        3, "keep at most this many checkpoints (oldest deleted; 0 keeps all)"
    )
    validate_every: int = setting(500, "write a validation image grid every N steps (0: only at the end)")
    log_every: int = setting(10, "append a metrics.jsonl line every N steps (means over those steps)")
    seed: int = setting(0, "seed for initialisation, data order and training noise")
    resume: str | None = setting(
        None,
        "'latest' (the newest checkpoint in the run folder, or a fresh start if none) or a checkpoint folder",
    )
    interrupt_after: int | None = setting(
        None,
        "stop after this many steps in this invocation, with a checkpoint (fit a job time limit; continue with --resume latest)",
    )
    num_workers: int = setting(0, "DataLoader worker processes")
    allow_tf32: bool = setting(True, "allow TF32 matmuls on Ampere+ GPUs")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} setting(s): {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str):
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def resolve(self):
        """Fill settings whose default depends on others; returns the config.

        A `learning_rate` left as None takes its preset's rate from `PRESET_LEARNING_RATES`.
        """
        if getattr(self, "learning_rate", 0) is None:
            self.learning_rate = PRESET_LEARNING_RATES.get(getattr(self, "preset", "sd"), 1e-5)
        return self

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        checks = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1"),
            (
                self.learning_rate is not None and self.learning_rate > 0,
                f"learning_rate must be > 0, got {self.learning_rate}",
            ),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {MIXED_PRECISION}"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}"),
            (0.0 < self.ema_decay < 1.0, f"ema_decay must be in (0, 1), got {self.ema_decay}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (
                self.checkpoint_every >= 0 and self.validate_every >= 0,
                "checkpoint_every / validate_every must be >= 0",
            ),
            (self.interrupt_after is None or self.interrupt_after >= 1, "interrupt_after must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def check_manifest_and_weights(config) -> None:
    """Checks of a task config with ``manifest``, ``preset`` and ``pretrained`` fields: a manifest is
    given, and ``--preset sd`` has a Stable Diffusion folder. Raises ValueError."""
    if not config.manifest:
        raise ValueError("--manifest is required (a manifest written by prep)")
    if config.preset == "sd" and not config.pretrained:
        raise ValueError(
            "--preset sd needs --pretrained PATH (a local Stable Diffusion folder in diffusers layout)"
        )


def check_probabilities(config, names) -> None:
    """Raise ValueError naming the first of the fields `names` (e.g. dropout rates) not in [0, 1)."""
    for name in names:
        if not 0.0 <= getattr(config, name) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(config, name)}")


# ---------------------------------------------------------------------------------------------------
# argparse


def _base_type(tp):
    """int | None -> int; bool stays bool; tuple[str, ...] -> (str, 'many')."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return _base_type(args[0])
    if origin in (tuple, list):
        return (args[0] if args else str), "many"
    return tp, None


def add_config_arguments(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One ``--kebab-case`` option per field of dataclass `cls`; defaults are left unset (None) so
    `config_from_args` can tell given options from defaults."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} settings")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tp, many = _base_type(hints[f.name])
        if tp is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{help_text} (default: {default})")  # fmt: skip
        else:
            choices = f.metadata.get("choices")
            group.add_argument(flag, dest=f.name, type=tp, nargs="+" if many else None, default=None,
                               choices=choices, help=f"{help_text} (default: {default})")  # fmt: skip


def config_from_args(cls, args: argparse.Namespace, base: dict | None = None):
    """Build `cls` from `base` (e.g. a --config JSON) overridden by the options given on the command line."""
    values = dict(base or {})
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls.from_dict(values)
