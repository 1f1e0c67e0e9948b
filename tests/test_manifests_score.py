"""`handfirst-manifests score`: a manifest's hands against COCO keypoint truth (keypoints_gt)."""

import json

import numpy as np
import pytest

from manifests.matching import MatchConfig
from manifests.score import TruthError, format_score, load_truth, score_manifest
from manifests.writer import ManifestWriter

SETS = {"freihand": "test_freihand.json", "onehand10k": "test_onehand10k.json"}


def _truth(data_dir, name):
    return data_dir / "keypoints_gt" / name / SETS[name]


def manifest_from_truth(root, truth_path, shift=None, drop=(), swap=False, error=()):
    """A manifest whose hands are the truth's own keypoints, optionally perturbed.

    shift: callable (21, 3) -> (21, 3) applied to every hand; drop: file names whose hands are left
    out; error: file names written as status=error rows.
    """
    data = json.loads(truth_path.read_text())
    images, hands = [], []
    for im in data["images"]:
        image_id = f"gt_{im['id']}"
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        rows = []
        if im["file_name"] not in drop and im["file_name"] not in error:
            for j, a in enumerate(anns):
                kp = np.asarray(a["keypoints"], float).reshape(21, 3)
                if shift is not None:
                    kp = shift(kp)
                rows.append(
                    {
                        "hand_id": f"{image_id}_h{j}",
                        "image_id": image_id,
                        "hand_index": j,
                        "handedness": "left" if swap else "right",
                        "handedness_score": 0.9,
                        "keypoints": kp.tolist(),
                        "keypoint_source": "annotation",
                    }
                )
        hands += rows
        status = "error" if im["file_name"] in error else ("ok" if rows else "no_hands")
        images.append(
            {
                "image_id": image_id,
                "source_uri": str(truth_path.parent / im["file_name"]),
                "dataset": "coco",
                "status": status,
                "num_hands": len(rows),
                "width": im["width"],
                "height": im["height"],
            }
        )
    w = ManifestWriter(str(root))
    w.write_shard(0, {"images": images, "hands": hands})
    w.finalize({})
    return root


@pytest.mark.data
@pytest.mark.parametrize("name", sorted(SETS))
def test_truth_against_itself_is_perfect(tmp_path, data_dir, name):
    truth = _truth(data_dir, name)
    r = score_manifest(str(manifest_from_truth(tmp_path / "m", truth)), str(truth))
    n = len(json.loads(truth.read_text())["annotations"])
    assert r["matched"] == r["truth_hands"] == n
    assert r["recall"] == 1.0 and r["precision"] == 1.0
    assert r["pck_0.1"] == 1.0 and r["pck_0.2"] == 1.0 and r["mean_error_px"] == pytest.approx(0.0, abs=1e-3)
    assert r["oks_ap"] == pytest.approx(1.0)
    assert r["images"] == {
        "scored": len(json.loads(truth.read_text())["images"]),
        "not_in_manifest": 0,
        "without_truth": 0,
        "error": 0,
    }


@pytest.mark.data
def test_known_perturbation_lowers_pck_by_known_amount(tmp_path, data_dir):
    truth = _truth(data_dir, "freihand")
    hands, _ = load_truth(str(truth))
    sizes = {n: h[0].box_size() for n, h in hands.items()}
    assert all(len(h) == 1 for h in hands.values())

    # Move the 5 fingertips of every hand by 0.15 x its box size: they fail PCK@0.1, pass PCK@0.2.
    def shift(kp):
        kp = kp.copy()
        x0, y0 = kp[kp[:, 2] > 0, :2].min(axis=0)
        x1, y1 = kp[kp[:, 2] > 0, :2].max(axis=0)
        kp[[4, 8, 12, 16, 20], 1] += 0.15 * max(x1 - x0, y1 - y0)
        return kp

    r = score_manifest(str(manifest_from_truth(tmp_path / "m", truth, shift=shift)), str(truth))
    valid = sum(h[0].num_valid for h in hands.values())
    assert r["recall"] == 1.0
    assert r["pck_0.1"] == pytest.approx(1 - 5 * len(hands) / valid, rel=1e-4)
    assert r["pck_0.2"] == 1.0
    assert r["mean_error_px"] == pytest.approx(sum(5 * 0.15 * s for s in sizes.values()) / valid, rel=1e-4)
    assert r["oks_ap"] < 1.0


