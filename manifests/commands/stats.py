"""`handfirst-manifests stats`: counts and distributions of a manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..settings import Settings, from_args, setting
from ..settings import add_arguments as add_settings

HELP = "counts by status, label, split, handedness; hand size and score distributions"


@dataclass
class StatsConfig(Settings):
    json: bool = setting(False, "print JSON instead of tables")
    plot: str | None = setting(
        None, "also write this PNG: hand size, mask score, handedness and label charts (default: none)"
    )


def add_arguments(parser) -> None:
    parser.add_argument("path", help="manifest root or table directory; local or URL")
    add_settings(parser, StatsConfig, title="stats settings")


def run(args) -> int:
    from ..stats import format_stats, manifest_stats

    settings = from_args(StatsConfig, args).validate()
    stats = manifest_stats(args.path)
    print(
        json.dumps(stats, indent=2) if settings.json else format_stats(stats),
        end="\n" if settings.json else "",
    )
    if settings.plot:
        from ..plots import manifest_overview, save_figure

        save_figure(manifest_overview(args.path), settings.plot)
        if not settings.json:
            print(f"wrote {settings.plot}")
    return 0
