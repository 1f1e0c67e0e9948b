"""`handfirst-gen sample-hand`: hand crops plus masks from keypoints, with a trained run folder."""

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
class SampleHandConfig(Settings):
    """Every sampling setting of `handfirst-gen sample-hand` (one CLI option each)."""

    RENAMED = {"fp16": OLD_PRECISION_NAMES["fp16"]}

    prompt: str = setting("a hand", "caption for every pose")
    negative_prompt: str | None = setting(None, "negative caption")
    steps: int = setting(30, "denoising steps", ge=1, le=1000)
    guidance_scale: float = setting(7.5, "text guidance (1 disables it)", ge=0, le=100)
    pose_guidance_scale: float = setting(1.0, "pose guidance (1 disables it)", ge=0, le=100)
    num_images_per_pose: int = setting(1, "samples per pose", ge=1, le=256)
    size: int | None = setting(None, "crop side in pixels (default: the training size)", ge=8)
    mask_threshold: float = setting(0.5, "mask probability above which a pixel is hand", ge=0, le=1)
    seed: int = setting(0, "random seed", ge=0, le=MAX_SEED)
    device: str | None = setting(None, "cuda / cpu / mps (default: cuda if available)")
    precision: str = precision_setting()
    save_probabilities: bool = setting(False, "also write hand_NNN_mask_prob.png")
    max_pixels: int = setting_like(GenerateConfig, "max_pixels")
    max_pixel_steps: int = setting_like(GenerateConfig, "max_pixel_steps")


HELP = (
    "Draw hand crops and their masks with a trained hand generator. --keypoints is a JSON file holding "
    "21 [x, y] pairs in crop pixels, or a list of such lists (one hand per entry). Writes DIR/hand_000.png "
    "and DIR/hand_000_mask.png per image."
)


class PoseFileError(ValueError):
    """pose.json is not 21 [x, y] pairs or a list of such lists."""


def _is_point(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def load_poses(path: str, num_keypoints: int = 21):
    """pose.json -> (B, 21, 3) float64 [x, y, score] array; errors name the file and the offending entry."""
    import numpy as np

    from manifests.pose import KeypointError, keypoint_array

    from ..spec import read_json_file

    data = read_json_file(path, PoseFileError, "keypoints")
    if isinstance(data, dict) and "keypoints" in data:
        data = data["keypoints"]
    if not isinstance(data, list) or not data:
        raise PoseFileError(
            f"{path}: expected a list of {num_keypoints} [x, y] pairs or a list of such lists"
        )
    # One pose is a list of [x, y] number pairs; anything else at the top is a list of poses.
    poses = [data] if _is_point(data[0]) else data
    out = []
    for i, pose in enumerate(poses):
        try:  # the one keypoint check; [x, y] poses get score 1, so [x, y] and [x, y, score] files mix
            out.append(keypoint_array(pose, num_keypoints, f"{path}: pose {i}"))
        except KeypointError as exc:
            raise PoseFileError(str(exc)) from None
    return np.stack(out)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model", required=True, help="run folder of train-hand (or any saved HandGenerationPipeline)"
    )
    parser.add_argument(
        "--keypoints", required=True, help="pose.json: 21 [x, y] crop pixels, or a list of such lists"
    )
    parser.add_argument("--out", required=True, help="output folder for hand_NNN.png and hand_NNN_mask.png")
    add_config_option(parser, SampleHandConfig)
    add_settings(parser, SampleHandConfig, title="sampling settings")


def run(args) -> int:
    import torch

    from manifests.dispatch import fail
    from manifests.settings import from_args, read_settings_file, torch_dtype

    from ..models.loading import ModelFolderError, dtype_argument
    from ..pipelines.hand import HandGenerationPipeline

    try:
        base = read_settings_file(args.config) if args.config else None
        settings = from_args(SampleHandConfig, args, base).validate()
        poses = load_poses(args.keypoints)
        device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = HandGenerationPipeline.from_pretrained(
            args.model, **dtype_argument(torch_dtype(settings.precision))
        ).to(device)
        out = pipe(
            settings.prompt,
            keypoints=poses,
            size=settings.size,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            pose_guidance_scale=settings.pose_guidance_scale,
            negative_prompt=settings.negative_prompt,
            num_images_per_prompt=settings.num_images_per_pose,
            seed=settings.seed,
            mask_threshold=settings.mask_threshold,
            output_type="pil",
            max_pixels=settings.max_pixels,
            max_pixel_steps=settings.max_pixel_steps,
        )
    except (PoseFileError, ModelFolderError, ValueError) as exc:
        return fail(args.program, exc)
    os.makedirs(args.out, exist_ok=True)
    for i, (image, mask, prob) in enumerate(zip(out.images, out.masks_binary, out.masks)):
        stem = os.path.join(args.out, f"hand_{i:03d}")
        image.save(stem + ".png")
        mask.save(stem + "_mask.png")
        if settings.save_probabilities:
            prob.save(stem + "_mask_prob.png")
    print(f"wrote {len(out.images)} hand(s) and mask(s) to {args.out}")
    return 0