@pytest.mark.data
def test_dropped_error_and_missing_images(tmp_path, data_dir):
    truth = _truth(data_dir, "onehand10k")
    data = json.loads(truth.read_text())
    names = [im["file_name"] for im in data["images"]]
    root = manifest_from_truth(tmp_path / "m", truth, drop={names[0]}, error={names[1]}, swap=True)
    r = score_manifest(str(root), str(truth))
    assert r["truth_hands"] == 4 and r["matched"] == 2 and r["manifest_hands"] == 2
    assert r["recall"] == 0.5 and r["precision"] == 1.0 and r["pck_0.2"] == 1.0
    assert r["images"]["error"] == 1
    assert r["handedness_accuracy"] is None  # this truth names no handedness
    text = format_score(r)
    assert "recall 50.0%" in text and "PCK@0.2 100.0%" in text


def test_gate_and_truth_errors(tmp_path):
    truth = tmp_path / "t.json"
    kp = np.c_[np.random.default_rng(0).uniform(0, 50, (21, 2)), np.full(21, 2)]
    truth.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64}],
                "annotations": [
                    {"id": 5, "image_id": 1, "keypoints": kp.ravel().tolist(), "handedness": "left"}
                ],
            }
        )
    )
    (tmp_path / "a.jpg").write_bytes(b"")
    far = manifest_from_truth(tmp_path / "far", truth, shift=lambda k: k + [40, 0, 0])
    assert score_manifest(str(far), str(truth))["matched"] == 0
    r = score_manifest(str(far), str(truth), MatchConfig(gate=2.0))
    assert r["matched"] == 1 and r["handedness_accuracy"] == 0.0  # truth says left, manifest right
    same = manifest_from_truth(tmp_path / "same", truth, swap=True)
    assert score_manifest(str(same), str(truth))["handedness_accuracy"] == 1.0

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"id": 9, "image_id": 1, "keypoints": [1, 2, 2]}],
            }
        )
    )
    with pytest.raises(TruthError, match=r"annotations\[0\] \(id 9\): expected 63 keypoint values, got 3"):
        load_truth(str(bad))
    with pytest.raises(TruthError, match="not a COCO file"):
        (tmp_path / "x.json").write_text("[]")
        load_truth(str(tmp_path / "x.json"))


@pytest.mark.slow  # a prep run with MediaPipe
@pytest.mark.data
def test_cli_scores_a_prep_manifest_of_onehand10k(tmp_path, data_dir, capsys):
    """The real pipeline: prep detects the hands of the onehand10k photos; `score` measures them."""
    import prep
    from manifests.cli import main

    truth = _truth(data_dir, "onehand10k")
    out = tmp_path / "m"
    prep.run(
        input=str(truth.parent),
        out=str(out),
        format="coco",
        workers=1,
        mask_method="none",
        crop_size=64,
        progress=False,
    )
    assert main(["score", str(out), "--truth", str(truth), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert {"recall", "precision", "pck_0.1", "pck_0.2", "mean_error_px", "matched"} <= set(r)
    # Measured with MediaPipe 0.10.14: recall 1.0, precision 1.0, PCK@0.1 0.92, PCK@0.2 0.98, 9.9 px.
    assert r["recall"] == 1.0 and r["precision"] == 1.0 and r["matched"] == 4
    assert r["pck_0.2"] >= 0.9 and r["pck_0.1"] >= 0.8
    assert main(["score", str(out), "--truth", str(truth)]) == 0
    assert "recall 100.0%" in capsys.readouterr().out
    other = _truth(data_dir, "freihand")
    assert main(["score", str(out), "--truth", str(other)]) == 1
    assert "pairs with an image" in capsys.readouterr().err
