"""Sequential mask expansion: the schedule is a pure function, tested on its own."""

import numpy as np
import pytest
import torch

from generation.pipelines.blending import (
    BlendConfig,
    blend_latents,
    capped_erode,
    dilate,
    erode,
    erosion_at,
    keep_mask,
    mask_to_latent,
    region_depth,
)


def _square_mask(h=32, w=32, r=(8, 24)):
    m = torch.zeros(1, 1, h, w)
    m[..., r[0] : r[1], r[0] : r[1]] = 1.0
    return m


@pytest.mark.parametrize("steps", [4, 10, 30, 50])
def test_sequential_masks_are_monotone_and_reach_exact_erosion(steps):
    cfg = BlendConfig(mode="sequential", d0=1, expand_pixels=3, expand_start=0.2, expand_end=0.8)
    mask = _square_mask()
    masks = [keep_mask(mask, i, steps, cfg) for i in range(steps)]
    for a, b in zip(masks, masks[1:]):
        assert (b <= a).all(), "keep-mask grew between steps"
    assert masks[0].sum() == 18 * 18  # 16x16 square dilated by d0=1
    assert masks[-1].sum() == (16 - 2 * 2) ** 2  # dilated by 1 then eroded by 3 = eroded by 2
    assert erosion_at(steps - 1, steps, cfg) == 3
    last_window_step = max(i for i in range(steps) if i / (steps - 1) <= 0.8)
    for i in range(last_window_step + 1, steps):
        assert torch.equal(masks[i], masks[-1]), "mask changed after expand_end"


def test_erosion_is_zero_before_the_window_and_linear_inside():
    cfg = BlendConfig(expand_pixels=4, expand_start=0.5, expand_end=1.0)
    amounts = [erosion_at(i, 11, cfg) for i in range(11)]
    assert amounts[:6] == [0] * 6
    assert amounts[-1] == 4
    assert amounts == sorted(amounts)


def test_fixed_mode_keeps_the_hand_mask_and_none_never_blends():
    mask = _square_mask()
    fixed = BlendConfig(mode="fixed")
    for i in range(5):
        assert torch.equal(keep_mask(mask, i, 5, fixed), mask)
    none = BlendConfig(mode="none")
    z = torch.randn(1, 4, 32, 32)
    for i in range(5):
        k = keep_mask(mask, i, 5, none)
        assert k is None
        assert torch.equal(blend_latents(z, torch.randn_like(z), k), z)


def test_blend_equals_hand_latents_where_keep_is_one():
    mask = _square_mask()
    z, zh = torch.randn(1, 4, 32, 32), torch.randn(1, 4, 32, 32)
    out = blend_latents(z, zh, mask)
    inside = mask.bool().expand_as(z)
    assert torch.equal(out[inside], zh[inside]) and torch.equal(out[~inside], z[~inside])


def test_mask_to_latent_never_leaks_outside_the_hand():
    m = torch.zeros(1, 1, 64, 64)
    m[..., 10:30, 12:40] = 1
    lat = mask_to_latent(m, (8, 8))
    up = torch.nn.functional.interpolate(lat, size=(64, 64), mode="nearest")
    assert lat.shape == (1, 1, 8, 8) and lat.sum() > 0
    assert (up * (1 - m)).sum() <= 0.5 * up.sum()  # each kept latent pixel is mostly hand


def _small_and_large_hand(h=40, w=40):
    """A 3x3 hand (2 latent px too narrow for the default erosion) beside a 16x16 one, not touching."""
    m = torch.zeros(1, 1, h, w)
    m[..., 4:7, 4:7] = 1.0  # small: dilated by d0=1 -> 5x5, inner radius 3
    m[..., 16:32, 16:32] = 1.0  # large: dilated -> 18x18, inner radius 9
    return m


def test_small_hand_keeps_a_core_while_the_large_one_is_eroded_by_exactly_expand_pixels():
    cfg = BlendConfig(mode="sequential", d0=1, expand_pixels=3, expand_start=0.2, expand_end=0.8, min_core=2)
    mask, steps = _small_and_large_hand(), 20
    last = keep_mask(mask, steps - 1, steps, cfg)
    small, large = last[..., :12, :12], last[..., 12:, 12:]
    # Large: the cap does not bind (radius 9 >= 3 + 2), the erosion is exactly expand_pixels.
    assert torch.equal(large, erode(dilate(mask, 1), 3)[..., 12:, 12:])
    assert large.sum() == (18 - 2 * 3) ** 2
    # Small: capped at radius 3 - min_core 2 = 1 pixel, leaving the 3x3 core = the hand itself.
    assert small.sum() == 9 and torch.equal(small, mask[..., :12, :12])
    # Without the cap (min_core=0) the same schedule erases the small hand: what the cap is for.
    uncapped = keep_mask(mask, steps - 1, steps, BlendConfig(d0=1, expand_pixels=3, min_core=0))
    assert uncapped[..., :12, :12].sum() == 0 and torch.equal(uncapped[..., 12:, 12:], large)


