"""Sequential mask expansion: the schedule is a pure function, tested on its own."""

import pytest
import torch

from generation.blending import BlendConfig, blend_latents, erosion_at, keep_mask, mask_to_latent


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


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown blending mode 'soft'"):
        BlendConfig(mode="soft")
    with pytest.raises(ValueError, match="expand_start <= expand_end"):
        BlendConfig(expand_start=0.9, expand_end=0.1)
