"""The known hand latents of stage 2: the pasted hand canvas encoded by the body VAE (per hand window
or whole), and the step hook that blends them into the stage-2 latents after every scheduler step
(``z <- K_i * noised(z_hands, t_next) + (1 - K_i) * z``, keep weights from `generation.pipelines.blending.KeepSchedule`)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from manifests.geometry import CropBox

from ..models.body import masked_image
from .blending import KeepSchedule, blend_latents


@torch.no_grad()
def encode_hands(
    body_pipeline,
    canvas: np.ndarray,
    mask: np.ndarray,
    boxes: Sequence[CropBox] | None = None,
    margin: int = 2,
) -> torch.Tensor:
    """`body_pipeline`'s VAE latents of the hand canvas (off-hand pixels grey, as an inpainting masked image):
    (1, C, H/f, W/f), scaled, from the posterior mode so they are deterministic.

    With `boxes` (the hands' crop boxes, in paste order) only a window around each hand is encoded,
    the box snapped out to the latent grid plus `margin` latent pixels, and its latents are placed at
    their spot (zeros elsewhere; a later hand's window wins where two overlap). The encoder's cost
    then follows the hands' area instead of the canvas'. Blending reads these latents only inside the
    keep weights, which lie within the hands grown by ``d0`` (a share of each hand's size), so `margin`
    must be at least that growth in latent pixels. Without `boxes` the whole canvas is encoded.
    """
    f, vae = body_pipeline.vae_scale_factor, body_pipeline.vae
    pixels = torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255.0
    image = masked_image(pixels, torch.from_numpy(mask)[None, None].float())
    if boxes is None:
        return body_pipeline.encode_image(image)
    h, w = mask.shape[0] // f, mask.shape[1] // f
    latents = torch.zeros((1, vae.config.latent_channels, h, w), dtype=vae.dtype, device=vae.device)
    for box in boxes:
        x0, y0, x1, y1 = box.box
        lx0, ly0 = max(0, int(np.floor(x0 / f)) - margin), max(0, int(np.floor(y0 / f)) - margin)
        lx1, ly1 = min(w, int(np.ceil(x1 / f)) + margin), min(h, int(np.ceil(y1 / f)) + margin)
        if lx1 > lx0 and ly1 > ly0:
            window = image[..., ly0 * f : ly1 * f, lx0 * f : lx1 * f]
            latents[..., ly0:ly1, lx0:lx1] = body_pipeline.encode_image(window)
    return latents


def blend_hook(
    scheduler,
    hand_latents: torch.Tensor,
    schedule: KeepSchedule,
    noise: torch.Tensor,
    record: dict | None = None,
    clock: dict | None = None,
):
    """The `BodyOutpaintPipeline.denoise` step hook over `scheduler` (the body pipeline's): ``z <- K_i * noised(z_hands, t_next) + (1 - K_i) * z``.

    `hand_latents` (1, 4, h, w) scaled latents, `schedule` the `KeepSchedule` giving K_i (1, 1, h, w)
    in [0, 1], `noise` the stage-2 initial noise. `record` collects each K_i (h, w) on the CPU
    ("keep") and each hand's kept share ("shares"); `clock["blend"]` accumulates the seconds spent here.
    """
    num_steps = schedule.num_steps

    def on_step_end(i: int, t, latents: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        keep = schedule.weights(i)
        if keep is not None:
            known = hand_latents.to(latents)
            if i + 1 < num_steps:
                t_next = scheduler.timesteps[i + 1 : i + 2]
                known = scheduler.add_noise(known, noise.to(latents), t_next)
            latents = blend_latents(latents, known, keep.to(latents))
        if record is not None:
            record["keep"].append(None if keep is None else keep[0, 0].float().cpu())
            record["shares"].append(schedule.kept_share(keep))
        if clock is not None:
            clock["blend"] = clock.get("blend", 0.0) + time.perf_counter() - t0
        return latents

    return on_step_end
