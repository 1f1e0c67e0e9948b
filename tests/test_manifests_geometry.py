"""Crop geometry, heatmaps, codecs and pose conversions: the primitives prep and generation share."""

import numpy as np
import pytest

from manifests.codecs import (
    DecodeError,
    decode_heatmap,
    decode_image,
    decode_mask,
    encode_heatmap,
    encode_jpeg,
    encode_mask,
)
from manifests.geometry import CropBox, crop_image, heatmap_peaks, paste_crop, render_heatmap, square_crop_box
from manifests.pose import HAND_EDGES, mediapipe33_to_openpose18, to_openpose18


def test_crop_transform_is_exactly_invertible():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-50, 600, (21, 2)), rng.uniform(0, 1, (21, 1))], axis=1)
    box = square_crop_box(pts, size=512, margin=0.3)
    back = box.to_image(box.to_crop(pts))
    np.testing.assert_allclose(back, pts, atol=1e-9)
    np.testing.assert_array_equal(back[:, 2], pts[:, 2])  # scores pass through untouched


def test_square_crop_box_is_square_centred_and_contains_keypoints():
    pts = np.array([[100.0, 200.0], [140.0, 260.0], [120.0, 230.0]])
    box = square_crop_box(pts, size=64, margin=0.25)
    x0, y0, x1, y1 = box.box
    assert x1 - x0 == pytest.approx(y1 - y0) == pytest.approx(60 * 1.5)
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((120.0, 230.0))
    crop_pts = box.to_crop(pts)
    assert (crop_pts >= 0).all() and (crop_pts <= 64).all()


def test_crop_image_pads_outside_and_samples_inside():
    img = np.zeros((100, 100, 3), np.uint8)
    img[40:60, 40:60] = 255
    box = CropBox(-50, -50, 200, 200)  # image sits in the centre half of the crop
    out = crop_image(img, box, resample=0)
    assert out.shape == (200, 200, 3)
    assert out[:50].max() == 0 and out[:, :50].max() == 0  # padding
    assert out[100, 100].tolist() == [255, 255, 255]  # the white square at (50, 50) -> (100, 100)


def test_paste_crop_inverts_crop_image():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    box = CropBox(30.0, 20.0, 64.0, 64)  # 1:1 scale, so resampling is exact
    patch = crop_image(img, box, resample=0)
    placed, cov = paste_crop(np.zeros_like(img), patch, box, resample=0)
    assert cov.sum() == 64 * 64
    np.testing.assert_array_equal(placed[cov].reshape(64, 64, 3), img[20:84, 30:94])


def test_heatmap_peaks_sit_at_keypoints():
    rng = np.random.default_rng(2)
    kps = rng.uniform(4, 508, (21, 2))
    hm = render_heatmap(kps, crop_size=512, heatmap_size=64, sigma=1.5)
    assert hm.shape == (21, 64, 64) and hm.dtype == np.float32
    assert hm.max() <= 1.0 and hm.min() >= 0.0
    peaks = heatmap_peaks(hm, 512)
    assert np.abs(peaks - kps).max() <= 512 / 64 / 2 + 1e-6  # within half a heatmap cell


def test_heatmap_zero_score_channel_is_empty():
    kps = np.array([[10.0, 10.0, 1.0], [20.0, 20.0, 0.0]])
    hm = render_heatmap(kps, 64, 8, 1.0)
    assert hm[0].max() > 0.5 and hm[1].max() == 0


def test_codecs_round_trip():
    rng = np.random.default_rng(3)
    mask = rng.uniform(size=(33, 47)) > 0.5
    np.testing.assert_array_equal(decode_mask(encode_mask(mask)), mask)
    hm = rng.uniform(size=(21, 8, 8)).astype(np.float32)
    data, shape, dtype = encode_heatmap(hm)
    assert shape == [21, 8, 8] and dtype == "float16"
    np.testing.assert_allclose(decode_heatmap(data, shape, dtype), hm, atol=1e-3)
    img = np.full((16, 24, 3), 128, np.uint8)
    assert decode_image(encode_jpeg(img)).shape == (16, 24, 3)


