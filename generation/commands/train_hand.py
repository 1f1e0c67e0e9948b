"""`handfirst-gen train-hand`: every option is a `HandTrainConfig` field (see its help)."""

from __future__ import annotations

from ..training.hand_config import HandTrainConfig
from . import add_training_arguments, run_training

HELP = (
    "Train the stage-1 hand generator (UNet with heatmap input channels and a mask head) from a manifest's "
    "hands table. The run folder gets metrics.jsonl, config.json, checkpoints/, validation/ and, at the end, "
    "the pipeline (HandGenerationPipeline.from_pretrained(RUN))."
)


def add_arguments(parser) -> None:
    add_training_arguments(parser, HandTrainConfig)


def run(args) -> int:
    from ..training.hand import train_hand

    return run_training("train-hand", HandTrainConfig, args, train_hand)
