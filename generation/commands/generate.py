"""`handfirst-gen generate`: people whose hands follow given poses, with the two-stage pipeline.

Sources (exactly one): ``--spec FILE...`` (pose spec JSON, see `generation.spec`), ``--from-manifest
DIR [--image-id ID...]`` (a manifest row's poses; without ids the ``ok`` rows of ``--split`` in manifest
order, selected by `generation.selection` as `handfirst-gen evaluate` selects them, written as
``<image_id>.png`` for it), ``--from-image PHOTO...`` (poses detected by prep's
detectors) or ``--replay SIDECAR...`` (redo an earlier image exactly). Images already written (PNG plus
sidecar) are skipped unless ``--overwrite``, so an interrupted batch resumes.

Every output name (spec or photo stem, ``image_id``, a replayed sidecar's ``name``) must be a safe file
name (`manifests.names`); an unsafe one stops the command before anything is generated, so nothing is
written outside ``--out``.
"""

from __future__ import annotations

import json
import os
import sys
import time

HELP = (
    "Generate images with the two-stage pipeline (stage-1 hands, stage-2 body outpainting with sequential "
    "mask expansion). Writes DIR/<name>.png at the requested size, DIR/<name>.json (sidecar: every setting, "
    "seed, model folders and versions), DIR/<name>_overview.png and DIR/<name>_stage1/ (hands and masks)."
)


def add_arguments(parser) -> None:
    from ..generate import GenerateSettings
    from ..selection import DEFAULT_SPLIT
    from ..training.config import add_config_arguments

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
    man.add_argument("--limit", type=int, default=None,
                     help="the first N selected rows in manifest order (evaluate --limit N scores the same N)")  # fmt: skip
    parser.add_argument("--hand-model", help="train-hand run folder (or saved HandGenerationPipeline)")
    parser.add_argument("--body-model", help="train-body run folder (or saved BodyOutpaintPipeline)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", help="JSON file of generate settings; command-line options override it")
    add_config_arguments(parser, GenerateSettings)


def _settings(args):
    from ..generate import GenerateSettings
    from ..training.config import config_from_args

    base = None
    if args.replay and not args.config:
        from ..generate import request_from_sidecar

        _, first, models = request_from_sidecar(args.replay[0])
        base = first.to_dict()
        base["crop_margin"] = models.get("crop_margin", base.get("crop_margin"))
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            base = json.load(f)
        base = base.get("settings", base)  # a sidecar works too
    return config_from_args(GenerateSettings, args, base)


def _requests(args, settings, pipe_size: int):
    """(requests, replays or None, failures): a photo in which nothing is detected is a failure of that
    photo only; every other problem with the inputs stops the command before anything is generated."""
    from ..generate import (
        RequestError,
        request_from_image,
        request_from_sidecar,
        requests_from_manifest,
        requests_from_specs,
    )

    seed = settings.seed if settings.seed is not None else 0
    if args.spec:
        return requests_from_specs(args.spec), None, []
    if args.from_manifest:
        from ..training.body_config import training_fit

        # Without --size, rows are drawn whole at the scale the body model was trained at, so hands are as
        # large as in its training crops (docs/fidelity.md, "Framing"); --size is the longer side.
        size = pipe_size if settings.size is None else settings.size
        fit = training_fit(args.body_model) if settings.size is None else None
        return (
            requests_from_manifest(
                args.from_manifest, args.image_id, size, args.split, args.limit, seed, fit
            ),
            None,
            [],
        )
    if args.from_image:
        from manifests.names import unsafe_name
        from prep.config import PrepConfig

        from ..evaluate.detect import get_detector

        stems = [os.path.splitext(os.path.basename(p))[0] for p in args.from_image]
        for path, stem in zip(args.from_image, stems):
            unsafe = unsafe_name(stem, "output name (the photo's file name)")
            if unsafe:
                raise RequestError(f"{path}: {unsafe}")
        clashes = sorted({s for s in stems if stems.count(s) > 1})
        if clashes:
            raise RequestError(
                f"several photos share the name(s) {clashes}; their outputs would overwrite each other"
            )
        detector = get_detector(PrepConfig())
        size = pipe_size if settings.size is None else settings.size
        requests, failures = [], []
        for path in args.from_image:
            try:
                requests.append(
                    request_from_image(path, size, seed, settings.prompt, settings.gesture, detector)
                )
            except RequestError as exc:
                if len(args.from_image) == 1:
                    raise
                name = os.path.splitext(os.path.basename(path))[0]
                failures.append({"name": name, "source": {"kind": "image", "path": path}, "error": str(exc)})
                print(f"handfirst-gen generate: {name}: {exc}", file=sys.stderr)
        return requests, None, failures
    replays = [request_from_sidecar(p) for p in args.replay]
    return [r for r, _, _ in replays], replays, []


