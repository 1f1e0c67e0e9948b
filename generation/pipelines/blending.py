"""Latent blending for the two-stage pipeline, including sequential mask expansion (the method).

After each denoising step the known hand latents, noised to the next timestep, are written back
into the current latents where the keep-mask ``K_i`` is set::

    z <- K_i * noised(z_hands, t_next) + (1 - K_i) * z

Modes (a registry, see `BLEND_MODES`):
- ``none``: never blend; stage 2 alone paints everything.
- ``fixed``: ``K_i`` is the hand mask at every step (the naive baseline).
- ``sequential``: ``K_i`` starts as the hand mask dilated by ``d0`` latent pixels and is eroded by
  ``expand_pixels`` in total, linearly over the steps between ``expand_start`` and ``expand_end``
  (fractions of the schedule), then stays fixed. The body region thus grows into the hand's border
  step by step, repainting the seam while the inside of the hand keeps the stage-1 details.

The erosion is in absolute latent pixels (8 image pixels each for Stable Diffusion's VAE), so on its
own it would erase any hand at most ``2 * (expand_pixels - d0)`` latent pixels wide (6 with the
defaults: hands under ~48 image px), and stage 2 would then repaint the whole hand. ``min_core``
prevents that, region by region: each connected region of the dilated mask (8-connectivity; hands that
touch form one region) is eroded by at most its own inner radius minus ``min_core``, so it always keeps
a core of at least ``2 * min_core - 1`` latent pixels square (a region smaller than that is not eroded
at all). A region whose inner radius is at least ``expand_pixels + min_core`` is eroded by exactly
``expand_pixels``, as without the cap.

Units: the *depth* of a mask pixel is its Chebyshev distance to the nearest pixel outside the mask
(1 on the rim; pixels beyond the image border count as inside, as in `erode`); a region's *inner
radius* is the largest depth in it. Eroding by ``p`` keeps exactly the pixels of depth > ``p``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .blend_config import BlendConfig


def dilate(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grey dilation of a (B, 1, H, W) mask in [0, 1] by a (2p+1)^2 square."""
    if pixels <= 0:
        return mask
    return F.max_pool2d(mask, 2 * pixels + 1, stride=1, padding=pixels)


def erode(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grey erosion of a (B, 1, H, W) mask in [0, 1]; nested: erode(m, p + 1) <= erode(m, p)."""
    if pixels <= 0:
        return mask
    return -F.max_pool2d(-mask, 2 * pixels + 1, stride=1, padding=pixels)


def erosion_at(step: int, num_steps: int, cfg: BlendConfig) -> int:
    """Latent pixels eroded at step `step` (0-based) of `num_steps`: 0 before the window, then a linear
    ramp that reaches exactly `cfg.expand_pixels` at `expand_end`, constant after."""
    if num_steps <= 1:
        return cfg.expand_pixels
    progress = step / (num_steps - 1)
    if cfg.expand_end <= cfg.expand_start:
        return cfg.expand_pixels if progress >= cfg.expand_start else 0
    frac = min(max((progress - cfg.expand_start) / (cfg.expand_end - cfg.expand_start), 0.0), 1.0)
    return int(round(frac * cfg.expand_pixels))


def region_depth(mask: torch.Tensor, limit: int) -> torch.Tensor:
    """Inner radius of each pixel's connected region, clipped at `limit`: (B, 1, H, W) float32.

    `mask` is (B, 1, H, W) in [0, 1]; its support (> 0) is split into 8-connected regions. Each pixel
    of a region gets the region's largest depth (see the module docstring), ``min(that, limit)``, so
    eroding the region by ``p`` leaves it non-empty exactly when ``p < value``; pixels outside get 0.
    Batched over B; iterative 3x3 pooling, no gradients needed (latent masks are small).
    """
    inside = (mask > 0).float()
    depth = torch.zeros_like(inside)
    level = inside
    for _ in range(limit):  # depth = how many successive 1-pixel erosions a pixel survives, up to `limit`
        depth += level
        level = erode(level, 1)
    # Spread each region's largest depth over the region: a 3x3 max restricted to the support
    # propagates across 8-neighbours, so it converges in at most the region's geodesic radius.
    while True:
        spread = F.max_pool2d(depth, 3, stride=1, padding=1) * inside
        if torch.equal(spread, depth):
            return depth
        depth = spread


def capped_erode(mask: torch.Tensor, pixels: int, min_core: int) -> torch.Tensor:
    """Erode each connected region of a (B, 1, H, W) mask in [0, 1] by ``min(pixels, radius - min_core)``.

    `radius` is the region's inner radius (see `region_depth`), so every region keeps a core of depth
    >= min(min_core, radius): non-empty whenever min_core >= 1. Regions with radius >= pixels + min_core
    are eroded by exactly `pixels`. ``min_core=0`` is plain `erode`. Nested in `pixels` like `erode`.
    """
    if pixels <= 0 or min_core <= 0:
        return erode(mask, pixels)
    radius = region_depth(mask, pixels + min_core)
    amount = (radius - min_core).clamp(0, pixels)  # per-pixel erosion, constant over each region
    kept, level = mask, mask
    for p in range(1, pixels + 1):  # successive 1-pixel erosions = erosion by p (square, same border rule)
        level = erode(level, 1)
        kept = torch.where(amount >= p, level, kept)
    return kept


def _none(mask, step, num_steps, cfg):
    return None


def _fixed(mask, step, num_steps, cfg):
    return mask


def _sequential(mask, step, num_steps, cfg):
    return capped_erode(dilate(mask, cfg.d0), erosion_at(step, num_steps, cfg), cfg.min_core)


BLEND_MODES = {"none": _none, "fixed": _fixed, "sequential": _sequential}


def keep_mask(mask: torch.Tensor, step: int, num_steps: int, cfg: BlendConfig) -> torch.Tensor | None:
    """The keep-mask K_i for step `step`: (B, 1, h, w) in [0, 1] at latent resolution, or None (no blending).

    `mask` is the hand mask at latent resolution, (B, 1, h, w) float in [0, 1]. For ``sequential`` the
    masks are nested (K_{i+1} <= K_i), each connected hand region keeps a non-empty core when
    ``cfg.min_core >= 1``, and regions with inner radius >= expand_pixels + min_core (after the ``d0``
    dilation) end eroded by exactly ``expand_pixels``.
    """
    return BLEND_MODES[cfg.mode](mask, step, num_steps, cfg)


def blend_latents(
    latents: torch.Tensor, hand_latents_noised: torch.Tensor, keep: torch.Tensor | None
) -> torch.Tensor:
    """z <- K * noised(z_hands) + (1 - K) * z. `keep` broadcasts over the latent channels."""
    if keep is None:
        return latents
    keep = keep.to(latents.dtype)
    return keep * hand_latents_noised + (1.0 - keep) * latents


def mask_to_latent(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) pixel mask in [0, 1] -> (B, 1, h, w) latent mask; a latent pixel is hand if most of
    its pixels are (area average, then 0.5 threshold), so the kept region never leaks past the hand."""
    small = F.adaptive_avg_pool2d(mask.float(), latent_hw)
    return (small >= 0.5).to(mask.dtype if mask.is_floating_point() else torch.float32)
