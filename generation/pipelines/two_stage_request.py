"""One request of the two-stage pipeline up to stage 2: its arguments resolved from a pose spec and
checked, its hands placed, drawn by the hand generator a batch of hands at a time (stage 1), pasted into
the stage-2 canvas, and the stage-2 condition drawn from it."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ..guards import (
    DEFAULT_HAND_BATCH,
    DEFAULT_MAX_HANDS,
    DEFAULT_MAX_PIXEL_STEPS,
    DEFAULT_MAX_PIXELS,
)
from .hand import keypoints_to_heatmaps
from .placing import PlacedHand, fix_masks, paste_hands
from .two_stage_batch import Drawn
from .two_stage_inputs import (
    as_blend_config,
    hand_prompts,
    request_arrays,
    request_generators,
    resolve_spec,
    work_size,
)


def prepare_request(
    pipe,
    prompt=None,
    hands=None,
    handedness=None,
    body_keypoints=None,
    body_format: str = "mediapipe33",
    width=None,
    height=None,
    spec=None,
    negative_prompt=None,
    hand_prompt=None,
    hand_negative_prompt=None,
    num_inference_steps: int = 30,
    hand_num_inference_steps=None,
    guidance_scale: float = 7.5,
    hand_guidance_scale=None,
    pose_guidance_scale: float = 1.0,
    mask_threshold: float = 0.5,
    blend=None,
    feather: int = 3,
    small_hands: str = "skip",
    min_hand_size: float = 16.0,
    mask_fallback: str = "skeleton",
    min_mask_coverage: float = 0.5,
    overlap_order: str = "larger_on_top",
    hand_encoding: str = "windows",
    seed=None,
    generator=None,
    output_type: str = "pil",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_pixel_steps: int = DEFAULT_MAX_PIXEL_STEPS,
    max_hands: int = DEFAULT_MAX_HANDS,
    hand_batch_size: int = DEFAULT_HAND_BATCH,
) -> Drawn:
    """One request of `pipe` (a `TwoStageHandBodyPipeline`; the arguments of its `__call__` that shape
    one request) up to stage 2: inputs checked, its hands drawn (stage 1), pasted, and the stage-2
    condition built; the `Drawn` state `paint_bodies` and `finish` take."""
    t_start = time.perf_counter()
    if spec is not None:
        given = {"width": width, "height": height, "body_keypoints": body_keypoints, "hands": hands}
        given.update(handedness=handedness, prompt=prompt, negative_prompt=negative_prompt)
        width, height, body_keypoints, hands, handedness, prompt, negative_prompt = resolve_spec(
            spec, **given
        ).values()
        body_format = spec.body_format or body_format
        seed = spec.seed if seed is None and generator is None else seed
    hands, blend = list(hands or []), as_blend_config(blend)
    hand_steps = num_inference_steps if hand_num_inference_steps is None else hand_num_inference_steps
    pipe.check_inputs(
        width=width,
        height=height,
        hands=hands,
        handedness=handedness,
        body_keypoints=body_keypoints,
        body_format=body_format,
        hand_prompts=hand_prompt,
        blend=blend,
        output_type=output_type,
        num_inference_steps=num_inference_steps,
        hand_num_inference_steps=hand_steps,
        small_hands=small_hands,
        min_hand_size=min_hand_size,
        overlap_order=overlap_order,
        feather=feather,
        hand_encoding=hand_encoding,
        mask_fallback=mask_fallback,
        min_mask_coverage=min_mask_coverage,
        seed=seed,
        generator=generator,
        max_pixels=max_pixels,
        max_pixel_steps=max_pixel_steps,
        max_hands=max_hands,
        hand_batch_size=hand_batch_size,
    )
    hands, handedness, body_keypoints = request_arrays(hands, handedness, body_keypoints, body_format)
    hand_generator, body_generator = request_generators(seed, generator)
    work_h, work_w = work_size(width, height, pipe.size_multiple)

    # Stage 1: a crop box per hand, the hands drawn `hand_batch_size` at a time, masks that miss their
    # hand replaced.
    prompts = hand_prompts(hand_prompt, handedness)
    placed, skipped = pipe.place_hands(
        hands, handedness, prompts, pipe.hand_crop_size, min_hand_size, small_hands
    )
    t0 = time.perf_counter()
    hand_images, hand_masks = pipe.draw_hands(
        placed,
        num_inference_steps=hand_steps,
        guidance_scale=guidance_scale if hand_guidance_scale is None else hand_guidance_scale,
        pose_guidance_scale=pose_guidance_scale,
        negative_prompt=hand_negative_prompt,
        generator=hand_generator,
        mask_threshold=mask_threshold,
        batch_size=hand_batch_size,
        max_pixels=max_pixels,
        max_pixel_steps=max_pixel_steps,
    )
    mask_sources = fix_masks(placed, hand_masks, mask_fallback, min_mask_coverage)
    t_stage1 = time.perf_counter() - t0

    # The hands pasted into the (work-size) canvas, and the stage-2 condition drawn from it.
    canvas, hand_mask, paste_order, labels = paste_hands(
        placed, hand_images, hand_masks, (work_h, work_w), overlap_order, labels=True
    )
    condition = pipe.build_condition(
        body_keypoints, body_format, canvas, hand_mask, [p.keypoints for p in placed]
    )
    return Drawn(
        prompt=prompt or "",
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        work_size=(work_h, work_w),
        generator=body_generator,
        blend=blend,
        hand_encoding=hand_encoding,
        placed=placed,
        skipped=skipped,
        hand_images=hand_images,
        hand_masks=hand_masks,
        mask_sources=mask_sources,
        canvas=canvas,
        hand_mask=hand_mask,
        labels=labels,
        paste_order=paste_order,
        condition=condition,
        timings={"start": t_start, "stage1": t_stage1},
    )


def draw_hands(
    pipe,
    placed: Sequence[PlacedHand],
    *,
    num_inference_steps: int,
    guidance_scale: float,
    pose_guidance_scale: float,
    negative_prompt: str | None,
    generator,
    mask_threshold: float,
    max_pixels: int,
    max_pixel_steps: int,
    batch_size: int = DEFAULT_HAND_BATCH,
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1 of `pipe` (a `TwoStageHandBodyPipeline`) over the placed hands, `batch_size` at a time (up
    to that many, the images of one batch): (N, S, S, 3) uint8 crops and (N, S, S) bool masks."""
    crop_size = pipe.hand_crop_size
    images = [np.zeros((0, crop_size, crop_size, 3), np.uint8)]
    masks = [np.zeros((0, crop_size, crop_size), bool)]
    for start in range(0, len(placed), batch_size):
        chunk = placed[start : start + batch_size]
        heatmaps = keypoints_to_heatmaps(
            np.stack([p.crop_keypoints for p in chunk]),
            crop_size,
            crop_size // pipe.hand_pipeline.vae_scale_factor,
            pipe.hand_unet.config.heatmap_sigma,
            pipe.hand_unet.config.num_keypoints,
        )
        stage1 = pipe.hand_pipeline(
            [p.prompt for p in chunk],
            heatmaps=heatmaps,
            size=crop_size,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            pose_guidance_scale=pose_guidance_scale,
            negative_prompt=[negative_prompt or ""] * len(chunk),
            generator=generator,
            output_type="np",
            mask_threshold=mask_threshold,
            max_pixels=max_pixels,
            max_pixel_steps=max_pixel_steps,
        )
        images.append((np.clip(stage1.images, 0, 1) * 255).round().astype(np.uint8))
        masks.append(np.asarray(stage1.masks_binary, bool))
    return np.concatenate(images), np.concatenate(masks)
