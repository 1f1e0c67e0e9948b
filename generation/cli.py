"""`handfirst-gen` / `python -m generation`: thin argparse layers over the generation API.

Each subcommand is a module in `generation.commands` with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; it is imported only when chosen, so ``--help`` stays fast. Adding a subcommand
is one line in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

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


def _overview() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in COMMANDS.items()]
    return (
        "usage: handfirst-gen COMMAND [options]\n\ncommands:\n"
        + "\n".join(lines)
        + ("\n\n`handfirst-gen COMMAND --help` lists a command's options.")
    )


def build_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    module = import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"handfirst-gen {name}", description=module.HELP)
    parser.add_argument("--log-level", default="INFO", help="logging level")
    module.add_arguments(parser)
    return parser, module


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_overview())
        return 0
    if argv[0] not in COMMANDS:
        print(f"handfirst-gen: unknown command {argv[0]!r}\n\n{_overview()}", file=sys.stderr)
        return 2
    parser, module = build_parser(argv[0])
    args = parser.parse_args(argv[1:])
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
