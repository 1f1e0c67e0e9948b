"""Loss terms shared by the training tasks: the diffusion target and mask losses.

Shapes: latents / noise (B, C, h, w); timesteps (B,) int64; mask logits and targets (B, 1, h, w) with
targets in [0, 1] (soft targets from area-downsampled masks are fine).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# scheduler.config.prediction_type -> what the model is trained to output.
TARGETS: dict[str, Callable] = {
    "epsilon": lambda scheduler, latents, noise, t: noise,
    "v_prediction": lambda scheduler, latents, noise, t: scheduler.get_velocity(latents, noise, t),
    "sample": lambda scheduler, latents, noise, t: latents,
}


def diffusion_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The regression target for the scheduler's prediction type (epsilon, v_prediction or sample)."""
    kind = scheduler.config.prediction_type
    if kind not in TARGETS:
        raise ValueError(f"unsupported prediction_type {kind!r}; expected one of {sorted(TARGETS)}")
    return TARGETS[kind](scheduler, latents, noise, timesteps)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per sample, averaged over the batch."""
    prob = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + smooth) / (prob.sum(1) + target.sum(1) + smooth)).mean()


def _bce(logits, target):
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


MASK_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce": _bce,
    "bce+dice": lambda logits, target: _bce(logits, target) + dice_loss(logits, target),
}


def mask_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    if kind not in MASK_LOSSES:
        raise ValueError(f"unknown mask loss {kind!r}; expected one of {sorted(MASK_LOSSES)}")
    return MASK_LOSSES[kind](logits, target)


# Pixel terms of the autoencoder's reconstruction loss, (B, 3, H, W) in [-1, 1] -> scalar.
RECONSTRUCTION_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": lambda rec, target: F.mse_loss(rec.float(), target.float()),
    "l1": lambda rec, target: F.l1_loss(rec.float(), target.float()),
}


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel derivatives of (B, C, H, W) per channel along x and y, each (B, C, H, W). The border is
    replicated, so a flat image has no gradient anywhere (zero padding would invent edges at the frame)."""
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    c = x.shape[1]
    kx = sobel.expand(c, 1, 3, 3).to(x.dtype)
    ky = sobel.t().expand(c, 1, 3, 3).to(x.dtype)
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return F.conv2d(x, kx, groups=c), F.conv2d(x, ky, groups=c)


def edge_loss(rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance of the Sobel gradients of `rec` and `target` (B, C, H, W): penalises the blur
    that a pixel loss alone tolerates (a per-pixel loss is minimised by averaging plausible edges away)."""
    rx, ry = image_gradients(rec.float())
    tx, ty = image_gradients(target.float())
    return F.l1_loss(rx, tx) + F.l1_loss(ry, ty)


def reconstruction_loss(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if kind not in RECONSTRUCTION_LOSSES:
        raise ValueError(
            f"unknown reconstruction loss {kind!r}; expected one of {sorted(RECONSTRUCTION_LOSSES)}"
        )
    return RECONSTRUCTION_LOSSES[kind]
