"""Source adapters on the shared sample data and on small trees built in tmp_path."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from prep.annotate import to_pixels
from prep.config import PrepConfig
from prep.sources import SOURCES, AnnotationFileError, load_records
from prep.sources.base import safe_id, safe_relpath
from prep.sources.hagrid import split_for_user
from prep.sources.interhand import INTERHAND_TO_MEDIAPIPE, to_mediapipe

SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")


def records(**kw):
    return load_records(PrepConfig(**kw))


# ---------------------------------------------------------------- folder


def test_folder_hagrid_mini_labels_ids_and_order(data_dir):
    recs = records(input=str(data_dir / "hagrid_mini"), label_from_dir=True)
    assert len(recs) == 40
    assert Counter(r.label for r in recs) == {"call": 10, "four": 10, "none": 10, "rock": 10}
    ids = [r.image_id for r in recs]
    assert len(set(ids)) == 40 and all(SAFE_ID.match(i) for i in ids)
    assert ids == sorted(ids)
    assert ids[0] == "call__0413d5c5-f5ba-476f-a921-ea5e967692a9"
    for r in recs:  # the id is the path relative to the root, and the URI is that file
        assert r.source_uri.endswith("/" + r.image_id.replace("__", "/") + ".jpg")
        assert r.dataset == "folder" and r.hands == [] and r.error is None
    assert [r.image_id for r in records(input=str(data_dir / "hagrid_mini"))] == ids  # deterministic
    assert {r.label for r in records(input=str(data_dir / "hagrid_mini"))} == {None}


def test_folder_skips_non_images_and_hidden_and_keeps_clashing_names_distinct(tmp_path):
    (tmp_path / "sub dir").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ["a.jpg", "a.png", "sub dir/b c.JPG", ".hidden/x.jpg", "._a.jpg", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    recs = records(input=str(tmp_path), label_from_dir=True, limit=None)
    assert sorted(r.source_uri.rsplit("/", 1)[-1] for r in recs) == ["a.jpg", "a.png", "b c.JPG"]
    ids = [r.image_id for r in recs]
    assert len(set(ids)) == 3 and all(SAFE_ID.match(i) for i in ids)
    assert sum(i.startswith("a-") for i in ids) == 2  # a.jpg / a.png get distinct hashed suffixes
    spaced = next(r for r in recs if r.source_uri.endswith("b c.JPG"))
    assert spaced.label == "sub dir" and spaced.image_id.startswith("sub_dir__b_c-")
    top = next(r for r in recs if r.source_uri.endswith("a.jpg"))
    assert top.label is None  # no parent folder below the root


def test_missing_input_is_a_clear_error(tmp_path):
    for fmt in SOURCES:
        with pytest.raises(FileNotFoundError, match="not found|no "):
            records(input=str(tmp_path / "nope"), format=fmt)
    with pytest.raises(ValueError, match="unknown input format 'voc'"):
        records(input=str(tmp_path), format="voc")


def test_limit_takes_a_prefix_of_the_order(data_dir):
    full = records(input=str(data_dir / "hagrid_mini"))
    assert [r.image_id for r in records(input=str(data_dir / "hagrid_mini"), limit=7)] == [
        r.image_id for r in full[:7]
    ]


# ---------------------------------------------------------------- coco


@pytest.mark.parametrize("name,count", [("freihand", 8), ("onehand10k", 4)])
def test_coco_keypoints_match_the_json(data_dir, name, count):
    folder = data_dir / "keypoints_gt" / name
    data = json.loads(next(folder.glob("*.json")).read_text())
    anns = {a["image_id"]: a for a in data["annotations"]}
    recs = records(input=str(folder), format="coco")
    assert len(recs) == count
    for r, img in zip(recs, data["images"]):
        assert r.image_id == str(img["id"]) and r.split == "test" and r.dataset == "coco"
        assert r.source_uri.endswith("/" + img["file_name"])
        with Image.open(r.source_uri) as im:
            assert im.size == (img["width"], img["height"])
        (hand,) = r.hands
        np.testing.assert_allclose(
            hand.keypoints, np.asarray(anns[img["id"]]["keypoints"], dtype=np.float32).reshape(21, 3)
        )
        x, y, w, h = anns[img["id"]]["bbox"]
        assert hand.bbox == [x, y, x + w, y + h]
        visible = hand.keypoints[hand.keypoints[:, 2] > 0]
        assert (visible[:, 0] >= 0).all() and (visible[:, 0] <= img["width"]).all()
        assert (visible[:, 1] >= 0).all() and (visible[:, 1] <= img["height"]).all()


def test_coco_json_file_as_input_and_annotations_option(data_dir):
    folder = data_dir / "keypoints_gt" / "freihand"
    by_file = records(input=str(folder / "test_freihand.json"), format="coco")
    by_option = records(input=str(folder), format="coco", annotations="test_freihand.json")
    assert [r.source_uri for r in by_file] == [r.source_uri for r in by_option]
    assert len(by_file) == 8


def _coco(tmp_path, images, annotations=()):
    (tmp_path / "ok.jpg").write_bytes(b"x")
    path = tmp_path / "train_hands.json"
    path.write_text(json.dumps({"images": images, "annotations": list(annotations)}))
    return path


@pytest.mark.parametrize(
    "file_name,reason",
    [
        ("../outside.jpg", "leaves the dataset root"),
        ("a/../../outside.jpg", "leaves the dataset root"),
        ("..\\outside.jpg", "leaves the dataset root"),
        ("/etc/passwd", "absolute"),
        ("C:\\x.jpg", "absolute"),
        ("file:///etc/passwd", "absolute"),
        ("", "empty"),
    ],
)
def test_coco_path_traversal_becomes_an_error_record(tmp_path, file_name, reason):
    _coco(tmp_path, [{"id": 1, "file_name": "ok.jpg"}, {"id": 2, "file_name": file_name}])
    ok, bad = records(input=str(tmp_path), format="coco")
    assert ok.error is None and ok.source_uri == f"{tmp_path}/ok.jpg" and ok.split == "train"
    assert bad.image_id == "2" and reason in bad.error and "train_hands.json images[1]" in bad.error


def test_safe_relpath_keeps_inner_dots_inside():
    assert safe_relpath("a/./b.jpg", "/root", "x") == "/root/a/b.jpg"
    assert safe_relpath("a..b.jpg", "/root", "x") == "/root/a..b.jpg"  # dots in a name are no traversal
    assert safe_id("call/x y.jpg").startswith("call__x_y.jpg-") and safe_id("call/abc") == "call__abc"
    assert safe_id("a__b") != safe_id("a/b") == "a__b"  # a name holding the separator cannot meet a path


def test_coco_malformed_json_names_the_file(tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [{"id": 1, "file_name": "a.jpg"},')
    with pytest.raises(AnnotationFileError, match=r"broken\.json: malformed annotation JSON"):
        records(input=str(tmp_path), format="coco")
    (tmp_path / "broken.json").write_text('{"categories": []}')
    with pytest.raises(AnnotationFileError, match=r"broken\.json: not COCO-style"):
        records(input=str(tmp_path), format="coco")


def test_coco_malformed_entries_become_error_records(tmp_path):
    good = {"image_id": 1, "keypoints": [1.0] * 63, "bbox": [0, 0, 2, 2]}
    _coco(
        tmp_path,
        [
            {"id": 1, "file_name": "ok.jpg"},
            {"id": 2, "file_name": "ok.jpg"},
            {"id": 3, "file_name": "ok.jpg"},
            {"id": 1, "file_name": "ok.jpg"},
            {"id": 4, "file_name": "ok.jpg"},
        ],
        [
            good,
            {"image_id": 2, "keypoints": [1.0] * 60},
            {"image_id": 3, "keypoints": [1] * 63, "bbox": [1, 2]},
            {"image_id": 4, "keypoints": [{"x": 1}] * 63},
        ],
    )
    recs = records(input=str(tmp_path), format="coco")
    assert [r.image_id for r in recs] == ["1", "2", "3", "1__dup1", "4"]
    assert recs[0].error is None and recs[0].hands[0].bbox == [0, 0, 2, 2]
    assert (
        recs[1].error == "train_hands.json annotations[1]: 60 keypoint values, expected 63 (21 x [x, y, v])"
    )
    assert "annotations[2]: bbox must be 4 numbers" in recs[2].error
    assert "duplicate image_id '1'" in recs[3].error
    assert recs[4].error.startswith("train_hands.json images[4]: TypeError:")


# ---------------------------------------------------------------- interhand


def test_interhand_reorder_to_mediapipe():
    joints = np.arange(21)  # InterHand index of each joint
    mp = to_mediapipe(joints)
    assert mp[0] == 20  # wrist is last in InterHand
    assert list(mp[1:5]) == [3, 2, 1, 0]  # thumb base..tip = InterHand thumb entries reversed
    assert list(mp[17:21]) == [19, 18, 17, 16]  # little finger
    assert sorted(INTERHAND_TO_MEDIAPIPE) == list(range(21))


def test_interhand_projection_lands_on_the_hands(data_dir):
    folder = data_dir / "keypoints_gt" / "interhand2.6m"
    data = json.loads((folder / "test_interhand2.6m_data.json").read_text())
    union_box = {str(a["image_id"]): a["bbox"] for a in data["annotations"]}
    recs = records(input=str(folder), format="interhand")
    assert [r.image_id for r in recs] == [str(i["id"]) for i in data["images"]]
    assert [[h.handedness for h in r.hands] for r in recs] == [
        ["right", "left"],
        ["right", "left"],
        ["left"],
        ["right"],
    ]
    for r, img in zip(recs, data["images"]):
        assert r.subject_id == str(img["subject"])
        grey = np.asarray(Image.open(r.source_uri).convert("L"), dtype=np.float64)
        assert grey.shape == (img["height"], img["width"])
        x0, y0, w, h = union_box[r.image_id]
        for hand in r.hands:
            kp = hand.keypoints[hand.keypoints[:, 2] > 0]
            assert len(kp) == 21
            # inside the image and inside the dataset's own 2D hand box (a 3 px tolerance)
            assert (kp[:, 0] >= 0).all() and (kp[:, 0] < img["width"]).all()
            assert (kp[:, 1] >= 0).all() and (kp[:, 1] < img["height"]).all()
            assert (kp[:, 0] >= x0 - 3).all() and (kp[:, 0] <= x0 + w + 3).all()
            assert (kp[:, 1] >= y0 - 3).all() and (kp[:, 1] <= y0 + h + 3).all()
            # on the lit hand, not the dark studio background
            at_points = np.median(grey[kp[:, 1].astype(int), kp[:, 0].astype(int)])
            assert at_points > 1.5 * grey.mean()
            # MediaPipe order: each fingertip is farther from the wrist than its base joint
            d = np.linalg.norm(kp[:, :2] - kp[0, :2], axis=1)
            for base, tip in [(5, 8), (9, 12), (13, 16), (17, 20)]:
                assert d[tip] > d[base]


def test_interhand_missing_joints_become_an_error_record(tmp_path, data_dir):
    src = data_dir / "keypoints_gt" / "interhand2.6m"
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    joints = json.loads((tmp_path / "test_interhand2.6m_joint_3d.json").read_text())
    del joints["4"]["2017"]
    (tmp_path / "test_interhand2.6m_joint_3d.json").write_text(json.dumps(joints))
    recs = records(input=str(tmp_path), format="interhand")
    assert [r.error is None for r in recs] == [True, True, True, False]
    assert "no 3D joints for capture 4 frame 2017" in recs[3].error


# ---------------------------------------------------------------- hagrid


def make_hagrid(root, data_dir, layout):
    """A HaGRID tree: layout = {(split, gesture): [(image id, user id, n hands), ...]}.

    The images are copies of hagrid_mini photos (made here, in tmp only)."""
    photos = sorted((data_dir / "hagrid_mini").rglob("*.jpg"))
    n = 0
    for (split, gesture), entries in layout.items():
        ann = {}
        (root / gesture).mkdir(parents=True, exist_ok=True)
        for image_id, user, hands in entries:
            shutil.copy(photos[n % len(photos)], root / gesture / f"{image_id}.jpg")
            n += 1
            boxes = [[0.1 + 0.4 * i, 0.2, 0.2, 0.25] for i in range(hands)]
            marks = [[[0.1 + 0.4 * i + 0.01 * k, 0.2 + 0.01 * k] for k in range(21)] for i in range(hands)]
            ann[image_id] = {
                "bboxes": boxes,
                "labels": [gesture] + ["no_gesture"] * (hands - 1),
                "user_id": user,
                "landmarks": marks,
                "leading_hand": "left",
                "united_bbox": None,
            }
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split / f"{gesture}.json").write_text(json.dumps(ann))


LAYOUT = {
    ("train", "call"): [(f"c{i:02d}", f"user{i % 7}", 1 + i % 2) for i in range(14)],
    ("test", "call"): [(f"t{i:02d}", f"user{i % 4}", 1) for i in range(6)],  # users also in train/call
    ("val", "four"): [(f"f{i:02d}", f"user{(i * 3) % 9}", 2) for i in range(9)],
}


def test_hagrid_split_by_user_and_hands(tmp_path, data_dir):
    make_hagrid(tmp_path, data_dir, LAYOUT)
    recs = records(input=str(tmp_path), format="hagrid")
    assert len(recs) == 29 and all(r.error is None for r in recs)
    splits = defaultdict(set)
    for r in recs:
        splits[r.subject_id].add(r.split)
        assert r.split == split_for_user(r.subject_id, PrepConfig().split_fractions)
    assert all(len(s) == 1 for s in splits.values())  # nobody in two splits
    by_folder = {
        r.image_id: r.split for r in records(input=str(tmp_path), format="hagrid", hagrid_split="annotation")
    }
    assert by_folder["t00"] == "test" and by_folder["c00"] == "train" and by_folder["f00"] == "val"
    assert {r.split for r in records(input=str(tmp_path), format="hagrid", split="all")} == {"all"}

    rec = next(r for r in recs if r.image_id == "c01")
    assert rec.label == "call" and rec.normalized and len(rec.hands) == 2
    assert [h.handedness for h in rec.hands] == ["left", None]  # leading_hand only for the gesture hand
    np.testing.assert_allclose(rec.hands[0].bbox, [0.1, 0.2, 0.3, 0.45])
    # the annotator resolves them to pixels once it knows the decoded size
    with Image.open(rec.source_uri) as im:
        w, h = im.size
    px = to_pixels(rec, w, h)
    np.testing.assert_allclose(px[0].bbox, [0.1 * w, 0.2 * h, 0.3 * w, 0.45 * h], rtol=1e-6)
    np.testing.assert_allclose(px[1].keypoints[3, :2], [(0.5 + 0.03) * w, (0.2 + 0.03) * h], rtol=1e-5)
    assert rec.hands[0].bbox == [0.1, 0.2, 0.1 + 0.2, 0.2 + 0.25]  # the record itself is unchanged


def test_split_for_user_is_stable_and_follows_fractions():
    fr = {"train": 0.8, "val": 0.1, "test": 0.1}
    counts = Counter(split_for_user(f"user-{i}", fr) for i in range(4000))
    assert abs(counts["train"] / 4000 - 0.8) < 0.03 and abs(counts["val"] / 4000 - 0.1) < 0.02
    assert split_for_user("abc", fr) == split_for_user("abc", dict(fr))


def test_hagrid_traversal_and_malformed_entries(tmp_path, data_dir):
    make_hagrid(tmp_path, data_dir, {("train", "call"): [("good", "u1", 1)]})
    ann_path = tmp_path / "annotations" / "train" / "call.json"
    ann = json.loads(ann_path.read_text())
    ann["../../escape"] = ann["good"]
    ann["bad-count"] = {**ann["good"], "labels": ["call", "call"]}
    ann["bad-marks"] = {**ann["good"], "landmarks": [[[0.1, 0.2]] * 5]}
    ann_path.write_text(json.dumps(ann))
    recs = {r.image_id: r for r in records(input=str(tmp_path), format="hagrid")}
    assert recs["good"].error is None
    escape = next(r for i, r in recs.items() if i.startswith(".._.._escape") or "escape" in i)
    assert SAFE_ID.match(escape.image_id) and "leaves the dataset root" in escape.error
    assert "annotations/train/call.json['bad-count']: 1 bboxes but 2 labels" in recs["bad-count"].error
    assert "expected 21 [x, y] points" in recs["bad-marks"].error


def test_hagrid_malformed_file_names_the_file(tmp_path, data_dir):
    make_hagrid(tmp_path, data_dir, {("train", "call"): [("good", "u1", 1)]})
    (tmp_path / "annotations" / "train" / "four.json").write_text("{not json")
    with pytest.raises(AnnotationFileError, match=r"annotations/train/four\.json: malformed annotation JSON"):
        records(input=str(tmp_path), format="hagrid")
    (tmp_path / "annotations" / "train" / "four.json").write_text("[1, 2]")
    with pytest.raises(AnnotationFileError, match=r"four\.json: expected an object keyed by image id"):
        records(input=str(tmp_path), format="hagrid")


def test_sources_read_fsspec_urls(data_dir):
    import fsspec

    fs = fsspec.filesystem("memory")
    photos = sorted((data_dir / "keypoints_gt" / "freihand").glob("*.jpg"))[:2]
    for i, p in enumerate(photos):
        fs.pipe(f"/hf-test/imgs/g{i}/{p.name}", p.read_bytes())
    fs.pipe(
        "/hf-test/imgs/ann.json",
        json.dumps({"images": [{"id": 7, "file_name": f"g0/{photos[0].name}"}]}).encode(),
    )
    folder = records(input="memory://hf-test/imgs", label_from_dir=True)
    assert [r.source_uri for r in folder] == [
        f"memory:///hf-test/imgs/g{i}/{p.name}" for i, p in enumerate(photos)
    ]
    assert [r.label for r in folder] == ["g0", "g1"]
    with fsspec.open(folder[1].source_uri, "rb") as f:
        assert f.read() == photos[1].read_bytes()
    (coco,) = records(input="memory://hf-test/imgs", format="coco")
    assert coco.image_id == "7" and coco.source_uri == folder[0].source_uri
    fs.rm("/hf-test", recursive=True)
