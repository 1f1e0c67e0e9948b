"""`handfirst-gen train-body`: every option is a `BodyTrainConfig` field (see its help)."""

from __future__ import annotations

from ..training.body_config import BodyTrainConfig
from . import add_training_arguments, run_training

HELP = (
    "Train the stage-2 body outpainter (a ControlNet on a frozen Stable Diffusion UNet, conditioned on the body "
    "skeleton, the hand pixels and the hand mask) from a manifest's images and hands. The run folder gets "
    "metrics.jsonl, config.json, checkpoints/, validation/ and, at the end, the pipeline "
    "(BodyOutpaintPipeline.from_pretrained(RUN))."
)


def add_arguments(parser) -> None:
    add_training_arguments(parser, BodyTrainConfig)


def run(args) -> int:
    from ..training.body import train_body

    return run_training("train-body", BodyTrainConfig, args, train_body)
