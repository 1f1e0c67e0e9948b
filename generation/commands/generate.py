"""`handfirst-gen generate`: people whose hands follow given poses, with the two-stage pipeline.

Sources (exactly one): ``--spec FILE...`` (pose spec JSON, see `generation.spec`), ``--from-manifest
DIR [--image-id ID...]`` (a manifest row's poses; without ids the ``ok`` rows of ``--split`` in manifest
order, selected by `generation.selection` as `handfirst-gen evaluate` selects them, written as
``<image_id>.png`` for it), ``--from-image PHOTO...`` (poses detected by prep's
detectors) or ``--replay SIDECAR...`` (redo an earlier image exactly).

This file only parses the arguments: the batch's rules (one source, safe and distinct names, resume,
``failures.jsonl``, a replay's models) are `generation.generate.generate_batch`'s.
"""

from __future__ import annotations

import sys

HELP = (
    "Generate images with the two-stage pipeline (stage-1 hands, stage-2 body outpainting with sequential "
    "mask expansion). Writes DIR/<name>.png at the requested size, DIR/<name>.json (sidecar: every setting, "
    "seed, model folders and versions), DIR/<name>_overview.png and DIR/<name>_stage1/ (hands and masks)."
)


def add_arguments(parser) -> None:
    from manifests.settings import add_arguments, add_config_option

    from ..generate import GenerateConfig
    from ..selection import DEFAULT_SPLIT

    src = parser.add_argument_group("what to generate (one of)")
    src.add_argument("--spec", nargs="+", metavar="FILE", help="pose spec JSON file(s); <name> = file stem")
    src.add_argument("--from-manifest", metavar="DIR", help="manifest root written by handfirst-prep")
    src.add_argument("--from-image", nargs="+", metavar="PHOTO", help="photo(s) to take the poses from")
    src.add_argument(
        "--replay", nargs="+", metavar="SIDECAR", help="sidecar JSON(s) of earlier images to redo"
    )
    man = parser.add_argument_group("--from-manifest options")
    man.add_argument(
        "--image-id", nargs="+", metavar="ID", help="image id(s) (default: every ok row of --split)"
    )
    man.add_argument(
        "--split",
        default=DEFAULT_SPLIT,
        help="split to take without --image-id: auto = test, or every row when the manifest has no splits; "
        "all = every split (default: %(default)s)",
    )
    man.add_argument(
        "--limit",
        type=int,
        default=None,
        help="the first N selected rows in manifest order (evaluate --limit N scores the same N)",
    )
    parser.add_argument("--hand-model", help="train-hand run folder (or saved HandGenerationPipeline)")
    parser.add_argument("--body-model", help="train-body run folder (or saved BodyOutpaintPipeline)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved settings, rows, model sizes and estimated memory, and exit without writing",
    )
    add_config_option(parser, GenerateConfig)
    add_arguments(parser, GenerateConfig)


def run(args) -> int:
    from manifests.dispatch import fail
    from manifests.settings import UsageError, from_args

    from ..generate import GenerateConfig, Sources, generate_batch, settings_base

    def report(name: str, exc: Exception) -> None:
        print(f"{args.program}: {name}: {exc}", file=sys.stderr)

    try:
        sources = Sources.from_args(args)
        settings = from_args(GenerateConfig, args, settings_base(args.config, args.replay))
        if args.dry_run:
            from ..dry_run import generate_plan

            if not args.hand_model or not args.body_model:
                raise UsageError("--hand-model and --body-model are required")
            print(generate_plan(sources, args.hand_model, args.body_model, settings))
            return 0
        result = generate_batch(
            sources, args.out, args.hand_model, args.body_model, settings, on_failure=report
        )
    except (ValueError, OSError) as exc:  # settings, model folders, specs, manifest rows, names, sidecars
        return fail(args.program, exc)  # exit 2 for a usage or setting error, 1 for the rest
    tail = f", {len(result.failures)} failed (listed in {result.failures_path})" if result.failures else ""
    skipped = len(result.skipped)
    print(
        f"generated {len(result.written)} image(s) in {args.out}"
        + (f", {skipped} already there" if skipped else "")
        + tail
    )
    return 1 if result.failures else 0
