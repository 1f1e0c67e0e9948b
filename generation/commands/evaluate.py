"""`handfirst-gen evaluate`: argparse layer over `generation.evaluate.evaluate` and `compare`.

handfirst-gen evaluate --manifest OUT --generated GEN|real --out report/ [--inception PATH] [--clip PATH] [--label NAME]
handfirst-gen evaluate --compare r1/report.json r2/report.json ... --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os

from manifests.dispatch import fail
from manifests.errors import ManifestError
from manifests.matching import MatchConfig
from manifests.settings import UsageError, add_config_option, read_settings_file
from manifests.settings import add_arguments as add_settings
from manifests.settings import from_args as settings_from_args

from ..evaluate.run import EvalConfig

HELP = (
    "Score generated images against a test manifest: hand and body pose accuracy (a --detector, prep's MediaPipe "
    "annotator by default; Hungarian matching, PCK, mean error, OKS AP), hand-detection confidence, the gap between "
    "hand and body wrists, FID/KID and hand-crop FID-H/KID-H with local Inception weights, CLIP score with a local "
    "CLIP model. --generated real scores the manifest's own photos (the sanity row). --compare renders several "
    "report.json side by side."
)


def _detect_setting(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE parsed as JSON when it parses (numbers, true/false, null), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except ValueError:
        return key.replace("-", "_"), value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", help="test manifest: target poses, captions and real images")
    parser.add_argument(
        "--generated", help="folder of generated <image_id>.png, or 'real' to score the manifest's own images"
    )
    parser.add_argument(
        "--out", required=True, help="output folder (report.json, report.md, per_image.jsonl; compare.md)"
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="REPORT",
        help="render these report.json files (or their folders) side by side into --out",
    )
    parser.add_argument("--title", help="heading of the --compare table")
    parser.add_argument("--json", action="store_true", help="print report.json instead of the Markdown table")
    add_config_option(parser, EvalConfig)
    add_settings(parser, EvalConfig, title="evaluation settings")
    parser.add_argument(
        "--gate",
        type=float,
        default=MatchConfig.gate,
        help="max mean keypoint distance of a match, in target box sizes (default %(default)s)",
    )
    parser.add_argument(
        "--detect",
        action="append",
        type=_detect_setting,
        default=[],
        metavar="KEY=VALUE",
        help="override a prep detection setting, e.g. --detect min_detection_confidence=0.3 "
        "(default: the settings the manifest was made with)",
    )


def _quiet_dask() -> None:
    """Keep distributed's cluster start/stop INFO lines out of the output (its import sets their levels)."""
    import distributed  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(logging.WARNING)


# What a bad input raises: a missing or damaged manifest, a missing folder or weights file, a setting
# prep does not know, a report that is not one. Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ManifestError, ValueError, OSError)


def run(args: argparse.Namespace) -> int:
    """Run the command; a bad input is printed as ``handfirst-gen evaluate: error: ...`` with exit code 1
    (2 for a setting or a usage error)."""
    try:
        return _run(args)
    except EXPECTED_ERRORS as exc:
        return fail(args.program, exc)


def _run(args: argparse.Namespace) -> int:
    from ..evaluate import compare, evaluate

    if args.compare:
        if args.manifest or args.generated:
            raise UsageError(
                "--compare renders existing reports; do not combine it with --manifest/--generated"
            )
        result = compare(args.compare, args.out, title=args.title)
        print(result["markdown"])
        print(f"wrote {args.out}/compare.md, compare.json" + (", compare.png" if result["picture"] else ""))
        return 0
    if not args.manifest or not args.generated:
        raise UsageError("give --manifest and --generated (a folder or 'real'), or --compare REPORT ...")
    config = settings_from_args(EvalConfig, args, read_settings_file(args.config) if args.config else None)
    detection = dict(args.detect) if args.detect else dict(config.detection or {})
    config = dataclasses.replace(config, detection=detection, match=MatchConfig(gate=args.gate))
    if config.workers > 1 or config.scheduler:
        _quiet_dask()
    report = evaluate(args.manifest, args.generated, args.out, config)
    if args.json:
        print(json.dumps(report, indent=2, default=float))
    else:
        with open(f"{args.out}/report.md", encoding="utf-8") as f:
            print(f.read())
        picture = ", report.png" if os.path.isfile(os.path.join(args.out, "report.png")) else ""
        print(f"wrote {args.out}/report.json, report.md, per_image.jsonl{picture}")
    return 0
