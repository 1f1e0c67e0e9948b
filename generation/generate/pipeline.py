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
from dataclasses import fields

import numpy as np

from .outputs import output_paths, save_png, versions, weights_fingerprint, write_image_and_sidecar
from .requests import Request
from .settings import GenerateConfig


def load_pipeline(hand_model: str, body_model: str, settings: GenerateConfig, device: str | None = None):
    """The two-stage pipeline from two run folders, on the settings' device (else `device`, this
    process's under ``accelerate launch``, else cuda when available) and dtype."""
    import torch

    from manifests.settings import torch_dtype

    from ..models.loading import dtype_argument
    from ..pipelines.two_stage import TwoStageHandBodyPipeline

    dtype = torch_dtype(settings.precision)  # a name -> dtype table: the setting may come from a sidecar
    device = settings.device or device or ("cuda" if torch.cuda.is_available() else "cpu")
    # float32 is the default: only ask for another dtype, which keeps older and newer diffusers quiet.
    load = {} if dtype == torch.float32 else dtype_argument(dtype)
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


def hand_prompts_for(request: Request, settings: GenerateConfig) -> list[str]:
    from prep import hand_caption

    if settings.hand_prompt is not None:
        return [settings.hand_prompt] * len(request.spec.hands)
    if request.hand_prompts is not None and settings.gesture is None:
        return list(request.hand_prompts)
    return [hand_caption(settings.gesture, h.handedness) for h in request.spec.hands]


# Keywords of the full call that the sidecar keeps elsewhere (its spec) rather than under "call".
FULL_CALL_ONLY = (
    "hands",
    "handedness",
    "body_keypoints",
    "body_format",
    "width",
    "height",
    "output_type",
    "return_masks",
)


def call_arguments(request: Request, settings: GenerateConfig) -> dict:
    """The exact keyword arguments of the pipeline call: every setting that names the argument it feeds
    (``call=`` in `GenerateConfig`), then the prompts, seed, blending and stage-1 steps, which fall
    back on the request's."""
    spec = request.spec
    kwargs = {
        f.metadata["call"]: getattr(settings, f.name) for f in fields(settings) if f.metadata.get("call")
    }
    kwargs.update(
        prompt=spec.prompt if settings.prompt is None else settings.prompt,
        negative_prompt=spec.negative_prompt
        if settings.negative_prompt is None
        else settings.negative_prompt,
        hand_prompt=hand_prompts_for(request, settings),
        hand_num_inference_steps=settings.steps if settings.hand_steps is None else settings.hand_steps,
        blend=settings.blend_config(),
        seed=int(spec.seed if settings.seed is None else settings.seed),
    )
    return kwargs


def kept_share_record(hand_indices, kept_shares) -> dict:
    """{request hand index (str): [share of its mask pixels kept at each step]} for the sidecar."""
    shares = np.asarray(kept_shares, np.float64)
    return {str(i): [round(float(v), 4) for v in shares[:, k]] for k, i in enumerate(hand_indices)}


def detect_for_overview(image: np.ndarray, annotator) -> tuple:
    hands, body = annotator.detect(image)
    note = f"found {len(hands)} hands" + (" + body" if body is not None else "")
    return (None if body is None else body.keypoints, [h.keypoints for h in hands], note)


def generate_one(
    pipe,
    request: Request,
    settings: GenerateConfig,
    out_dir: str,
    models: dict,
    annotator=None,
    process: dict | None = None,
) -> dict:
    """Run the pipeline for one request and write its files; returns the sidecar dict. `process`
    (``process_index``, ``num_processes``) says which of the launched processes drew it."""
    settings.validate()
    output_paths(out_dir, request.name)  # refuses an unsafe name before any work
    kwargs = full_call(request, settings)
    out = pipe(**kwargs)
    return write_outputs(pipe, request, settings, out, kwargs, out_dir, models, annotator, process)


def full_call(request: Request, settings: GenerateConfig) -> dict:
    """`call_arguments` plus the request's pose and size: every keyword of the pipeline call."""
    spec = request.spec
    return {
        "hands": [h.keypoints for h in spec.hands],
        "handedness": [h.handedness for h in spec.hands],
        "body_keypoints": spec.body,
        "body_format": spec.body_format or "mediapipe33",
        "width": spec.width,
        "height": spec.height,
        "output_type": "np",
        "return_masks": True,
        **call_arguments(request, settings),
    }


def generate_group(
    pipe,
    requests: list[Request],
    settings: GenerateConfig,
    out_dir: str,
    models: dict,
    annotator=None,
    process: dict | None = None,
) -> list[dict]:
    """Requests of one output size drawn through stage 2 as one batch (`call_batch`), each written as
    `generate_one` writes it; their sidecars."""
    settings.validate()
    for request in requests:
        output_paths(out_dir, request.name)
    calls = [full_call(r, settings) for r in requests]
    keys = pipe.REQUEST_ARGUMENTS
    shared = {k: v for k, v in calls[0].items() if k not in keys}
    outs = pipe.call_batch([{k: c[k] for k in keys if k in c} for c in calls], **shared)
    return [
        write_outputs(pipe, r, settings, out, c, out_dir, models, annotator, process, batch=len(requests))
        for r, out, c in zip(requests, outs, calls)
    ]


def write_outputs(
    pipe,
    request: Request,
    settings: GenerateConfig,
    out,
    kwargs: dict,
    out_dir: str,
    models: dict,
    annotator=None,
    process: dict | None = None,
    batch: int = 1,
) -> dict:
    """Write one request's image, stage-1 files, overview and sidecar from the pipeline's output."""
    spec = request.spec
    name = request.name
    paths = output_paths(out_dir, name)
    kwargs = {k: v for k, v in kwargs.items() if k not in FULL_CALL_ONLY}
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
        "call": {**kwargs, "blend": kwargs["blend"].to_dict()},
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
        "stage2_batch": batch,
        **(process or {"process_index": 0, "num_processes": 1}),
        "precision": settings.precision,
        "versions": versions(),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_image_and_sidecar(paths, image, sidecar)
    return sidecar
