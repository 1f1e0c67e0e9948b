"""`handfirst-prep run`: annotate a dataset into Parquet manifests (resumable).

Every option is generated from a PrepConfig field (`manifests.settings.add_arguments`): its name
(underscores become dashes), its default, its help, its choices; `PrepConfig.validate` checks the
values, so the CLI and the Python API cannot drift.
"""

from __future__ import annotations

import argparse
import json
import sys

from manifests.dispatch import EXIT_FAILED, EXIT_INTERRUPTED, fail
from manifests.settings import add_arguments as add_settings
from manifests.settings import add_config_option, from_args, read_settings_file

from ..config import PrepConfig

HELP = "Annotate a dataset into Parquet manifests (resumable)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser, PrepConfig)
    add_settings(parser, PrepConfig, title="run settings")
    parser.add_argument("--json", action="store_true", help="Print the summary as JSON.")


def config_from_args(args: argparse.Namespace) -> PrepConfig:
    """`PrepConfig` from ``--config FILE`` (if given) overridden by the options given."""
    base = read_settings_file(args.config) if getattr(args, "config", None) else None
    return from_args(PrepConfig, args, base)


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


def run(args: argparse.Namespace) -> int:
    from manifests.settings import SettingError

    from ..runner import SETUP_ERRORS
    from ..runner import run as run_prep

    try:
        config = config_from_args(args)
    except SettingError as exc:
        print(f"handfirst-prep: error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run_prep(config)
    except SETUP_ERRORS as exc:
        return fail("handfirst-prep", exc)  # exit 2 for a setting, 1 for an input or cluster it cannot use
    except KeyboardInterrupt:
        print(_interrupted_message(config.out), file=sys.stderr)
        return EXIT_INTERRUPTED
    print(json.dumps(summary, indent=2, default=str) if args.json else format_summary(summary))
    if summary["failed_shards"]:
        print("some shards failed; rerun the same command to redo them", file=sys.stderr)
        return EXIT_FAILED
    return 0
