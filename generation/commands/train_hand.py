"""`handfirst-gen train-hand`: every option is a `HandTrainConfig` field (see its help)."""

from __future__ import annotations

import json
import os
import sys

from ..training.config import add_config_arguments, config_from_args
from ..training.hand_config import HandTrainConfig

HELP = (
    "Train the stage-1 hand generator (UNet with heatmap input channels and a mask head) from a manifest's "
    "hands table. The run folder gets metrics.jsonl, config.json, checkpoints/, validation/ and, at the end, "
    "the pipeline (HandGenerationPipeline.from_pretrained(RUN))."
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--config", help="JSON file of HandTrainConfig settings; command-line options override it"
    )
    add_config_arguments(parser, HandTrainConfig)


def run(args) -> int:
    from ..components import ModelFolderError
    from ..training.errors import TrainingError
    from ..training.hand import train_hand

    base = None
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            base = json.load(f)
        base = base.get("config", base)  # a run's config.json works too
    try:
        config = config_from_args(HandTrainConfig, args, base)
        result = train_hand(config)
    except (TrainingError, ModelFolderError, ValueError, FileNotFoundError) as exc:
        print(f"handfirst-gen train-hand: error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # one summary line per run, not per process
    state = "finished" if result.finished else "stopped (resume with --resume latest)"
    print(f"{state} at step {result.step}; final loss {result.final_loss}; run folder {result.run}")
    return 0