def run(args) -> int:
    from tqdm.auto import tqdm

    from ..components import ModelFolderError
    from ..generate import RequestError, generate_one, is_done, load_pipeline, model_record
    from ..pipeline_two_stage import HandTooSmallError, ModelMismatchError
    from ..spec import SpecError

    prog = "handfirst-gen generate"
    sources = [bool(args.spec), bool(args.from_manifest), bool(args.from_image), bool(args.replay)]
    if sum(sources) != 1:
        print(
            f"{prog}: error: give exactly one of --spec, --from-manifest, --from-image, --replay",
            file=sys.stderr,
        )
        return 2
    if args.image_id and not args.from_manifest:
        print(f"{prog}: error: --image-id needs --from-manifest", file=sys.stderr)
        return 2
    try:
        settings = _settings(args)
        settings.validate()  # every setting in range before loading anything
        hand_model, body_model = args.hand_model, args.body_model
        if args.replay and not (hand_model and body_model):
            from ..generate import request_from_sidecar

            models = request_from_sidecar(args.replay[0])[2]
            hand_model, body_model = (
                hand_model or models["hand"]["path"],
                body_model or models["body"]["path"],
            )
        if not hand_model or not body_model:
            print(f"{prog}: error: --hand-model and --body-model are required", file=sys.stderr)
            return 2
        pipe = load_pipeline(hand_model, body_model, settings)
        from ..generate import body_resolution

        requests, replays, failures = _requests(args, settings, body_resolution(pipe))
    except (ModelFolderError, ModelMismatchError, SpecError, RequestError, ValueError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    models = model_record(pipe, hand_model, body_model)
    annotator = None
    if settings.detect:
        from prep.config import PrepConfig

        from ..evaluate.detect import get_detector

        annotator = get_detector(PrepConfig())

    os.makedirs(args.out, exist_ok=True)
    done = skipped = 0
    bar = tqdm(total=len(requests), desc="generate", unit="img", disable=len(requests) < 2)
    t0 = time.perf_counter()
    for k, request in enumerate(requests):
        item_settings = replays[k][1] if replays else settings
        if replays:
            item_settings.overwrite = True
        if not item_settings.overwrite and is_done(args.out, request.name):
            skipped += 1
        else:
            try:
                generate_one(pipe, request, item_settings, args.out, models, annotator)
                done += 1
            except (HandTooSmallError, SpecError, ValueError) as exc:
                failures.append(
                    {"name": request.name, "source": request.source, "error": f"{type(exc).__name__}: {exc}"}
                )
                print(f"{prog}: {request.name}: {exc}", file=sys.stderr)
        bar.update()
        elapsed = time.perf_counter() - t0
        bar.set_postfix(s_per_img=f"{elapsed / max(done, 1):.2f}", failed=len(failures))
    bar.close()
    if failures:
        with open(os.path.join(args.out, "failures.jsonl"), "a", encoding="utf-8") as f:
            for item in failures:
                f.write(json.dumps(item, default=str) + "\n")
    tail = (
        f", {len(failures)} failed (listed in {os.path.join(args.out, 'failures.jsonl')})" if failures else ""
    )
    print(
        f"generated {done} image(s) in {args.out}" + (f", {skipped} already there" if skipped else "") + tail
    )
    return 1 if failures else 0
