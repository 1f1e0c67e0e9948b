"""The body outpainter's condition image: what each channel group carries, and clear errors."""

import numpy as np
import pytest
import torch

from generation.pipelines.condition import (
    ConditionConfig,
    ConditionInputs,
    NoBodyPoseError,
    build_condition,
    channel_slices,
    condition_tiles,
    conditioning_channels,
)
from manifests.pose import OPENPOSE_COLORS, OPENPOSE_LIMBS

SIZE = 256

# An upright OpenPose-18 figure on a 256 px canvas whose limbs do not cross near their midpoints.
POSE18 = np.array(
    [
        [128, 40],
        [128, 70],
        [98, 70],
        [78, 100],
        [70, 130],
        [158, 70],
        [178, 100],
        [186, 130],
        [110, 150],
        [108, 190],
        [106, 230],
        [146, 150],
        [148, 190],
        [150, 230],
        [122, 30],
        [134, 30],
        [110, 36],
        [146, 36],
    ],
    dtype=np.float32,
)


def _pose(score=1.0):
    return np.concatenate([POSE18, np.full((18, 1), score, np.float32)], axis=1)


def _hands(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[120:150, 60:90] = True
    mask[120:150, 170:200] = True
    return image, mask


def _condition(body=None, fmt="openpose18", config=None, hand_keypoints=(), **kw):
    image, mask = _hands()
    body = _pose() if body is None else body
    return (
        build_condition(ConditionInputs(body, image, mask, list(hand_keypoints), fmt, "test_image"), config),
        image,
        mask,
    )


def test_channel_count_is_derived_from_the_groups():
    assert conditioning_channels() == 7
    assert conditioning_channels(ConditionConfig(channels=("pose", "mask"))) == 4
    assert channel_slices() == {"pose": slice(0, 3), "hands": slice(3, 6), "mask": slice(6, 7)}
    cond, _, _ = _condition(config=ConditionConfig(channels=("mask", "pose")))
    assert cond.shape == (4, SIZE, SIZE)
    with pytest.raises(ValueError, match="unknown condition channel group"):
        ConditionConfig(channels=("pose", "depth"))


def test_pose_channels_carry_limb_colours_at_limb_midpoints():
    torch.manual_seed(0)
    cond, _, _ = _condition()
    assert cond.shape == (7, SIZE, SIZE) and cond.dtype == torch.float32
    pose = (cond[0:3].numpy().transpose(1, 2, 0) * 255).round().astype(int)
    for i, (a, b) in enumerate(OPENPOSE_LIMBS):
        x, y = np.round((POSE18[a] + POSE18[b]) / 2).astype(int)
        expected = [int(c * 0.6) for c in OPENPOSE_COLORS[i]]
        assert pose[y, x].tolist() == expected, f"limb {i} ({a}-{b}) at ({x}, {y})"
    # Joints are drawn in their full colour on top of the limbs.
    for j in range(18):
        x, y = POSE18[j].astype(int)
        assert pose[y, x].tolist() == list(OPENPOSE_COLORS[j]), f"joint {j}"
    # Far from the skeleton, the pose channels are black.
    assert pose[5, 5].tolist() == [0, 0, 0] and pose[250, 250].tolist() == [0, 0, 0]
    assert (pose.sum(axis=2) > 0).mean() < 0.1


def test_invisible_keypoints_are_not_drawn():
    body = _pose()
    body[12, 2] = 0.0  # left knee: limbs 11-12 and 12-13 disappear
    cond, _, _ = _condition(body)
    pose = cond[0:3].numpy().sum(axis=0)
    for a, b in [(11, 12), (12, 13)]:
        x, y = np.round((POSE18[a] + POSE18[b]) / 2).astype(int)
        assert pose[y, x] == 0.0
    x, y = np.round((POSE18[9] + POSE18[10]) / 2).astype(int)
    assert pose[y, x] > 0


def test_mediapipe_body_goes_through_the_33_to_18_conversion():
    mp = np.zeros((33, 3), np.float32)
    mp[:, 2] = 0.9
    mp[:, :2] = 128
    mp[11, :2] = (158, 70)  # left shoulder
    mp[12, :2] = (98, 70)  # right shoulder
    mp[13, :2] = (178, 100)  # left elbow
    cond, _, _ = _condition(mp, fmt="mediapipe33")
    pose = (cond[0:3].numpy().transpose(1, 2, 0) * 255).round().astype(int)
    # The neck (OpenPose 1) is the shoulders' midpoint; the neck-left shoulder limb is limb 1.
    assert pose[70, 128].tolist() == list(OPENPOSE_COLORS[1])
    assert pose[70, 143].tolist() == [int(c * 0.6) for c in OPENPOSE_COLORS[1]]
    # Left shoulder -> left elbow is limb 4.
    assert pose[85, 168].tolist() == [int(c * 0.6) for c in OPENPOSE_COLORS[4]]


def test_hand_pixels_inside_the_mask_and_zeros_outside():
    cond, image, mask = _condition()
    hands = cond[3:6].numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(hands[mask], image[mask].astype(np.float32) / 255.0)
    assert (hands[~mask] == 0).all()
    assert (hands[mask] > 0).all()  # the image has no zero pixels, so nothing under the mask was dropped
    np.testing.assert_array_equal(cond[6].numpy(), mask.astype(np.float32))
    assert cond.min() >= 0 and cond.max() <= 1


def test_mask_accepts_uint8_255_and_pil_style_inputs():
    image, mask = _hands()
    a = build_condition(ConditionInputs(_pose(), image, mask, body_format="openpose18"))
    b = build_condition(
        ConditionInputs(_pose(), image, mask.astype(np.uint8) * 255, body_format="openpose18")
    )
    c = build_condition(
        ConditionInputs(_pose(), image, mask[..., None].astype(np.uint8), body_format="openpose18")
    )
    assert torch.equal(a, b) and torch.equal(a, c)


def test_hand_skeleton_flag_draws_hands_into_the_pose_channels_only():
    hand = np.stack([np.linspace(64, 88, 21), np.linspace(122, 148, 21)], axis=1)
    off, _, _ = _condition(hand_keypoints=[hand])
    on, _, _ = _condition(hand_keypoints=[hand], config=ConditionConfig(draw_hand_skeletons=True))
    changed = (on[0:3] != off[0:3]).any(dim=0).numpy()
    assert changed.any()
    ys, xs = np.nonzero(changed)
    assert xs.min() >= 60 and xs.max() <= 92 and ys.min() >= 118 and ys.max() <= 152  # only around the hand
    assert torch.equal(on[3:], off[3:])


def test_condition_tiles_are_rgb_uint8_per_group():
    cond, _, mask = _condition()
    tiles = condition_tiles(cond)
    assert [t.shape for t in tiles] == [(SIZE, SIZE, 3)] * 3 and all(t.dtype == np.uint8 for t in tiles)
    assert (tiles[2][..., 0] == np.where(mask, 255, 0)).all()


def test_missing_or_invisible_body_pose_is_a_clear_error():
    image, mask = _hands()
    with pytest.raises(NoBodyPoseError, match="no body pose for img_7: body_keypoints is null"):
        build_condition(ConditionInputs(None, image, mask, source="img_7"))
    with pytest.raises(NoBodyPoseError, match="below visibility"):
        build_condition(ConditionInputs(np.zeros((33, 3)), image, mask, source="img_7"))
    with pytest.raises(ValueError, match=r"must have shape \(33, 3\), got \(18, 3\)"):
        build_condition(ConditionInputs(_pose(), image, mask, source="img_7"))
    bad = _pose()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_condition(ConditionInputs(bad, image, mask, body_format="openpose18"))
    with pytest.raises(ValueError, match="unknown body keypoint format 'coco17'"):
        build_condition(ConditionInputs(_pose(), image, mask, body_format="coco17"))


def test_mask_of_the_wrong_size_is_a_clear_error():
    image, mask = _hands()
    with pytest.raises(
        ValueError, match=r"hand mask for img_3 has size 128x256 \(WxH\) but the hand image is 256x256"
    ):
        build_condition(
            ConditionInputs(_pose(), image, mask[:, :128], body_format="openpose18", source="img_3")
        )
    with pytest.raises(ValueError, match="must be \\(H, W, 3\\) uint8"):
        build_condition(ConditionInputs(_pose(), image.astype(np.float32), mask, body_format="openpose18"))
