"""The two-stage pipeline for one request: loading it from two run folders, the exact call arguments,
and `generate_one`, which runs it and writes the request's files.

Per request named NAME, `generate_one` writes into the output folder:

- ``NAME.png``: the image, at the request's width x height;
- ``NAME.json``: the sidecar, with the exact request (pose in output pixels, prompts, seed), every
  setting, the model folders and their fingerprints, what the pipeline did (hands generated, skipped,
  paste order, mask sources, timings) and library versions. ``--replay NAME.json`` redoes it;
- ``NAME_overview.png``: target skeleton, stage-1 hands, blending masks over time, final image with the
  pose detected in it;
- ``NAME_stage1/``: ``hand{i}.png`` and ``hand{i}_mask.png`` per generated hand (i = the hand's index
  in the request), plus ``canvas.png`` / ``canvas_mask.png``, the hands pasted into the output frame,
  and (with blending) ``keep.png``, the last step's keep weight K at image resolution (0-255), which
  ``evaluate``'s ``hands.fidelity`` reads.

The sidecar's ``result.kept_share`` lists, per generated hand and stage-2 step, the share of the hand's
mask pixels the keep weights kept (empty without blending); the overview prints the first and last.
"""

from __future__ import annotations

import datetime
import os

import numpy as np

from .outputs import output_paths, save_png, versions, weights_fingerprint, write_image_and_sidecar
from .requests import Request
from .settings import DTYPES, GenerateSettings


