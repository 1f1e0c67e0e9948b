"""Annotation-quality helpers: per-keypoint accuracy (matching/score) and mask-vs-keypoint agreement."""

import json

import numpy as np
import pytest
from manifest_edits import rewrite

from manifests.codecs import encode_mask
from manifests.mask_agreement import AgreementConfig, hand_mask_agreement, mask_keypoint_agreement, silhouette
from manifests.matching import Instance, PoseScorer, keypoint_summary, wilson_interval
from manifests.score import score_manifest
from manifests.writer import ManifestWriter


def test_wilson_interval_known_values():
    low, high = wilson_interval(np.array([8, 0, 5]), np.array([10, 4, 0]))
    assert low[0] == pytest.approx(0.4902, abs=1e-4) and high[0] == pytest.approx(0.9433, abs=1e-4)
    assert low[1] == pytest.approx(0.0, abs=1e-12) and 0 < high[1] < 1  # 0 of 4: still a real upper bound
    assert np.isnan(low[2]) and np.isnan(high[2])


def test_keypoint_summary_counts_means_and_pck():
    errors = np.full((3, 21), 0.05)
    errors[:, 4] = [0.05, 0.15, 0.25]  # thumb tip: 1 of 3 within 0.1, 2 of 3 within 0.2
    errors[2, 8] = np.nan  # one hand lacks the index tip
    errors[:, 20] = np.nan  # no hand has the little tip
    s = keypoint_summary(errors, thresholds=(0.1, 0.2))
    assert s["n"][0] == 3 and s["n"][8] == 2 and s["n"][20] == 0
    assert s["mean_error"][4] == pytest.approx(0.15)
    assert s["sem_error"][4] == pytest.approx(0.1 / np.sqrt(3))
    assert s["pck_0.1"][4] == pytest.approx(1 / 3) and s["pck_0.2"][4] == pytest.approx(2 / 3)
    assert s["pck_0.1"][8] == 1.0 and s["pck_0.1_low"][8] < 1.0 <= s["pck_0.1_high"][8] + 1e-12
    assert s["mean_error"][20] is None and s["pck_0.1"][20] is None and s["pck_0.1_low"][20] is None
    json.dumps(s)  # JSON-ready


def _hand(rng, offset=0.0):
    kp = np.c_[rng.uniform(10, 110, (21, 2)), np.full(21, 2.0)]
    kp[:, 0] += offset
    return kp


def test_scorer_keypoint_errors_keep_keypoint_identity():
    rng = np.random.default_rng(0)
    truth = _hand(rng)
    size = Instance(truth).box_size()
    pred = truth.copy()
    pred[12, 1] += 0.3 * size  # middle tip off by 0.3 hand sizes
    truth_partial = truth.copy()
    truth_partial[3, 2] = 0  # thumb IP not labelled
    scorer = PoseScorer("hand")
    scorer.add("a", [Instance(pred)], [Instance(truth_partial)])
    e = scorer.keypoint_errors()
    assert e.shape == (1, 21)
    assert np.isnan(e[0, 3]) and e[0, 12] == pytest.approx(0.3 * size / Instance(truth_partial).box_size())
    assert np.nansum(e) == pytest.approx(e[0, 12])
    per = scorer.per_keypoint()
    assert per["n"][3] == 0 and per["pck_0.2"][12] == 0.0 and per["pck_0.2"][11] == 1.0
    assert PoseScorer("hand").keypoint_errors().shape == (0, 21)


def _truth_and_manifest(tmp_path, name, hands):
    """A COCO truth file with one image per hand and a manifest whose hands are `shift`ed copies."""
    images, anns, rows, hand_rows = [], [], [], []
    for i, (truth, pred) in enumerate(hands):
        images.append({"id": i, "file_name": f"{name}{i}.jpg", "width": 128, "height": 128})
        anns.append({"id": i, "image_id": i, "keypoints": truth.ravel().tolist()})
        rows.append(
            {
                "image_id": f"{name}{i}",
                "source_uri": f"/x/{name}{i}.jpg",
                "dataset": "coco",
                "status": "ok",
                "num_hands": 1,
                "width": 128,
                "height": 128,
            }
        )
        hand_rows.append(
            {
                "hand_id": f"{name}{i}_h0",
                "image_id": f"{name}{i}",
                "hand_index": 0,
                "keypoints": pred.tolist(),
            }
        )
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    w = ManifestWriter(str(tmp_path / name))
    w.write_shard(0, {"images": rows, "hands": hand_rows})
    w.finalize({})
    return str(tmp_path / name), str(path)


