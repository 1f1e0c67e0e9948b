"""`handfirst-manifests validate`: check a manifest against the contract."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from ..settings import Settings, from_args, setting
from ..settings import add_arguments as add_settings

HELP = "check a manifest against the contract (exit 1 and list shard/row/reason on failure)"


@dataclass
class ValidateConfig(Settings):
    decode: bool = setting(True, "decode crops, masks, heatmaps and images (--no-decode skips them)")
    workers: int = setting(1, "processes for the decode pass", ge=1, le=4096)
    max_problems: int = setting(1000, "stop listing after this many problems", ge=1)
    json: bool = setting(False, "print the problems as a JSON list")


def add_arguments(parser) -> None:
    parser.add_argument(
        "path", help="manifest root (with images/ and hands/) or one table directory; local or URL"
    )
    add_settings(parser, ValidateConfig, title="validate settings")


def run(args) -> int:
    from ..validate import validate_manifest

    settings = from_args(ValidateConfig, args).validate()
    problems = validate_manifest(
        args.path, decode=settings.decode, workers=settings.workers, max_problems=settings.max_problems
    )
    if settings.json:
        print(json.dumps([p.to_dict() for p in problems], indent=2))
    else:
        for p in problems:
            print(p)
        print(f"{args.path}: {'valid' if not problems else f'{len(problems)} problem(s)'}", file=sys.stderr)
    return 1 if problems else 0
