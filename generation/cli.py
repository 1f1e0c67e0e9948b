"""`handfirst-gen` / `python -m generation`: thin argparse layers over the generation API.

Each subcommand is a module in `generation.commands` with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; it is imported only when chosen, so ``--help`` stays fast (`manifests.dispatch`,
as for `handfirst-prep` and `handfirst-manifests`, with the same ``--version``, ``-q``/``-v`` and exit
codes; ``--log-level`` is kept as another way to say ``-q``/``-v``/``-vv``). Adding a subcommand is one line in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys

from manifests.dispatch import build_parser as build_command_parser
from manifests.dispatch import configure_logging, dispatch, program_name, verbosity

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
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="every logger at this level (DEBUG is -vv, INFO -v, WARNING -q)",
    )


LOG_LEVELS = {"DEBUG": 2, "INFO": 1, "WARNING": -1, "ERROR": -1}


# The subcommands that load diffusers models ("Loading pipeline components..." bars below -v).
DIFFUSERS_COMMANDS = (
    "train-vae",
    "train-hand",
    "sample-hand",
    "train-body",
    "sample-body",
    "generate",
    "baseline",
)


def _configure(args: argparse.Namespace, own_process: bool) -> None:
    """Logging at -q/-v/--log-level (`manifests.dispatch.configure_logging`); below -v, no diffusers
    loading bars and, in a process of its own, none of MediaPipe's native log lines."""
    from prep.native_logs import ENV_FLAG, filter_native_stderr

    level = LOG_LEVELS[args.log_level] if args.log_level else verbosity(args)
    configure_logging(level, ("generation", "prep", "manifests"))
    if level >= 1:
        os.environ[ENV_FLAG] = "1"
        return
    if args.command in DIFFUSERS_COMMANDS:  # it imports diffusers anyway; transformers reads the environment
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    if own_process:  # tests and notebooks keep their stderr
        filter_native_stderr()


def build_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    return build_command_parser(PROG, COMMANDS, name, _common)


def main(argv=None) -> int:
    """The command line's exit code. Called without `argv` (the console script, ``python -m``) it owns
    the process, and filters MediaPipe's native log lines from its stderr."""
    own_process = argv is None
    try:
        return dispatch(
            program_name(PROG, "generation"),
            COMMANDS,
            argv,
            _common,
            lambda args: _configure(args, own_process),
        )
    finally:
        if own_process and "prep.native_logs" in sys.modules:
            sys.modules["prep.native_logs"].restore_native_stderr()


if __name__ == "__main__":
    raise SystemExit(main())
