"""`handfirst-gen` / `python -m generation`: thin argparse layers over the generation API.

Each subcommand is a module in `generation.commands` with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; it is imported only when chosen, so ``--help`` stays fast (`manifests.dispatch`,
as for `handfirst-prep` and `handfirst-manifests`). Adding a subcommand is one line in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging

from manifests.dispatch import build_parser as build_command_parser
from manifests.dispatch import dispatch

PROG = "handfirst-gen"

# subcommand -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train-vae": (
        "generation.commands.train_vae",
        "train an autoencoder from scratch on a manifest; writes an SD folder for --pretrained",
    ),
    "train-hand": ("generation.commands.train_hand", "train the stage-1 hand generator from a manifest"),
    "sample-hand": (
        "generation.commands.sample_hand",
        "draw hand crops and masks from keypoints with a trained model",
    ),
    "train-body": (
        "generation.commands.train_body",
        "train the stage-2 body outpainter (ControlNet) from a manifest",
    ),
    "sample-body": (
        "generation.commands.sample_body",
        "paint the body around a manifest image's hands with a trained outpainter",
    ),
    "generate": (
        "generation.commands.generate",
        "people whose hands follow given poses: two-stage generation from a spec, a manifest row or a photo",
    ),
    "baseline": (
        "generation.commands.baseline",
        "one-stage baselines (ControlNet OpenPose-full, plain SD) for the rows generate --from-manifest takes",
    ),
    "evaluate": (
        "generation.commands.evaluate",
        "score generated (or real) images against a manifest: pose accuracy, FID/KID, CLIP; --compare reports",
    ),
}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", help="logging level")


def _configure(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def build_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    return build_command_parser(PROG, COMMANDS, name, _common)


def main(argv=None) -> int:
    return dispatch(PROG, COMMANDS, argv, _common, _configure)


if __name__ == "__main__":
    raise SystemExit(main())
