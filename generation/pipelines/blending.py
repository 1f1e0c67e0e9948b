"""Latent blending for the two-stage pipeline, including sequential mask expansion (the method).

After each denoising step the known hand latents, noised to the next timestep, are written back
into the current latents with the keep weight ``K_i``::

    z <- K_i * noised(z_hands, t_next) + (1 - K_i) * z

``K_i`` is built at the hand's own scale: a keep-mask at image resolution, grown or shrunk in image
pixels hand by hand, then area-averaged to latent resolution, so a latent pixel (8 image pixels with
Stable Diffusion's VAE) that the mask covers in part gets a fractional weight.

Modes (a registry, see `BLEND_MODES`):
- ``none``: never blend; stage 2 alone paints everything.
- ``fixed``: the keep-mask is the whole pasted hand mask at every step (the naive baseline).
- ``sequential``: the keep-mask starts as the hand mask grown by ``d0`` and shrinks by ``band`` in
  total, linearly over the steps between ``expand_start`` and ``expand_end`` (fractions of the
  schedule), then stays fixed. The body region thus grows into the hand's border step by step,
  repainting the seam while the inside of the hand keeps the stage-1 details. ``d0`` and ``band`` are
  shares of each hand's size (the longer side of its mask's box), so a 20 px hand at 128 px and an
  80 px hand at 512 px lose the same share. ``min_core`` and ``min_kept`` cap the shrinking hand by
  hand (see `KeepSchedule`).

Geometry: `HandRegions` holds each pixel's signed distance to the pasted hands' border (Euclidean,
``scipy.ndimage.distance_transform_edt``; positive inside, shifted by half a pixel so that the rim is
0.5 and the first ring outside -0.5; pixels beyond the image border count as inside) and the hand it
belongs to (its own, or the nearest one outside the hands). A keep-mask is then ``signed > level``
with one level per hand: 0 is the hand mask itself, ``+p`` shrinks it by ``p`` pixels, ``-p`` grows it.
Levels only rise over the steps, so the keep-masks are nested (K_{i+1} <= K_i), and no level is below
``-d0 x size``, so no weight reaches outside the grown hand. Each pixel's keep weight is a one-pixel
ramp of its signed distance (``clip(signed - level + 0.5, 0, 1)``), so levels move the border by
fractions of a pixel too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .blend_config import BlendConfig


@dataclass
class HandRegions:
    """The pasted hands at image resolution, from a label map (-1 outside, k for hand k)."""

    labels: np.ndarray  # (H, W) int, -1 outside every hand
    signed: np.ndarray  # (H, W) float32 signed distance to the hands' border, >0 inside (see the module)
    owner: np.ndarray  # (H, W) int: the hand a pixel belongs to (inside) or is nearest to (outside)
    sizes: np.ndarray  # (N,) longer side of each hand's mask box, pixels
    pixels: list  # per hand, (ys, xs) of its mask pixels

    @classmethod
    def from_labels(cls, labels: np.ndarray, num_hands: int | None = None) -> HandRegions:
        from scipy import ndimage

        labels = np.asarray(labels)
        n = int(labels.max()) + 1 if num_hands is None else int(num_hands)
        inside = labels >= 0
        if not inside.any():
            raise ValueError("no hand pixels: a keep-mask needs at least one pasted hand")
        if inside.all():
            signed = np.full(labels.shape, np.float32(max(labels.shape)), np.float32)
            owner = labels.astype(np.int64)
        else:
            depth_in = ndimage.distance_transform_edt(inside)
            depth_out, (iy, ix) = ndimage.distance_transform_edt(~inside, return_indices=True)
            signed = np.where(inside, depth_in - 0.5, 0.5 - depth_out).astype(np.float32)
            owner = labels[iy, ix].astype(np.int64)
        pixels, sizes = [], np.zeros(n, np.float64)
        for k in range(n):
            ys, xs = np.nonzero(labels == k)
            pixels.append((ys, xs))
            if len(ys):
                sizes[k] = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
        return cls(labels, signed, owner, sizes, pixels)

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> HandRegions:
        """All pixels of an (H, W) bool mask as one hand."""
        return cls.from_labels(np.where(np.asarray(mask, bool), 0, -1), 1)

    @property
    def num_hands(self) -> int:
        return len(self.sizes)

    def keep(self, levels: np.ndarray) -> np.ndarray:
        """(H, W) float32 keep-mask at image resolution for per-hand `levels`:
        ``clip(signed - levels[owner] + 0.5, 0, 1)``, a one-pixel ramp, so that a level between two
        pixel rings keeps part of the outer one (level 0: exactly the hand mask)."""
        return keep_ramp(self.signed, np.asarray(levels, np.float32)[self.owner])

    def grown(self, d0: float) -> np.ndarray:
        """(H, W) bool: the hands grown by `d0` x each hand's size (what no keep-mask reaches past)."""
        return self.keep(-d0 * self.sizes) > 0


