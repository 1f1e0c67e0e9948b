import json

import numpy as np
from PIL import Image

from manifests.cli import main
from manifests.preview import make_preview
from manifests.reader import open_manifest
from manifests.stats import format_stats, manifest_stats


def test_stats_counts_and_distributions(synthetic_manifest):
    s = manifest_stats(str(synthetic_manifest))
    m = open_manifest(str(synthetic_manifest))
    hands = m.read("hands", ["handedness", "hand_size", "label"]).to_pydict()
    assert s["rows"] == {"images": 12, "hands": 15}
    assert s["images"]["counts"]["status"] == {"ok": 10, "no_hands": 2}
    assert s["images"]["counts"]["split"] == {"train": 10, "val": 2}
    assert s["hands"]["counts"]["handedness"] == {
        "right": hands["handedness"].count("right"),
        "left": hands["handedness"].count("left"),
    }
    d = s["hands"]["distributions"]["hand_size"]
    assert d["n"] == 15 and d["p0"] == min(hands["hand_size"]) and d["p100"] == max(hands["hand_size"])
    assert abs(d["p50"] - float(np.median(hands["hand_size"]))) < 1e-6
    assert sum(s["hands"]["hand_size_buckets"].values()) == 15
    json.dumps(s)  # JSON-ready
    text = format_stats(s)
    assert "images by status" in text and "hands by handedness" in text and "hand_size" in text


def test_with_body_counts_non_null_poses_across_row_groups(synthetic_manifest, tmp_path):
    from manifests.writer import ManifestWriter

    src = open_manifest(str(synthetic_manifest))
    images = src.read("images").to_pylist()
    for i in (0, 3, 4, 11):  # no body pose
        images[i]["body_keypoints"] = images[i]["body_score"] = None
    w = ManifestWriter(str(tmp_path / "m"), row_group_size=5)
    w.write_shard(0, {"images": images[:7], "hands": []})
    w.write_shard(1, {"images": images[7:], "hands": []})
    w.finalize(src.config)
    m = open_manifest(str(tmp_path / "m"))
    assert len(m.images.units()) == 3
    s = manifest_stats(m)
    assert s["images"]["with_body"] == 8 and "images with a body pose: 8" in format_stats(s)


def test_cli_stats_json(synthetic_manifest, capsys):
    assert main(["stats", str(synthetic_manifest), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"]["counts"]["status"]["ok"] == 10
    assert main(["stats", str(synthetic_manifest / "hands")]) == 0
    assert "hands by label" in capsys.readouterr().out


def test_preview_sheet(synthetic_manifest, tmp_path, capsys):
    out = tmp_path / "sub" / "sheet.png"
    assert main(["preview", str(synthetic_manifest), "--out", str(out), "--n", "10", "--images", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    sheet = np.asarray(Image.open(out))
    direct = make_preview(str(synthetic_manifest), n=10, images=3)
    np.testing.assert_array_equal(sheet, direct)  # deterministic for a seed
    # 10 tiles of 160 px in rows of 8 (+ caption strips) above a row of image tiles, under two title bars.
    assert sheet.shape[1] == 8 * 160 and sheet.shape[0] > 2 * 160 + 240
    # The skeleton colours of manifests.draw are present (pure hues do not occur in the synthetic photos).
    assert (np.abs(sheet.astype(int) - (255, 0, 0)).sum(-1) < 30).any()