def _blobs(seed, b=3, h=24, w=28):
    """Random unions of rectangles, lines and dots (thin, touching, at the border), batched."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(b, 1, h, w)
    for k in range(b):
        for _ in range(6):
            y, x = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
            dy, dx = (int(v) for v in torch.randint(1, 9, (2,), generator=g))
            m[k, 0, y : y + dy, x : x + dx] = 1.0
    return m


def _reference_capped_erode(mask, pixels, min_core):
    """Region by region with scipy: label the 8-connected regions, erode each alone by its own cap."""
    from scipy import ndimage

    out = torch.zeros_like(mask)
    for k in range(mask.shape[0]):
        labels, n = ndimage.label(mask[k, 0].numpy() > 0, structure=np.ones((3, 3)))
        for r in range(1, n + 1):
            region = torch.from_numpy(labels == r)[None, None]
            alone = mask[k : k + 1] * region
            radius = next(p for p in range(1, 1000) if erode(alone, p).sum() == 0)  # first p that empties it
            out[k : k + 1] += erode(alone, min(pixels, max(radius - min_core, 0))) * region
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("min_core", [1, 2, 3])
def test_capped_erosion_matches_a_per_region_reference_and_keeps_every_region(seed, min_core):
    mask = _blobs(seed)
    for pixels in range(0, 5):
        got = capped_erode(mask, pixels, min_core)
        assert torch.equal(got, _reference_capped_erode(mask, pixels, min_core)), (seed, pixels)
    # Every region of the mask keeps something, and the batch elements do not interact.
    got = capped_erode(mask, 4, min_core)
    from scipy import ndimage

    for k in range(mask.shape[0]):
        labels, n = ndimage.label(mask[k, 0].numpy() > 0, structure=np.ones((3, 3)))
        kept = set(np.unique(labels[got[k, 0].numpy() > 0])) - {0}
        assert kept == set(range(1, n + 1)), f"seed {seed}: regions {set(range(1, n + 1)) - kept} erased"
        assert torch.equal(got[k : k + 1], capped_erode(mask[k : k + 1], 4, min_core))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("min_core", [0, 1, 2])
def test_sequential_masks_stay_monotone_with_the_cap(seed, min_core):
    cfg = BlendConfig(
        mode="sequential", d0=1, expand_pixels=4, expand_start=0.1, expand_end=0.9, min_core=min_core
    )
    mask = _blobs(seed)
    masks = [keep_mask(mask, i, 15, cfg) for i in range(15)]
    assert torch.equal(masks[0], dilate(mask, 1))
    for a, b in zip(masks, masks[1:]):
        assert (b <= a).all(), "keep-mask grew between steps"
    if min_core:
        assert ((masks[-1] > 0).flatten(1).any(1)).all()


def test_region_depth_is_the_inner_radius_of_each_region():
    m = torch.zeros(1, 1, 20, 20)
    m[..., 1:6, 1:6] = 1  # 5x5: radius 3
    m[..., 10:12, 2:18] = 1  # 2-px bar: radius 1
    m[..., 15:20, 10:13] = 1  # 3 px wide, touching the bottom border (counts as inside): radius 2
    d = region_depth(m, limit=10)
    assert d[0, 0, 3, 1] == 3 and d[0, 0, 1, 1] == 3  # constant over the region, rim included
    assert d[0, 0, 10, 2] == 1 and d[0, 0, 19, 11] == 2 and d[0, 0, 0, 0] == 0
    assert region_depth(m, limit=2)[0, 0, 3, 3] == 2  # clipped


def test_grey_masks_keep_their_values_under_the_cap():
    m = torch.zeros(1, 1, 16, 16)
    m[..., 2:5, 2:5] = 0.5
    m[..., 3, 3] = 0.25
    out = capped_erode(m, 3, 1)  # radius 2 -> eroded by 1: the centre pixel, with the 3x3 minimum
    assert out.sum() == 0.25 and out[0, 0, 3, 3] == 0.25


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="mode must be one of sequential, fixed, none; got 'soft'"):
        BlendConfig(mode="soft")
    with pytest.raises(ValueError, match="expand_start <= expand_end"):
        BlendConfig(expand_start=0.9, expand_end=0.1)
    with pytest.raises(ValueError, match="min_core must be >= 0, got -1"):
        BlendConfig(min_core=-1)
