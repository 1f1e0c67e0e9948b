"""`python -m manifests` / `handfirst-manifests`: validate, stats and preview a manifest.

Subcommands live in the `COMMANDS` registry. An entry is either a `Command` or the dotted name of a
module exposing ``HELP`` (str), ``add_arguments(parser)`` and ``run(args) -> int``, imported only
when the parser is built; adding a subcommand is one line in the registry.

Exit codes: 0 success; 1 `validate` found problems; 2 the manifest could not be opened or read
(the message names the file).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .errors import ManifestError


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "path", help="manifest root (with images/ and hands/) or one table directory; local or URL"
    )
    p.add_argument("--no-decode", action="store_true", help="skip decoding crops, masks, heatmaps and images")
    p.add_argument("--workers", type=int, default=1, help="processes for the decode pass (default 1)")
    p.add_argument("--max-problems", type=int, default=1000, help="stop listing after this many problems")
    p.add_argument("--json", action="store_true", help="print the problems as a JSON list")


def _validate_run(args: argparse.Namespace) -> int:
    from .validate import validate_manifest

    problems = validate_manifest(
        args.path, decode=not args.no_decode, workers=args.workers, max_problems=args.max_problems
    )
    if args.json:
        print(json.dumps([p.to_dict() for p in problems], indent=2))
    else:
        for p in problems:
            print(p)
        print(f"{args.path}: {'valid' if not problems else f'{len(problems)} problem(s)'}", file=sys.stderr)
    return 1 if problems else 0


def _stats_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="manifest root or table directory; local or URL")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _stats_run(args: argparse.Namespace) -> int:
    from .stats import format_stats, manifest_stats

    stats = manifest_stats(args.path)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats), end="\n" if args.json else "")
    return 0


def _preview_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="manifest root or table directory; local or URL")
    p.add_argument("--out", required=True, help="PNG to write (path or URL)")
    p.add_argument("--n", type=int, default=24, help="hand crops to show (default 24)")
    p.add_argument("--images", type=int, default=4, help="full images to show (default 4)")
    p.add_argument("--seed", type=int, default=0, help="which row groups to sample")
    p.add_argument("--tile", type=int, default=160, help="hand tile size in pixels")


def _preview_run(args: argparse.Namespace) -> int:
    from .preview import make_preview

    sheet = make_preview(
        args.path, out=args.out, n=args.n, images=args.images, seed=args.seed, tile=args.tile
    )
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")
    return 0


COMMANDS: dict[str, Command | str] = {
    "validate": Command(
        "check a manifest against the contract (exit 1 and list shard/row/reason on failure)",
        _validate_args,
        _validate_run,
    ),
    "stats": Command(
        "counts by status, label, split, handedness; hand size and score distributions",
        _stats_args,
        _stats_run,
    ),
    "preview": Command(
        "contact sheet PNG of hand crops and full images with poses and masks", _preview_args, _preview_run
    ),
    "score": "manifests.score",
    "card": "manifests.card",
}


def resolve(entry: Command | str) -> Command:
    if isinstance(entry, Command):
        return entry
    module = importlib.import_module(entry)
    return Command(module.HELP, module.add_arguments, module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m manifests", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, entry in COMMANDS.items():
        cmd = resolve(entry)
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args._run(args) or 0)
    except (ManifestError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
