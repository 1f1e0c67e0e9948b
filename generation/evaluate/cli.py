"""`handfirst-gen evaluate`: argparse layer over `generation.evaluate.evaluate` and `compare`.

handfirst-gen evaluate --manifest OUT --generated GEN|real --out report/ [--inception PATH] [--clip PATH] [--label NAME]
handfirst-gen evaluate --compare r1/report.json r2/report.json ... --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from manifests.errors import ManifestError
from manifests.matching import MatchConfig

from .run import EvalConfig

HELP = (
    "Score generated images against a test manifest: hand and body pose accuracy (prep's detectors, Hungarian "
    "matching, PCK, mean error, OKS AP), FID/KID and hand-crop FID-H/KID-H with local Inception weights, CLIP score "
    "with a local CLIP model. --generated real scores the manifest's own photos (the sanity row). --compare renders "
    "several report.json side by side."
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
    d = EvalConfig()
    parser.add_argument("--manifest", help="test manifest: target poses, captions and real images")
    parser.add_argument(
        "--generated", help="folder of generated <image_id>.png, or 'real' to score the manifest's own images"
    )
    parser.add_argument(
        "--out", required=True, help="output folder (report.json, report.md, per_image.jsonl; compare.md)"
    )
    parser.add_argument("--compare", nargs="+", metavar="REPORT",
                        help="render these report.json files (or their folders) side by side into --out")  # fmt: skip
    parser.add_argument("--title", help="heading of the --compare table")
    parser.add_argument(
        "--label", help="row name in the table (default: 'real' or the generated folder's name)"
    )
    parser.add_argument(
        "--inception", help="local FID InceptionV3 weights (.pth); without it FID/KID are null"
    )
    parser.add_argument(
        "--clip", help="local CLIP model folder (CLIPModel.from_pretrained); without it CLIP score is null"
    )
    parser.add_argument("--split", default=d.split,
                        help="split to evaluate; all = every split (default: %(default)s, as generate --from-manifest)")  # fmt: skip
    parser.add_argument("--limit", type=int,
                        help="evaluate the first N selected images in manifest order (the N generate --limit N takes)")  # fmt: skip
    parser.add_argument("--include-no-hands", action="store_true",
                        help="also evaluate rows with status no_hands (default: status ok only)")  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=d.workers, help="detector processes; >1 starts a Dask LocalCluster"
    )
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler (tcp://host:8786)")
    parser.add_argument(
        "--device", default=d.device, help="torch device for Inception and CLIP (default %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="images per Inception/CLIP batch"
    )
    parser.add_argument("--gate", type=float, default=MatchConfig.gate,
                        help="max mean keypoint distance of a match, in target box sizes (default %(default)s)")  # fmt: skip
    parser.add_argument("--min-body-visibility", type=float, default=d.min_body_visibility,
                        help="target body keypoints below this visibility are not scored (default %(default)s)")  # fmt: skip
    parser.add_argument("--detect", action="append", type=_detect_setting, default=[], metavar="KEY=VALUE",
                        help="override a prep detection setting, e.g. --detect min_detection_confidence=0.3 "
                        "(default: the settings the manifest was made with)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of KID's random subsets")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print report.json instead of the Markdown table")


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
    """Run the command; a bad input is printed as ``handfirst-gen evaluate: error: ...`` with exit code 1."""
    try:
        return _run(args)
    except EXPECTED_ERRORS as exc:
        print(f"handfirst-gen evaluate: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from . import compare, evaluate

    if args.compare:
        if args.manifest or args.generated:
            raise SystemExit(
                "evaluate: --compare renders existing reports; do not combine it with --manifest/--generated"
            )
        result = compare(args.compare, args.out, title=args.title)
        print(result["markdown"])
        print(f"wrote {args.out}/compare.md and compare.json")
        return 0
    if not args.manifest or not args.generated:
        raise SystemExit(
            "evaluate: give --manifest and --generated (a folder or 'real'), or --compare REPORT ..."
        )
    if args.workers > 1 or args.scheduler:
        _quiet_dask()
    config = EvalConfig(
        label=args.label, split=args.split, limit=args.limit, include_no_hands=args.include_no_hands, detection=dict(args.detect), workers=args.workers,
        scheduler=args.scheduler, match=MatchConfig(gate=args.gate), min_body_visibility=args.min_body_visibility,
        inception=args.inception, clip=args.clip, batch_size=args.batch_size, device=args.device, seed=args.seed,
        progress=not args.no_progress,
    )  # fmt: skip
    report = evaluate(args.manifest, args.generated, args.out, config)
    if args.json:
        print(json.dumps(report, indent=2, default=float))
    else:
        with open(f"{args.out}/report.md", encoding="utf-8") as f:
            print(f.read())
        print(f"wrote {args.out}/report.json, report.md, per_image.jsonl")
    return 0
