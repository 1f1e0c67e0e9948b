"""`handfirst-prep` / `python -m prep`: a thin argparse layer over `prep.run`.

Every `run` option is generated from a PrepConfig field (`manifests.settings.add_arguments`): its name
(underscores become dashes), its default, its help, its choices; `PrepConfig.validate` checks the
values, so the CLI and the Python API cannot drift.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from manifests.settings import add_arguments, from_args

from .config import PrepConfig
from .native_logs import ENV_FLAG


def add_config_options(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, PrepConfig, title="run settings")


def config_from_args(args: argparse.Namespace) -> PrepConfig:
    return from_args(PrepConfig, args)


def format_summary(summary: dict) -> str:
    lines = [
        f"images      {summary['images']} this run ({summary['images_per_s']} images/s in {summary['seconds']} s)",
        f"hands       {summary['hands']}",
        f"status      {json.dumps(summary['status_counts'], sort_keys=True)}",
        f"shards      {summary['shards']['run']} run, {summary['shards']['skipped']} already complete, "
        f"{summary['shards']['failed']} failed"
        + (f", {len(summary['retried_shards'])} retried" if summary.get("retried_shards") else ""),
        f"manifest    {summary['out']}: {summary['manifest']['images']} images, {summary['manifest']['hands']} hands, "
        f"{json.dumps(summary['manifest']['status_counts'], sort_keys=True)}",
    ]
    if summary.get("stage_ms_per_image"):
        stages = ", ".join(f"{k} {v}" for k, v in summary["stage_ms_per_image"].items())
        lines.append(f"ms/image    {stages}")
    if summary.get("preview"):
        lines.append(f"preview     {summary['preview']}")
    for name, whys in summary.get("retried_shards", {}).items():
        lines.append(f"RETRIED     {name}: {'; '.join(whys)}")
    for name, why in summary.get("failed_shards", {}).items():
        lines.append(f"FAILED      {name}: {why}")
    return "\n".join(lines)


def _interrupted_message(out: str) -> str:
    from manifests.writer import ManifestWriter

    try:
        n = len(ManifestWriter(out).done_shards())
        kept = f"{n} completed shard{'' if n == 1 else 's'} in {out} {'is' if n == 1 else 'are'} kept"
    except Exception:  # noqa: BLE001 - the message must come out even if the output cannot be listed
        kept = f"the completed shards in {out} are kept"
    return f"handfirst-prep: interrupted: {kept}; rerun the same command to resume"


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import SETUP_ERRORS, run

    config = config_from_args(args)
    try:
        summary = run(config)
    except SETUP_ERRORS as exc:
        # One line: some library messages (torch's unpickler) span a paragraph.
        print(f"handfirst-prep: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted_message(config.out), file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    if summary["failed_shards"]:
        print("some shards failed; rerun the same command to redo them", file=sys.stderr)
        return 1
    return 0


COMMANDS = {"run": (cmd_run, "Annotate a dataset into Parquet manifests (resumable).", add_config_options)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="handfirst-prep", description="handfirst annotation pipeline: photos -> Parquet manifests."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text, add_options) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
        )
        add_options(p)
        p.add_argument("--json", action="store_true", help="Print the summary as JSON.")
        p.add_argument(
            "-v", "--verbose", action="count", default=0, help="More log output (-v info, -vv debug)."
        )
    return parser


def quiet_dask(level: int) -> None:
    """Set the level of distributed's loggers (importing it first: its import sets their levels)."""
    import distributed  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("prep").setLevel(min(level, logging.INFO))  # the dashboard address and shard plan
    quiet_dask(logging.DEBUG if args.verbose >= 2 else logging.WARNING)
    if args.verbose >= 2:  # debugging: let MediaPipe's native log lines through (prep.native_logs)
        os.environ[ENV_FLAG] = "1"
    return COMMANDS[args.command][0](args)


if __name__ == "__main__":
    raise SystemExit(main())