def test_score_manifest_pools_truth_sets_into_one_scorer(tmp_path):
    rng = np.random.default_rng(1)
    exact = [(h, h) for h in (_hand(rng), _hand(rng))]
    off = []
    for h in (_hand(rng),):
        p = h.copy()
        p[4, 0] += 0.15 * Instance(h).box_size()  # thumb tip: fails PCK@0.1, passes PCK@0.2
        off.append((h, p))
    a = _truth_and_manifest(tmp_path, "a", exact)
    b = _truth_and_manifest(tmp_path, "b", off)
    alone = score_manifest(*b)
    assert alone["per_keypoint"]["n"][4] == 1 and alone["per_keypoint"]["pck_0.1"][4] == 0.0
    scorer = PoseScorer("hand")
    first = score_manifest(*a, scorer=scorer)
    assert first["matched"] == 2 and first["per_keypoint"]["pck_0.1"][4] == 1.0
    pooled = score_manifest(*b, scorer=scorer)
    assert pooled["matched"] == 3 and pooled["images"]["scored"] == 3
    assert pooled["per_keypoint"]["n"][4] == 3 and pooled["per_keypoint"]["pck_0.1"][4] == pytest.approx(
        2 / 3
    )
    assert pooled["per_keypoint"]["pck_0.2"][4] == 1.0
    assert scorer.keypoint_errors().shape == (3, 21)


def test_mask_keypoint_agreement_figures():
    # 21 keypoints on a horizontal line from x=10 to x=50: the silhouette is one stroke 5 px wide.
    kps = np.c_[np.linspace(10, 50, 21), np.full(21, 40.0)]
    shape = (80, 80)
    sil = silhouette(kps, shape, finger_width=0.12)
    ys, xs = np.nonzero(sil)
    assert (
        ys.min() >= 37 and ys.max() <= 43 and xs.min() >= 7 and xs.max() <= 53
    )  # round caps of a 5 px stroke
    r = mask_keypoint_agreement(sil, kps)
    assert r["coverage"] == 1.0 and r["area_ratio"] == 1.0 and r["silhouette_area"] == sil.sum()
    empty = mask_keypoint_agreement(np.zeros(shape, bool), kps)
    assert empty["coverage"] == 0.0 and empty["area_ratio"] == 0.0
    full = mask_keypoint_agreement(np.ones(shape, bool), kps)
    assert full["area_ratio"] == pytest.approx(6400 / sil.sum())
    # A mask that stops just short of the last keypoint: covered only thanks to the tolerance (2 px here).
    short = sil.copy()
    short[:, 49:] = False
    assert mask_keypoint_agreement(short, kps, tolerance=0.0)["coverage"] == pytest.approx(20 / 21)
    assert mask_keypoint_agreement(short, kps, tolerance=0.05)["coverage"] == 1.0
    # Keypoints outside the crop never count as covered, even by a full mask.
    outside = kps + [0, 45]
    assert mask_keypoint_agreement(np.ones(shape, bool), outside)["coverage"] == 0.0


def test_hand_mask_agreement_flags_broken_masks(synthetic_manifest, tmp_path):
    rows = hand_mask_agreement(synthetic_manifest)
    assert rows and all(r["disagrees"] is None for r in rows), [
        r["disagrees"] for r in rows if r["disagrees"]
    ]
    assert {"hand_id", "coverage", "area_ratio", "mask_method", "hand_size"} <= set(rows[0])
    victims = {rows[0]["hand_id"]: "empty", rows[1]["hand_id"]: "full"}

    def edit(idx, images, hands):
        for h in hands:
            kind = victims.get(h["hand_id"])
            if kind:
                s = h["crop_size"]
                h["mask"] = encode_mask(np.full((s, s), kind == "full"))
        return images, hands

    broken = rewrite(synthetic_manifest, tmp_path / "broken", edit)
    flagged = {r["hand_id"]: r["disagrees"] for r in hand_mask_agreement(broken) if r["disagrees"]}
    assert set(flagged) == set(victims)
    assert "0% of keypoints on the mask" in flagged[rows[0]["hand_id"]]
    assert "leaks" in flagged[rows[1]["hand_id"]]
    strict = hand_mask_agreement(
        synthetic_manifest, AgreementConfig(max_area_ratio=0.5)
    )  # synthetic: 0.8-1.1
    assert all("leaks" in r["disagrees"] for r in strict)
