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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass
class BlendConfig:
    mode: str = "sequential"  # none | fixed | sequential
    d0: int = 1  # initial dilation of the hand mask, latent pixels
    expand_pixels: int = 3  # total erosion over the expansion window, latent pixels
    expand_start: float = 0.2  # fraction of the schedule where erosion starts
    expand_end: float = 0.8  # fraction where it reaches `expand_pixels` and then stays

    def __post_init__(self):
        if self.mode not in BLEND_MODES:
            raise ValueError(f"unknown blending mode {self.mode!r}; expected one of {sorted(BLEND_MODES)}")
        if not 0.0 <= self.expand_start <= self.expand_end <= 1.0:
            raise ValueError(
                f"need 0 <= expand_start <= expand_end <= 1, got {self.expand_start} and {self.expand_end}"
            )
        if self.d0 < 0 or self.expand_pixels < 0:
            raise ValueError("d0 and expand_pixels must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


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


def _none(mask, step, num_steps, cfg):
    return None


def _fixed(mask, step, num_steps, cfg):
    return mask


def _sequential(mask, step, num_steps, cfg):
    return erode(dilate(mask, cfg.d0), erosion_at(step, num_steps, cfg))


BLEND_MODES = {"none": _none, "fixed": _fixed, "sequential": _sequential}


def keep_mask(mask: torch.Tensor, step: int, num_steps: int, cfg: BlendConfig) -> torch.Tensor | None:
    """The keep-mask K_i for step `step`: (B, 1, h, w) in [0, 1] at latent resolution, or None (no blending).

    `mask` is the hand mask at latent resolution, (B, 1, h, w) float in [0, 1].
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
