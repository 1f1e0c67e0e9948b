"""`handfirst-gen sample-body`: regenerate manifest images around their own hands with a trained outpainter."""

from __future__ import annotations

import os
import sys

from . import add_cost_arguments

HELP = (
    "Paint the person around the hands of manifest images with a trained body outpainter (stage 2 alone): "
    "the body pose, hand pixels and hand mask come from the manifest row, through the training transform. "
    "Writes DIR/<image_id>.png and DIR/<image_id>_condition.png per image."
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model", required=True, help="run folder of train-body (or any saved BodyOutpaintPipeline)"
    )
    parser.add_argument("--manifest", required=True, help="manifest root written by prep")
    parser.add_argument("--image-id", required=True, nargs="+", help="image_id(s) of the images table")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--resolution", type=int, default=None, help="square side (default: the training resolution)"
    )
    parser.add_argument("--prompt", default=None, help="caption (default: the manifest's)")
    parser.add_argument("--negative-prompt", default=None, help="negative caption")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (default: %(default)s)")
    parser.add_argument(
        "--guidance-scale", type=float, default=7.5, help="text guidance (1 disables) (default: %(default)s)"
    )
    parser.add_argument(
        "--conditioning-scale",
        type=float,
        default=1.0,
        help="ControlNet residual scale (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cuda / cpu / mps (default: cuda if available)")
    parser.add_argument("--fp16", action="store_true", help="load in float16 (GPU)")
    add_cost_arguments(parser)


def _training_resolution(model: str) -> int | None:
    import json

    path = os.path.join(model, "config.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f).get("config", {})
        from ..training.body_config import PRESET_RESOLUTION

        return cfg.get("resolution") or PRESET_RESOLUTION.get(cfg.get("preset"))
    return None


def run(args) -> int:
    import torch
    from PIL import Image

    from manifests.draw import contact_sheet
    from manifests.errors import ManifestError
    from manifests.names import path_in

    from ..components import ModelFolderError
    from ..condition import ConditionInputs, condition_tiles
    from ..guards import check_image_cost, make_generator
    from ..pipeline_body import BodyOutpaintPipeline, manifest_inputs

    try:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if args.fp16 else torch.float32
        pipe = BodyOutpaintPipeline.from_pretrained(args.model, dtype=dtype).to(device)
        resolution = args.resolution
        if resolution is None:  # 0 is an error below, not the default
            resolution = _training_resolution(args.model) or 512
        if resolution < 1:
            raise ValueError(f"--resolution must be >= 1, got {resolution}")
        # Before any manifest image is drawn at that size.
        check_image_cost(resolution, resolution, args.steps, args.max_pixels, args.max_pixel_steps)
        generator = make_generator(args.seed)
        os.makedirs(args.out, exist_ok=True)
        for image_id in args.image_id:
            image_path = path_in(args.out, image_id, ".png", "image_id")  # never a path outside --out
            inputs = manifest_inputs(args.manifest, image_id, resolution)
            prompt = inputs["prompt"] if args.prompt is None else args.prompt
            drawn = ConditionInputs(
                inputs["body_keypoints"],
                inputs["hand_image"],
                inputs["hand_mask"],
                inputs["hand_keypoints"],
                "mediapipe33",
                image_id,
            )
            condition = pipe.prepare_condition([drawn])
            out = pipe(
                prompt,
                condition=condition,
                negative_prompt=args.negative_prompt,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance_scale,
                controlnet_conditioning_scale=args.conditioning_scale,
                generator=generator.manual_seed(args.seed),
                output_type="pil",
                max_pixels=args.max_pixels,
                max_pixel_steps=args.max_pixel_steps,
            )
            out.images[0].save(image_path)
            sheet = contact_sheet(
                condition_tiles(condition[0], pipe.condition_config), columns=3, tile=resolution
            )
            Image.fromarray(sheet).save(path_in(args.out, image_id, "_condition.png", "image_id"))
            print(f"wrote {image_path}")
    except (ModelFolderError, ManifestError, ValueError) as exc:
        print(f"handfirst-gen sample-body: error: {exc}", file=sys.stderr)
        return 1
    return 0
