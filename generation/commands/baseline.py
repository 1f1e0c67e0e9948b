"""`handfirst-gen baseline`: one-stage baselines for the rows `generate --from-manifest` takes."""

from __future__ import annotations

HELP = (
    "Draw a one-stage baseline for exactly the manifest rows generate --from-manifest draws (same split, limit, "
    "size, seeds and file names), so evaluate --compare lines it up image by image: controlnet-openpose "
    "(StableDiffusionControlNetPipeline with a local OpenPose ControlNet on OpenPose-full conditions: body "
    "and hand skeletons) or sd (the prompt alone). Writes DIR/<image_id>.png, .json and _condition.png."
)


def add_arguments(parser) -> None:
    from manifests.settings import add_arguments as add_settings
    from manifests.settings import add_config_option

    from ..baseline import BaselineConfig
    from ..selection import DEFAULT_SPLIT

    parser.add_argument("--from-manifest", required=True, metavar="DIR", help="manifest root written by prep")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--image-id", nargs="+", metavar="ID", help="image id(s) (default: every ok row of --split)"
    )
    parser.add_argument(
        "--split",
        default=DEFAULT_SPLIT,
        help="as generate --from-manifest: auto = test, or every row without splits; all = every split",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="the first N selected rows (as generate --limit N)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved settings, rows, model sizes and estimated memory, and exit without writing",
    )
    add_config_option(parser, BaselineConfig)
    add_settings(parser, BaselineConfig, title="baseline settings")


def run(args) -> int:
    from manifests.dispatch import fail
    from manifests.settings import from_args, read_settings_file

    from ..baseline import BaselineConfig, run_baseline
    from ..generate import RequestError
    from ..models.loading import ModelFolderError

    try:
        base = read_settings_file(args.config) if args.config else None
        settings = from_args(BaselineConfig, args, base).validate()
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        if args.dry_run:
            from ..dry_run import baseline_plan

            print(baseline_plan(settings, args.from_manifest, args.image_id, args.split, args.limit))
            return 0
        result = run_baseline(
            args.from_manifest,
            args.out,
            settings,
            args.image_id,
            args.split,
            args.limit,
            progress=not args.no_progress,
        )
    except (ModelFolderError, RequestError, ValueError, OSError) as exc:
        return fail(args.program, exc)
    print(
        f"{settings.method}: wrote {len(result['written'])} image(s), skipped {len(result['skipped'])} "
        f"already done, in {args.out}"
    )
    return 0