def dilate(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grey dilation of a (B, 1, H, W) map in [0, 1] by a (2p+1)^2 square (the stage-2 trainer's hand-border
    loss weight)."""
    if pixels <= 0:
        return mask
    return F.max_pool2d(mask, 2 * pixels + 1, stride=1, padding=pixels)


def erode(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grey erosion of a (B, 1, H, W) map in [0, 1]; nested: erode(m, p + 1) <= erode(m, p)."""
    if pixels <= 0:
        return mask
    return -F.max_pool2d(-mask, 2 * pixels + 1, stride=1, padding=pixels)


def keep_ramp(signed: np.ndarray, level) -> np.ndarray:
    """Keep weight of pixels at signed distance `signed` for `level` (see `HandRegions.keep`)."""
    return np.clip(signed - level + np.float32(0.5), 0.0, 1.0).astype(np.float32, copy=False)


def ramp(step: int, num_steps: int, cfg: BlendConfig) -> float:
    """How far step `step` (0-based) of `num_steps` is through the window: 0 before `expand_start`,
    linear to exactly 1 at `expand_end`, 1 after."""
    if num_steps <= 1:
        return 1.0
    progress = step / (num_steps - 1)
    if cfg.expand_end <= cfg.expand_start:
        return 1.0 if progress >= cfg.expand_start else 0.0
    return min(max((progress - cfg.expand_start) / (cfg.expand_end - cfg.expand_start), 0.0), 1.0)


def _none(schedule, step):
    return None


def _fixed(schedule, step):
    return np.zeros(schedule.regions.num_hands)


def _sequential(schedule, step):
    cfg = schedule.cfg
    wanted = schedule.regions.sizes * (ramp(step, schedule.num_steps, cfg) * cfg.band - cfg.d0)
    return np.minimum(wanted, schedule.level_caps)


# mode -> (KeepSchedule, step) -> per-hand levels (N,) of the keep-mask, or None (no blending)
BLEND_MODES: dict[str, Callable] = {"none": _none, "fixed": _fixed, "sequential": _sequential}


def area_average(mask: np.ndarray, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(H, W) mask at image resolution -> (1, 1, h, w) float32 weights in [0, 1]: each latent pixel's
    share of kept pixels."""
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(t, latent_hw)


def upsample(weights: torch.Tensor | np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(h, w) latent weights -> (H, W) float32: each image pixel gets its latent pixel's weight (nearest;
    the weight the blend gives it)."""
    k = np.asarray(weights.cpu() if hasattr(weights, "cpu") else weights, np.float32).reshape(
        weights.shape[-2:]
    )
    h, w = k.shape
    ys = (np.arange(hw[0]) * h) // hw[0]
    xs = (np.arange(hw[1]) * w) // hw[1]
    return k[ys[:, None], xs[None, :]]


class KeepSchedule:
    """The keep weights K_i of one stage-2 run, and the share of each hand's pixels they keep.

    `labels` (H, W) int: the pasted hands at the work canvas's resolution (-1 outside, k for hand k);
    `latent_hw`: the latent grid, which must divide (H, W) (stage 2's work canvas does).
    ``weights(i)`` is K_i (1, 1, h, w) in [0, 1] or None (no blending); ``kept_share(K)`` the (N,) share
    of each hand's mask pixels that K keeps (each pixel weighted by its latent pixel's K, over the
    hand's area).

    ``min_core`` / ``min_kept``: a hand's level never rises past the highest level at which it still keeps
    the lower of ``min_kept`` of its pixels and ``min_core`` x the share its whole mask keeps
    (`level_caps`): a large hand may give the body its rim down to ``min_kept``, while a hand whose
    whole mask keeps less than that (a small one, whose rim latent pixels are mostly mixed) gives at most
    ``1 - min_core`` of what ``fixed`` keeps of it. The cap is found hand by hand with every other hand
    whole, so it is exact for hands that share no latent pixel.
    """

    def __init__(
        self,
        labels: np.ndarray | HandRegions,
        cfg: BlendConfig,
        num_steps: int,
        latent_hw: tuple[int, int],
        num_hands: int | None = None,
    ):
        # A `HandRegions` may be given instead of the labels, to build several schedules on one geometry.
        # `num_hands`: how many hands there are, when the last ones may have no pixel left (covered).
        if isinstance(labels, HandRegions):
            self.regions = labels
        else:
            self.regions = HandRegions.from_labels(labels, num_hands)
        self.cfg, self.num_steps, self.latent_hw = cfg, int(num_steps), tuple(int(v) for v in latent_hw)
        hw = self.regions.labels.shape
        if hw[0] % self.latent_hw[0] or hw[1] % self.latent_hw[1]:
            raise ValueError(f"the latent grid {self.latent_hw} does not divide the canvas {hw}")
        self.factor = (hw[0] // self.latent_hw[0], hw[1] // self.latent_hw[1])
        self._cells = [(ys // self.factor[0], xs // self.factor[1]) for ys, xs in self.regions.pixels]
        self._caps: np.ndarray | None = None

    @property
    def level_caps(self) -> np.ndarray:
        """(N,) each hand's highest level (see the class docstring); inf with ``min_core`` 0."""
        if self._caps is None:
            self._caps = np.array([self._cap(k) for k in range(self.regions.num_hands)])
        return self._caps

    def _cap(self, k: int) -> float:
        if self.cfg.min_core <= 0 or not len(self._cells[k][0]):
            return np.inf
        cy, cx = self._cells[k]
        w = self.latent_hw[1]
        cell = cy * w + cx
        ids, local = np.unique(cell, return_inverse=True)
        area = float(self.factor[0] * self.factor[1])
        # Pixels of the other hands in this hand's latent pixels, taken as kept.
        other = np.zeros(len(ids))
        ly, lx = ids // w, ids % w
        fy, fx = self.factor
        for j, (y, x) in enumerate(zip(ly, lx)):
            block = self.regions.labels[y * fy : (y + 1) * fy, x * fx : (x + 1) * fx]
            other[j] = np.count_nonzero((block >= 0) & (block != k))
        values = self.regions.signed[self.regions.pixels[k]]
        n_cell = np.bincount(local, minlength=len(ids)).astype(np.float64)

        def share(level: float) -> float:
            kept = np.bincount(local, weights=keep_ramp(values, level), minlength=len(ids))
            return float((n_cell * (kept + other) / area).sum() / len(values))

        floor = min(self.cfg.min_kept, self.cfg.min_core * share(0.0))
        lo, hi = 0.0, float(values.max()) + 0.5  # share(lo) >= floor; at hi the hand keeps nothing
        if share(hi) >= floor:
            return np.inf
        for _ in range(40):  # bisection on the continuous, non-increasing share(level)
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if share(mid) >= floor else (lo, mid)
        return lo

    def pixel_mask(self, step: int) -> np.ndarray | None:
        """(H, W) float32 keep-mask in [0, 1] at image resolution for `step`, or None (no blending)."""
        levels = BLEND_MODES[self.cfg.mode](self, step)
        return None if levels is None else self.regions.keep(levels)

    def weights(self, step: int) -> torch.Tensor | None:
        mask = self.pixel_mask(step)
        return None if mask is None else area_average(mask, self.latent_hw)

    def kept_share(self, weights: torch.Tensor | None) -> np.ndarray:
        """(N,) share of each hand's mask pixels that `weights` (K of some step) keeps; 0 when None."""
        if weights is None:
            return np.zeros(self.regions.num_hands)
        k = weights.reshape(self.latent_hw).cpu().numpy()
        return np.array([float(k[cy, cx].mean()) if len(cy) else 0.0 for cy, cx in self._cells])


def keep_schedule(mask: np.ndarray, cfg: BlendConfig, num_steps: int, latent_hw: tuple[int, int]):
    """Every step's keep weights for an (H, W) bool mask or label map: a list of (1, 1, h, w) or None."""
    labels = np.asarray(mask)
    if labels.dtype == bool:
        labels = np.where(labels, 0, -1)
    schedule = KeepSchedule(labels, cfg, num_steps, latent_hw)
    return [schedule.weights(i) for i in range(num_steps)]


def blend_latents(
    latents: torch.Tensor, hand_latents_noised: torch.Tensor, keep: torch.Tensor | None
) -> torch.Tensor:
    """z <- K * noised(z_hands) + (1 - K) * z. `keep` broadcasts over the latent channels."""
    if keep is None:
        return latents
    keep = keep.to(latents.dtype)
    return keep * hand_latents_noised + (1.0 - keep) * latents


__all__ = [
    "BLEND_MODES",
    "BlendConfig",
    "HandRegions",
    "KeepSchedule",
    "area_average",
    "blend_latents",
    "dilate",
    "erode",
    "keep_schedule",
    "ramp",
    "upsample",
]
