"""Matching, PCK, mean error and OKS AP of manifests.matching on constructed keypoint sets."""

import numpy as np
import pytest

from manifests.matching import (
    COCO_BODY_SIGMAS,
    HAND_OKS_SIGMAS,
    MEDIAPIPE33_TO_COCO17,
    Instance,
    MatchConfig,
    PoseScorer,
    match_instances,
    mediapipe33_to_coco17,
)
from manifests.pose import MEDIAPIPE_POSE_NAMES


def _hand(x0, y0, size=100.0, seed=0, handed=None):
    """21 keypoints spread over a size x size box at (x0, y0) whose corners are hit exactly."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size, (21, 2))
    xy[0] = [0, 0]
    xy[1] = [size, size]
    return Instance(np.c_[xy + [x0, y0], np.ones(21)], handed)


def test_layouts_and_sigmas():
    assert HAND_OKS_SIGMAS.shape == (21,) and COCO_BODY_SIGMAS.shape == (17,)
    from manifests.matching import COCO17_NAMES

    assert [MEDIAPIPE_POSE_NAMES[i] for i in MEDIAPIPE33_TO_COCO17] == COCO17_NAMES
    kps = np.arange(99, dtype=float).reshape(33, 3)
    assert np.array_equal(mediapipe33_to_coco17(kps)[9], kps[15])  # left wrist
    with pytest.raises(ValueError, match="33, 3"):
        mediapipe33_to_coco17(np.zeros((18, 3)))


def test_identical_sets_are_perfect():
    targets = [_hand(0, 0, seed=1, handed="left"), _hand(300, 50, seed=2, handed="right")]
    preds = [Instance(t.keypoints.copy(), t.handedness, 0.9) for t in reversed(targets)]
    s = PoseScorer("hand")
    s.add("img", preds, targets)
    r = s.result()
    assert r["count"] == 2 and r["matched"] == 2 and r["detected_share"] == 1.0 and r["precision"] == 1.0
    assert r["pck_0.1"] == 1.0 and r["pck_0.2"] == 1.0 and r["mean_error_px"] == 0.0
    assert r["oks_ap"] == pytest.approx(1.0) and r["handedness_accuracy"] == 1.0


def test_perturbation_lowers_pck_by_expected_amount():
    # Box size is exactly 100 px; shifting 7 of 21 keypoints by 15 px (0.15 box) fails PCK@0.1 only,
    # shifting another 7 by 25 px fails both thresholds.
    t = _hand(10, 20)
    p = t.keypoints.copy()
    p[2:9, 0] += 15.0
    p[9:16, 1] += 25.0
    s = PoseScorer("hand")
    s.add("img", [Instance(p)], [t])
    r = s.result()
    assert r["pck_0.1"] == pytest.approx(7 / 21)
    assert r["pck_0.2"] == pytest.approx(14 / 21)
    assert r["mean_error_px"] == pytest.approx((7 * 15 + 7 * 25) / 21)
    assert r["oks_ap"] < 1.0


def test_normalisation_uses_target_box_max_side():
    t = Instance(np.array([[0, 0, 1], [200, 50, 1]] + [[100, 25, 1]] * 19, float))  # box 200 x 50 -> size 200
    p = t.keypoints.copy()
    p[:, 0] += 30.0  # 0.15 of 200: inside PCK@0.2, outside PCK@0.1
    s = PoseScorer("hand")
    s.add("img", [Instance(p)], [t])
    r = s.result()
    assert r["pck_0.1"] == 0.0 and r["pck_0.2"] == 1.0


def test_swapped_handedness_still_matches_and_is_counted():
    targets = [_hand(0, 0, seed=1, handed="left"), _hand(300, 0, seed=2, handed="right")]
    preds = [Instance(targets[0].keypoints.copy(), "right"), Instance(targets[1].keypoints.copy(), "left")]
    s = PoseScorer("hand")
    s.add("img", preds, targets)
    r = s.result()
    assert r["matched"] == 2 and r["pck_0.1"] == 1.0
    assert r["handedness_accuracy"] == 0.0


def test_handedness_breaks_ties_between_overlapping_hands():
    # Two target hands at the same place; the predictions are equally close to both, so the
    # handedness term alone must decide the assignment.
    left, right = _hand(0, 0, seed=3, handed="left"), _hand(0, 0, seed=3, handed="right")
    preds = [Instance(left.keypoints + [1, 0, 0], "right"), Instance(left.keypoints + [1, 0, 0], "left")]
    pairs = match_instances(preds, [left, right])
    assert {(p.pred, p.target) for p in pairs} == {(0, 1), (1, 0)}
    # Without the tie-break either assignment is optimal; with a label on one side only it is ignored.
    assert len(match_instances([Instance(left.keypoints)], [left, right])) == 1


def test_gate_rejects_far_predictions():
    t = _hand(0, 0)
    far = Instance(t.keypoints + [80.0, 0, 0])  # 0.8 box sizes away
    assert match_instances([far], [t], MatchConfig(gate=0.5)) == []
    assert len(match_instances([far], [t], MatchConfig(gate=1.0))) == 1
    s = PoseScorer("hand")
    s.add("img", [far], [t])
    r = s.result()
    assert r["matched"] == 0 and r["detected_share"] == 0.0 and r["precision"] == 0.0
    assert r["pck_0.1"] is None and r["pck_all_0.1"] == 0.0 and r["mean_error_px"] is None


def test_image_without_predictions_is_a_miss():
    s = PoseScorer("hand")
    t = _hand(0, 0)
    s.add("found", [Instance(t.keypoints.copy())], [t])
    s.add("empty", [], [_hand(0, 0, seed=4)])
    r = s.result()
    assert r["count"] == 2 and r["matched"] == 1 and r["detected_share"] == 0.5
    assert r["pck_0.2"] == 1.0 and r["pck_all_0.2"] == 0.5
    assert 0.0 < r["oks_ap"] < 1.0


def test_no_predictions_anywhere_and_no_targets():
    s = PoseScorer("hand")
    s.add("empty", [], [_hand(0, 0)])
    r = s.result()
    assert r["detected_share"] == 0.0 and r["oks_ap"] == 0.0 and r["precision"] is None
    r = PoseScorer("body").result()
    assert r["count"] == 0 and r["detected_share"] is None and r["oks_ap"] is None


def test_invalid_target_keypoints_are_ignored():
    t = _hand(0, 0)
    kp = t.keypoints.copy()
    kp[5:10, 2] = 0  # unlabelled (COCO v=0)
    kp[5:10, :2] = 0
    target = Instance(kp)
    pred = t.keypoints.copy()
    pred[5:10, :2] += 500  # wrong where the target has no label: must not matter
    s = PoseScorer("hand")
    s.add("img", [Instance(pred)], [target])
    r = s.result()
    assert r["pck_0.1"] == 1.0 and r["mean_error_px"] == 0.0


def test_wrong_keypoint_count_is_a_clear_error():
    s = PoseScorer("body")
    with pytest.raises(ValueError, match="img7: body instances need 17 keypoints, got 21"):
        s.add("img7", [], [_hand(0, 0)])
