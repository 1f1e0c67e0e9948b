"""`handfirst-gen sample-body`: regenerate manifest images around their own hands with a trained outpainter."""

from __future__ import annotations

import os
from dataclasses import dataclass

from manifests.settings import (
    OLD_PRECISION_NAMES,
    Settings,
    add_config_option,
    precision_setting,
    setting,
    setting_like,
)
from manifests.settings import add_arguments as add_settings

from ..generate.settings import GenerateConfig
from ..guards import MAX_SEED


@dataclass
class SampleBodyConfig(Settings):
    """Every sampling setting of `handfirst-gen sample-body` (one CLI option each)."""

    RENAMED = {"fp16": OLD_PRECISION_NAMES["fp16"]}

    resolution: int | None = setting(None, "square side (default: the training resolution)", ge=8)
    prompt: str | None = setting(None, "caption (default: the manifest's)")
    negative_prompt: str | None = setting(None, "negative caption")
    steps: int = setting(30, "denoising steps", ge=1, le=1000)
    guidance_scale: float = setting(7.5, "text guidance (1 disables it)", ge=0, le=100)
    conditioning_scale: float = setting(1.0, "ControlNet residual scale", ge=0, le=10)
    seed: int = setting(0, "random seed", ge=0, le=MAX_SEED)
    device: str | None = setting(None, "cuda / cpu / mps (default: cuda if available)")
    precision: str = precision_setting()
    max_pixels: int = setting_like(GenerateConfig, "max_pixels")
    max_pixel_steps: int = setting_like(GenerateConfig, "max_pixel_steps")


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
    add_config_option(parser, SampleBodyConfig)
    add_settings(parser, SampleBodyConfig, title="sampling settings")


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

    from manifests.dispatch import fail
    from manifests.draw import contact_sheet
    from manifests.errors import ManifestError
    from manifests.names import path_in
    from manifests.settings import from_args, read_settings_file, torch_dtype

    from ..guards import check_image_cost, make_generator
    from ..models.loading import ModelFolderError, dtype_argument
    from ..pipelines.body import BodyOutpaintPipeline
    from ..pipelines.body_inputs import manifest_inputs
    from ..pipelines.condition import ConditionInputs, condition_tiles

    try:
        base = read_settings_file(args.config) if args.config else None
        settings = from_args(SampleBodyConfig, args, base).validate()
        device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = BodyOutpaintPipeline.from_pretrained(
            args.model, **dtype_argument(torch_dtype(settings.precision))
        ).to(device)
        resolution = settings.resolution
        if resolution is None:  # 0 was refused by validate(), not taken as the default
            resolution = _training_resolution(args.model) or 512
        # Before any manifest image is drawn at that size.
        check_image_cost(
            resolution, resolution, settings.steps, settings.max_pixels, settings.max_pixel_steps
        )
        generator = make_generator(settings.seed)
        os.makedirs(args.out, exist_ok=True)
        for image_id in args.image_id:
            image_path = path_in(args.out, image_id, ".png", "image_id")  # never a path outside --out
            inputs = manifest_inputs(args.manifest, image_id, resolution)
            prompt = inputs["prompt"] if settings.prompt is None else settings.prompt
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
                negative_prompt=settings.negative_prompt,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                controlnet_conditioning_scale=settings.conditioning_scale,
                generator=generator.manual_seed(settings.seed),
                output_type="pil",
                max_pixels=settings.max_pixels,
                max_pixel_steps=settings.max_pixel_steps,
            )
            out.images[0].save(image_path)
            sheet = contact_sheet(
                condition_tiles(condition[0], pipe.condition_config), columns=3, tile=resolution
            )
            Image.fromarray(sheet).save(path_in(args.out, image_id, "_condition.png", "image_id"))
            print(f"wrote {image_path}")
    except (ModelFolderError, ManifestError, ValueError) as exc:
        return fail(args.program, exc)
    return 0