def load_pipeline(hand_model: str, body_model: str, settings: GenerateSettings):
    """The two-stage pipeline from two run folders, on the settings' device and dtype."""
    import torch

    from ..pipelines.two_stage import TwoStageHandBodyPipeline

    # A name -> dtype table, not getattr(torch, ...): the setting may come from a replayed sidecar.
    dtypes = {name: getattr(torch, name) for name in DTYPES}
    if settings.dtype not in dtypes:
        raise ValueError(f"dtype: {settings.dtype!r} is not one of {', '.join(DTYPES)}")
    dtype = dtypes[settings.dtype]
    device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
    # float32 is the default: only ask for another dtype, which keeps older and newer diffusers quiet.
    load = {} if dtype == torch.float32 else {"torch_dtype": dtype}
    pipe = TwoStageHandBodyPipeline.from_runs(
        hand_model, body_model, crop_margin=settings.crop_margin, **load
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def model_record(pipe, hand_model: str, body_model: str) -> dict:
    return {
        "hand": {"path": os.path.abspath(hand_model), "fingerprint": weights_fingerprint(hand_model)},
        "body": {"path": os.path.abspath(body_model), "fingerprint": weights_fingerprint(body_model)},
        "crop_margin": pipe.config.crop_margin,
        "hand_crop_size": pipe.hand_crop_size,
        "body_size_multiple": pipe.size_multiple,
    }


def body_resolution(pipe) -> int:
    """The body model's training size in pixels (its UNet's sample size x the VAE factor)."""
    return int(pipe.unet.config.sample_size) * pipe.vae_scale_factor


def hand_prompts_for(request: Request, settings: GenerateSettings) -> list[str]:
    from prep import hand_caption

    if settings.hand_prompt is not None:
        return [settings.hand_prompt] * len(request.spec.hands)
    if request.hand_prompts is not None and settings.gesture is None:
        return list(request.hand_prompts)
    return [hand_caption(settings.gesture, h.handedness) for h in request.spec.hands]


def call_arguments(request: Request, settings: GenerateSettings) -> dict:
    """The exact keyword arguments of the pipeline call (recorded in the sidecar)."""
    spec = request.spec
    seed = settings.seed if settings.seed is not None else spec.seed
    return {
        "prompt": settings.prompt if settings.prompt is not None else spec.prompt,
        "negative_prompt": settings.negative_prompt
        if settings.negative_prompt is not None
        else spec.negative_prompt,
        "hand_prompt": hand_prompts_for(request, settings),
        "num_inference_steps": settings.steps,
        "hand_num_inference_steps": settings.steps if settings.hand_steps is None else settings.hand_steps,
        "guidance_scale": settings.guidance_scale,
        "hand_guidance_scale": settings.hand_guidance_scale,
        "pose_guidance_scale": settings.pose_guidance_scale,
        "controlnet_conditioning_scale": settings.conditioning_scale,
        "uncond_condition": settings.uncond_condition,
        "mask_threshold": settings.mask_threshold,
        "blend": settings.blend_config().to_dict(),
        "pixel_composite": settings.pixel_composite,
        "feather": settings.feather,
        "small_hands": settings.small_hands,
        "min_hand_size": settings.min_hand_size,
        "mask_fallback": settings.mask_fallback,
        "min_mask_coverage": settings.min_mask_coverage,
        "overlap_order": settings.overlap_order,
        "hand_encoding": settings.hand_encoding,
        "seed": int(seed),
        "max_pixels": settings.max_pixels,
        "max_pixel_steps": settings.max_pixel_steps,
    }


def kept_share_record(hand_indices, kept_shares) -> dict:
    """{request hand index (str): [share of its mask pixels kept at each step]} for the sidecar."""
    shares = np.asarray(kept_shares, np.float64)
    return {str(i): [round(float(v), 4) for v in shares[:, k]] for k, i in enumerate(hand_indices)}


def detect_for_overview(image: np.ndarray, annotator) -> tuple:
    hands, body = annotator.detect(image)
    note = f"found {len(hands)} hands" + (" + body" if body is not None else "")
    return (None if body is None else body.keypoints, [h.keypoints for h in hands], note)


def generate_one(
    pipe, request: Request, settings: GenerateSettings, out_dir: str, models: dict, annotator=None
) -> dict:
    """Run the pipeline for one request and write its files; returns the sidecar dict."""
    spec = request.spec
    name = request.name
    settings.validate()
    paths = output_paths(out_dir, name)  # refuses an unsafe name before any work
    kwargs = call_arguments(request, settings)
    out = pipe(
        hands=[h.keypoints for h in spec.hands],
        handedness=[h.handedness for h in spec.hands],
        body_keypoints=spec.body,
        body_format=spec.body_format or "mediapipe33",
        width=spec.width,
        height=spec.height,
        output_type="np",
        return_masks=True,
        **kwargs,
    )
    image = (out.images[0] * 255).round().astype(np.uint8)
    os.makedirs(out_dir, exist_ok=True)
    stage1 = paths["stage1"]
    os.makedirs(stage1, exist_ok=True)
    for idx, img, mask in zip(out.hand_indices, out.hand_images, out.hand_masks):
        save_png(img, os.path.join(stage1, f"hand{idx}.png"))
        save_png(mask.astype(np.uint8) * 255, os.path.join(stage1, f"hand{idx}_mask.png"))
    save_png(out.hand_canvas, os.path.join(stage1, "canvas.png"))
    save_png(out.hand_mask.astype(np.uint8) * 255, os.path.join(stage1, "canvas_mask.png"))
    if out.keep_weight is not None:
        save_png(
            (np.clip(out.keep_weight, 0, 1) * 255).round().astype(np.uint8), os.path.join(stage1, "keep.png")
        )
    shares = {} if out.kept_shares is None else kept_share_record(out.hand_indices, out.kept_shares)

    from ..overview import overview_sheet

    detected = detect_for_overview(image, annotator) if annotator is not None else None
    captions = [
        f"hand {i} {spec.hands[i].handedness[0].upper()} ({src})"
        for i, src in zip(out.hand_indices, out.mask_sources)
    ]
    sheet = overview_sheet(
        spec.width,
        spec.height,
        spec.body,
        spec.body_format,
        [h.keypoints for h in spec.hands],
        out.hand_images,
        out.hand_masks,
        captions,
        out.hand_canvas,
        out.hand_mask,
        out.keep_masks,
        image,
        detected,
        kept_shares=out.kept_shares,
    )
    save_png(sheet, paths["overview"])

    sidecar = {
        "name": name,
        "image": f"{name}.png",
        "width": spec.width,
        "height": spec.height,
        "source": request.source,
        "spec": spec.to_dict(),
        "hand_prompts": request.hand_prompts,
        "settings": settings.to_dict(),
        "call": kwargs,
        "models": models,
        "result": {
            "hand_indices": out.hand_indices,
            "paste_order": out.paste_order,
            "skipped_hands": out.skipped_hands,
            "mask_sources": out.mask_sources,
            "hand_boxes": [b.box for b in out.hand_boxes],
            "hand_mask_pixels": int(out.hand_mask.sum()),
            "kept_share": shares,
            "timings": {k: round(v, 4) for k, v in out.timings.items()},
            "detected": None if detected is None else detected[2],
        },
        "files": {
            "overview": f"{name}_overview.png",
            "stage1": f"{name}_stage1/",
        },
        "device": str(pipe.device),
        "dtype": settings.dtype,
        "versions": versions(),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_image_and_sidecar(paths, image, sidecar)
    return sidecar