def test_codecs_reject_bad_bytes_with_clear_errors():
    with pytest.raises(DecodeError, match="cannot decode image"):
        decode_image(b"not a jpeg")
    with pytest.raises(DecodeError, match="expected"):
        decode_heatmap(b"\x00" * 10, [21, 8, 8], "float16")


def test_openpose_conversion_maps_named_joints():
    kps = np.zeros((33, 3), np.float32)
    kps[:, 0] = np.arange(33)
    kps[:, 2] = 1.0
    op = mediapipe33_to_openpose18(kps)
    assert op.shape == (18, 3)
    assert op[4, 0] == 16 and op[7, 0] == 15  # right wrist, left wrist
    assert op[1, 0] == pytest.approx((11 + 12) / 2)  # neck = shoulders' midpoint
    kps[27, 2] = 0.1
    assert mediapipe33_to_openpose18(kps)[13, 2] == 0  # invisible left ankle is dropped


def test_pose_format_errors_are_clear():
    with pytest.raises(ValueError, match="unknown body keypoint format"):
        to_openpose18(np.zeros((18, 3)), "coco17")
    with pytest.raises(ValueError, match=r"\(33, 3\)"):
        mediapipe33_to_openpose18(np.zeros((18, 3)))


def test_hand_edges_form_a_tree_over_21_keypoints():
    nodes = {i for e in HAND_EDGES for i in e}
    assert nodes == set(range(21)) and len(HAND_EDGES) == 20


def test_keypoint_coverage_known_answers():
    from manifests.geometry import keypoint_coverage

    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    pts = np.array([[3.5, 3.5, 1], [5.2, 3.0, 1], [8.0, 8.0, 1], [3.0, 3.0, 0], [-2.0, 3.0, 1]])
    # visible points: on, next to the rim, far, off the frame (the score-0 point does not count)
    assert keypoint_coverage(mask, pts) == 1 / 4
    assert keypoint_coverage(mask, pts, grow=1) == 2 / 4
    assert keypoint_coverage(mask, pts[:, :2]) == 2 / 5  # no score column: every point counts
    # off the frame: a miss, or the nearest border pixel with outside="clip"
    edge = np.zeros((10, 10), bool)
    edge[:, 0] = True
    assert keypoint_coverage(edge, np.array([[-3.0, 5.0]])) == 0.0
    assert keypoint_coverage(edge, np.array([[-3.0, 5.0]]), outside="clip") == 1.0
    assert keypoint_coverage(mask, np.array([[3.0, 3.0, 0.0]])) == 0.0  # nothing visible


def test_hand_silhouette_draws_visible_bones_and_the_palm():
    from manifests.geometry import PALM, hand_silhouette
    from manifests.synthetic import synthetic_hand

    kps = synthetic_hand(np.random.default_rng(0), (50, 50), 60)
    full = hand_silhouette(kps, (100, 100), 3)
    assert all(full[int(round(y)), int(round(x))] for x, y, _ in kps)  # every joint is on the hand
    palm_centre = kps[list(PALM), :2].mean(axis=0).round().astype(int)
    assert full[palm_centre[1], palm_centre[0]]
    hidden = kps.copy()
    hidden[8, 2] = 0  # the index fingertip is not visible: its bone is not drawn
    assert hand_silhouette(hidden, (100, 100), 3).sum() < full.sum()
    assert hand_silhouette(kps, (100, 100), 7).sum() > full.sum()  # the stroke width is the caller's


def test_rescale_sigma_keeps_the_blob_size_relative_to_the_crop():
    from manifests.geometry import render_heatmap, rescale_sigma

    assert rescale_sigma(1.5, 64, 8) == 0.1875 and rescale_sigma(1.0, 8, 16) == 2.0
    kps = np.array([[32.0, 32.0, 1.0]] * 21)
    small, big = render_heatmap(kps, 64, 8, 1.0), render_heatmap(kps, 64, 16, rescale_sigma(1.0, 8, 16))
    # The same share of the heatmap is lit at both sizes.
    assert abs((small[0] > 0.5).mean() - (big[0] > 0.5).mean()) < 0.02
