"""Stage 2 of the two-stage pipeline over a batch of requests: each request's state between the stages
(`Drawn`), the keep schedule and blend hook each request builds from its own hands, and one batched
pass of the body outpainter that blends every request's known hand latents into its own slice, and
each request's `TwoStageOutput`."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from .blending import BlendConfig, KeepSchedule, upsample
from .hand_latents import blend_hook, encode_hands
from .two_stage_inputs import TwoStageOutput, format_images


@dataclass(eq=False)
class Drawn:
    """One request between the stages: what `prepare` made (hands, canvas, condition) and what
    `paint_bodies` adds (its final latents, keep weights and kept shares, blend clock). `labels` (work
    size, int32) says which pasted hand owns each pixel (its position in `placed`; -1: none)."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    work_size: tuple[int, int]
    generator: torch.Generator
    blend: BlendConfig
    hand_encoding: str
    placed: list
    skipped: list
    hand_images: np.ndarray
    hand_masks: np.ndarray
    mask_sources: list
    canvas: np.ndarray
    hand_mask: np.ndarray
    labels: np.ndarray
    paste_order: list
    condition: torch.Tensor
    timings: dict
    latents: torch.Tensor | None = None
    record: dict | None = None
    clock: dict = field(default_factory=lambda: {"blend": 0.0})


def request_hook(pipe, d: Drawn, num_inference_steps: int, latent_hw: tuple[int, int], noise: torch.Tensor):
    """The step hook that blends request `d`'s known hand latents into its slice, or None when blending
    is off or it pasted no hand. Its keep weights come from its own hands (`labels`); its hands' boxes
    in paste order are encoded per its `hand_encoding`."""
    boxes = [{p.index: p.box for p in d.placed}[i] for i in d.paste_order]
    if not (boxes and d.hand_mask.any() and d.blend.mode != "none"):
        if d.record is not None:
            d.record["keep"].extend([None] * num_inference_steps)
        return None
    windows = boxes if d.hand_encoding == "windows" else None
    schedule = KeepSchedule(d.labels, d.blend, num_inference_steps, latent_hw, num_hands=len(boxes))
    # The windows must hold every latent pixel a keep-mask touches: the hands grown by d0.
    grow = d.blend.d0 * float(schedule.regions.sizes.max()) if d.blend.mode == "sequential" else 0.0
    margin = 1 + math.ceil(grow / pipe.vae_scale_factor)
    hand_latents = encode_hands(pipe.body_pipeline, d.canvas, d.hand_mask, windows, margin=margin)
    return blend_hook(pipe.body_pipeline.scheduler, hand_latents, schedule, noise, d.record, d.clock)


def paint_bodies(
    pipe, drawn: Sequence[Drawn], *, num_inference_steps: int, return_masks: bool = False, **body_kwargs
) -> None:
    """Stage 2 of `pipe` (a `TwoStageHandBodyPipeline`) for requests of one work size, as one batch; each
    `Drawn` gets its final latents (1, C, h, w), its record (``record``: each step's keep weights under
    "keep", None when not blending, and each hand's kept share under "shares") and its clock.

    Each request starts from its own generator's noise and has its own `request_hook` applied to its own
    slice of the batch after every step."""
    t0 = time.perf_counter()
    work_h, work_w = drawn[0].work_size
    latent_hw = (work_h // pipe.vae_scale_factor, work_w // pipe.vae_scale_factor)
    device = pipe._execution_device
    hooks, noises = [], []
    for d in drawn:
        noise = randn_tensor(
            (1, pipe.vae.config.latent_channels, *latent_hw),
            generator=d.generator,
            device=device,
            dtype=pipe.unet.dtype,
        )
        noises.append(noise)
        d.record = {"keep": [], "shares": []} if return_masks else None
        d.clock = {"blend": 0.0}
        hooks.append(request_hook(pipe, d, num_inference_steps, latent_hw, noise))

    def on_step_end(i: int, t, latents: torch.Tensor) -> torch.Tensor:
        parts = [
            hook(i, t, latents[k : k + 1]) if hook is not None else latents[k : k + 1]
            for k, hook in enumerate(hooks)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    single = len(drawn) == 1
    negatives = [d.negative_prompt or "" for d in drawn]
    latents = pipe.body_pipeline(
        drawn[0].prompt if single else [d.prompt for d in drawn],
        condition=torch.cat([d.condition for d in drawn]),
        height=work_h,
        width=work_w,
        num_inference_steps=num_inference_steps,
        negative_prompt=drawn[0].negative_prompt if single else negatives,
        generator=drawn[0].generator if single else [d.generator for d in drawn],
        latents=torch.cat(noises),
        output_type="latent",
        on_step_end=None if all(h is None for h in hooks) else on_step_end,
        **body_kwargs,
    ).images
    seconds = time.perf_counter() - t0
    for k, d in enumerate(drawn):
        d.latents = latents[k : k + 1]
        d.timings["stage2"] = seconds / len(drawn)


def request_output(
    drawn: Drawn,
    image: np.ndarray,
    canvas: np.ndarray,
    hand_mask: np.ndarray,
    t_decode: float,
    output_type: str,
) -> TwoStageOutput:
    """The `TwoStageOutput` of one painted request: its decoded (H, W, 3) `image` as `output_type`, the
    hand `canvas` and `hand_mask` cropped to its size, what stage 1 drew, and the keep weights and kept
    shares it recorded."""
    height, width = drawn.height, drawn.width
    images = format_images(image, output_type)
    record = drawn.record
    keeps = record["keep"] if record and record["keep"] and record["keep"][0] is not None else None
    return TwoStageOutput(
        images=images,
        hand_images=list(drawn.hand_images),
        hand_masks=list(drawn.hand_masks),
        hand_canvas=canvas,
        hand_mask=hand_mask,
        hand_boxes=[p.box for p in drawn.placed],
        hand_indices=[p.index for p in drawn.placed],
        paste_order=drawn.paste_order,
        skipped_hands=drawn.skipped,
        mask_sources=drawn.mask_sources,
        keep_masks=torch.stack(keeps) if keeps else None,
        kept_shares=np.stack(record["shares"]).astype(np.float32) if keeps else None,
        keep_weight=upsample(keeps[-1], drawn.work_size)[:height, :width] if keeps else None,
        latents=drawn.latents,
        timings={
            "stage1": drawn.timings["stage1"],
            "stage2": drawn.timings["stage2"],
            "blend": drawn.clock["blend"],
            "decode": t_decode,
            "total": time.perf_counter() - drawn.timings["start"],
        },
    )
