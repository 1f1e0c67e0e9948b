"""`handfirst-gen train-body`: every option is a `BodyTrainConfig` field (see its help)."""

from __future__ import annotations

import json
import sys

from ..training.body_config import BodyTrainConfig
from ..training.config import add_config_arguments, config_from_args

HELP = (
    "Train the stage-2 body outpainter (a ControlNet on a frozen Stable Diffusion UNet, conditioned on the body "
    "skeleton, the hand pixels and the hand mask) from a manifest's images and hands. The run folder gets "
    "metrics.jsonl, config.json, checkpoints/, validation/ and, at the end, the pipeline "
    "(BodyOutpaintPipeline.from_pretrained(RUN))."
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--config", help="JSON file of BodyTrainConfig settings; command-line options override it"
    )
    add_config_arguments(parser, BodyTrainConfig)


def run(args) -> int:
    from ..components import ModelFolderError
    from ..training.body_task import train_body
    from ..training.errors import TrainingError

    base = None
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            base = json.load(f)
        base = base.get("config", base)  # a run's config.json works too
    try:
        config = config_from_args(BodyTrainConfig, args, base)
        result = train_body(config)
    except (TrainingError, ModelFolderError, ValueError, FileNotFoundError) as exc:
        print(f"handfirst-gen train-body: error: {exc}", file=sys.stderr)
        return 1
    state = "finished" if result.finished else "stopped (resume with --resume latest)"
    print(f"{state} at step {result.step}; final loss {result.final_loss}; run folder {result.run}")
    return 0
