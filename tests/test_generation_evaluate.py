"""`generation.evaluate`: real photos scored against their own prep annotations, perturbed targets,
generated folders with misses, image-quality metrics with small models, and the comparison table."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from manifests.reader import open_manifest
from manifests.writer import ManifestWriter

LIMIT = 8  # images per evaluation: detection dominates and costs ~0.1 s per image per core
REQUIRED_POSE_KEYS = {"detected_share", "pck_0.1", "pck_0.2", "mean_error_px", "oks_ap", "count"}


@pytest.fixture(scope="module")
def eval_manifest(request, data_dir, tmp_path_factory) -> Path:
    """A prep manifest of hagrid_mini: the shared session fixture if there is one, else a small one."""
    try:
        return Path(request.getfixturevalue("hagrid_manifest"))
    except pytest.FixtureLookupError:
        pass
    import prep

    out = tmp_path_factory.mktemp("eval") / "hagrid"
    prep.run(
        input=str(data_dir / "hagrid_mini"),
        out=str(out),
        label_from_dir=True,
        limit=2 * LIMIT,
        workers=1,
        shard_size=LIMIT,
        mask_method="none",
        crop_size=64,
        progress=False,
    )
    return out


def _rewrite(src: Path, dst: Path, hand_fn) -> Path:
    """Copy manifest `src` to `dst` with every hands row passed through `hand_fn(row) -> row`."""
    m = open_manifest(str(src))
    images = m.read("images").to_pylist()
    hands = [hand_fn(dict(r)) for r in m.read("hands").to_pylist()]
    w = ManifestWriter(str(dst))
    w.write_shard(0, {"images": images, "hands": hands})
    w.finalize(m.config)
    return dst


def _selected(manifest: Path, limit: int = LIMIT) -> list[dict]:
    """The light rows evaluate() selects with `limit` (status ok, manifest order)."""
    rows = (
        open_manifest(str(manifest)).read("images", columns=["image_id", "status", "num_hands"]).to_pylist()
    )
    return [r for r in rows if r["status"] == "ok"][:limit]


def test_real_images_against_their_own_annotations(eval_manifest, tmp_path):
    from generation.evaluate import evaluate

    out = tmp_path / "report"
    r = evaluate(str(eval_manifest), "real", str(out), limit=LIMIT, split="all", progress=False)
    assert REQUIRED_POSE_KEYS <= set(r["hands"]) and REQUIRED_POSE_KEYS <= set(r["body"])
    assert r["images"] == {"evaluated": LIMIT, "missing": 0, "unreadable": 0}
    assert r["hands"]["count"] == sum(row["num_hands"] for row in _selected(eval_manifest)) > 0
    # The same detector on the same pixels: every target hand and body is found where it was.
    for kind in ("hands", "body"):
        assert r[kind]["detected_share"] >= 0.95, (kind, r[kind])
        assert r[kind]["pck_0.1"] >= 0.95 and r[kind]["pck_0.2"] >= 0.95
        assert r[kind]["mean_error_px"] < 1.0
        assert r[kind]["oks_ap"] >= 0.9
    assert r["hands"]["handedness_accuracy"] == 1.0
    for key in ("fid", "kid", "fid_hands", "kid_hands", "clip_score"):
        assert r[key] is None and "given" in r["reasons"][key]
    saved = json.loads((out / "report.json").read_text())
    assert saved["hands"] == r["hands"] and saved["label"] == "real"
    assert "| real |" in (out / "report.md").read_text()
    assert len((out / "per_image.jsonl").read_text().splitlines()) == LIMIT


def test_shifted_and_swapped_targets(eval_manifest, tmp_path):
    """Targets moved by a known amount lower PCK by exactly that; swapped handedness still matches."""
    from generation.evaluate import evaluate

    def perturb(row):
        kp = np.asarray(row["keypoints"], dtype=np.float64)
        size = max(np.ptp(kp[:, 0]), np.ptp(kp[:, 1]))
        kp[[4, 8, 12, 16, 20], 1] += 0.15 * size  # fingertips: outside PCK@0.1, inside PCK@0.2
        row["keypoints"] = kp.tolist()
        row["handedness"] = {"left": "right", "right": "left"}[row["handedness"]]
        return row

    moved = _rewrite(eval_manifest, tmp_path / "moved", perturb)
    r = evaluate(str(moved), "real", str(tmp_path / "report"), limit=LIMIT, split="all", progress=False)[
        "hands"
    ]
    assert r["detected_share"] >= 0.95
    assert r["pck_0.1"] == pytest.approx(16 / 21, abs=0.01)
    assert r["pck_0.2"] >= 0.99
    assert r["handedness_accuracy"] == 0.0


def test_generated_folder_with_misses(eval_manifest, tmp_path):
    """Blank image -> its hands are misses; corrupt file -> scored as a miss; absent file -> left out."""
    from generation.evaluate import evaluate

    m = open_manifest(str(eval_manifest))
    rows = {r["image_id"]: r for r in m.read("images").to_pylist()}
    selected = [r for r in _selected(eval_manifest) if r["num_hands"] > 0][:5]
    blank, corrupt, absent, bigger, same = (r["image_id"] for r in selected)
    gen = tmp_path / "gen"
    gen.mkdir()
    for image_id in (blank, bigger, same):
        im = Image.open(__import__("io").BytesIO(rows[image_id]["image"])).convert("RGB")
        if image_id == blank:
            im = Image.new("RGB", im.size, (128, 128, 128))
        if image_id == bigger:  # another resolution of the same frame: keypoints are mapped back
            im = im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.BICUBIC)
        im.save(gen / f"{image_id}.png")
    (gen / f"{corrupt}.png").write_bytes(b"this is not a png")
    r = evaluate(
        str(eval_manifest), str(gen), str(tmp_path / "report"), limit=LIMIT, split="all", progress=False
    )
    n_targets = {i: rows[i]["num_hands"] for i in (blank, corrupt, bigger, same)}
    assert r["images"] == {"evaluated": 4, "missing": LIMIT - 4, "unreadable": 1}
    assert r["hands"]["count"] == sum(n_targets.values())
    per = {
        p["image_id"]: p
        for p in map(json.loads, (tmp_path / "report" / "per_image.jsonl").read_text().splitlines())
    }
    assert per[blank]["detected_hands"] == 0 and per[blank]["matched_hands"] == 0
    assert per[corrupt]["matched_hands"] == 0 and "cannot identify image" in per[corrupt]["error"].lower()
    assert per[same]["matched_hands"] == n_targets[same]
    assert per[bigger]["matched_hands"] == n_targets[bigger]
    expected_share = (n_targets[same] + n_targets[bigger]) / sum(n_targets.values())
    assert r["hands"]["detected_share"] == pytest.approx(expected_share)
    assert r["hands"]["pck_0.2"] >= 0.9
    assert r["label"] == "gen" and absent in r["missing_images"]
    assert not any("aspect ratio" in note for note in r["notes"])  # 1.5x on both axes keeps the frame
    # Each readable image's hand error ranks it for report.png: the blank image misses every hand (1.0),
    # the image itself finds them where they are.
    assert (
        per[blank]["hand_error"] == 1.0
        and per[same]["hand_error"] < 0.1
        and per[corrupt]["hand_error"] is None
    )
    with Image.open(tmp_path / "report" / "report.png") as sheet:
        assert sheet.width > 400 and sheet.height > 300

    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(
            str(eval_manifest), str(tmp_path / "report"), str(tmp_path / "r2"), split="all", progress=False
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate(str(eval_manifest), str(tmp_path / "nope"), str(tmp_path / "r3"), progress=False)


def _tiny_clip(folder: Path) -> str:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from generation.models.presets import tiny_tokenizer

    tok = tiny_tokenizer()
    text = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    vision = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return str(folder)


class _SmallExtractor(torch.nn.Module):
    """Stands in for InceptionV3 (same interface: uint8 (N, 3, H, W) -> (N, D)); loading is tested elsewhere."""

    num_features = 6

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 5, stride=8)

    def forward(self, x):
        return self.conv(x.float() / 255.0).mean(dim=(2, 3))


def test_quality_metrics_with_small_models(eval_manifest, tmp_path, monkeypatch):
    import generation.evaluate.feature_distance as feature_distance
    from generation.evaluate import evaluate

    torch.manual_seed(0)
    monkeypatch.setattr(feature_distance, "load_inception", lambda path, device="cpu": _SmallExtractor())
    clip = _tiny_clip(tmp_path / "clip")
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")  # the path is recorded; the extractor above stands in for the network
    kw = dict(limit=4, split="all", inception=str(weights), clip=clip, batch_size=3, progress=False)
    real = evaluate(str(eval_manifest), "real", str(tmp_path / "real"), **kw)
    assert real["fid"] == pytest.approx(0.0, abs=1e-6) and real["fid_hands"] == pytest.approx(0.0, abs=1e-6)
    assert real["kid"] is not None and real["kid_hands"] is not None
    assert 0.0 <= real["clip_score"] <= 100.0
    assert not {"fid", "kid", "fid_hands", "kid_hands", "clip_score"} & set(real["reasons"])

    gen = tmp_path / "gen"
    gen.mkdir()
    for row in _selected(eval_manifest, 4):
        blob = (
            open_manifest(str(eval_manifest))
            .lookup("images", [row["image_id"]], ["image"])
            .to_pylist()[0]["image"]
        )
        im = np.asarray(Image.open(__import__("io").BytesIO(blob)).convert("RGB")).astype(int)
        Image.fromarray(np.clip(im + 60, 0, 255).astype(np.uint8)).save(gen / f"{row['image_id']}.png")
    brighter = evaluate(str(eval_manifest), str(gen), str(tmp_path / "gen_report"), **kw)
    assert brighter["fid"] > 1e-4 and brighter["fid_hands"] > 1e-4
    md = (tmp_path / "gen_report" / "report.md").read_text()
    assert f"{brighter['fid']:.2f}" in md


def test_compare_table(tmp_path):
    from generation.evaluate import compare, load_report

    base = {
        "hands": {
            "detected_share": 0.5,
            "pck_0.1": 0.4,
            "pck_0.2": 0.6,
            "mean_error_px": 9.0,
            "oks_ap": 0.3,
            "count": 40,
        },
        "body": {
            "detected_share": 0.9,
            "pck_0.1": 0.5,
            "pck_0.2": 0.8,
            "mean_error_px": 12.0,
            "oks_ap": 0.6,
            "count": 38,
        },
        "fid": 80.0,
        "kid": 0.05,
        "fid_hands": 90.0,
        "kid_hands": None,
        "clip_score": 25.0,
        "reasons": {"kid_hands": "hand crops: FID/KID need at least 2 images per side"},
        "settings": {"generated": "gen"},
        "images": {"evaluated": 20},
    }
    paths = []
    for i, label in enumerate(["none", "fixed", "sequential"]):
        r = json.loads(json.dumps(base))
        r["label"] = label
        r["hands"]["pck_0.2"] = 0.6 + 0.1 * i
        r["fid"] = 80.0 - 5 * i
        d = tmp_path / label
        d.mkdir()
        (d / "report.json").write_text(json.dumps(r))
        paths.append(str(d / "report.json"))
    out = compare(paths, str(tmp_path / "cmp"))
    md = (tmp_path / "cmp" / "compare.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in table[1:]] == ["none", "fixed", "sequential"]
    assert "**80.0**" in table[3] and "**70.00**" in table[3]  # best PCK@0.2 (x100) and FID are bold
    assert "kid_hands not computed: hand crops" in md
    assert [r["label"] for r in out["rows"]] == ["none", "fixed", "sequential"]
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"][2]["FID ↓"] == 70.0
    # and a bar chart per metric column beside the table
    assert out["picture"] == str(tmp_path / "cmp" / "compare.png")
    with Image.open(out["picture"]) as chart:
        assert chart.width > 600 and chart.height > 600
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an evaluation report"):
        load_report(str(tmp_path / "bad.json"))
    assert os.path.isfile(tmp_path / "cmp" / "compare.json")


def test_cli_evaluate_and_compare(eval_manifest, tmp_path, capsys):
    from generation.cli import main

    a, b = tmp_path / "a", tmp_path / "b"
    assert (
        main(
            [
                "evaluate",
                "--manifest",
                str(eval_manifest),
                "--generated",
                "real",
                "--out",
                str(a),
                "--limit",
                "3",
                "--split",
                "all",
                "--label",
                "sanity",
                "--no-progress",
                "--detect",
                "wrist_refine=false",
            ]
        )
        == 0
    )
    report = json.loads((a / "report.json").read_text())
    assert report["label"] == "sanity" and report["images"]["evaluated"] == 3
    assert report["settings"]["detection_settings"]["wrist_refine"] is False
    assert "| sanity |" in capsys.readouterr().out
    b.mkdir()
    (b / "report.json").write_text(json.dumps({**report, "label": "other"}))
    assert (
        main(["evaluate", "--compare", str(a), str(b / "report.json"), "--out", str(tmp_path / "cmp")]) == 0
    )
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| sanity |" in md and "| other |" in md
    assert main(["evaluate", "--out", str(tmp_path / "x")]) == 2  # a usage error
    assert "give --manifest and --generated" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--manifest",
                str(eval_manifest),
                "--generated",
                "real",
                "--out",
                str(tmp_path / "y"),
                "--detect",
                "no_such_setting=1",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("handfirst-gen evaluate: error: unknown detection settings ['no_such_setting']")
    assert "Traceback" not in err and not (tmp_path / "y").exists()


def test_cli_evaluate_reports_bad_inputs(eval_manifest, tmp_path, capsys):
    """A missing manifest, generated folder or report and an unreadable weights file: one error line, exit 1
    (a bad setting: exit 2)."""
    from generation.cli import main

    (tmp_path / "garbage.pth").write_bytes(b"not torch weights")
    (tmp_path / "gen").mkdir()
    cases = [
        (["--manifest", str(tmp_path / "nonexistent"), "--generated", "real"], "no such manifest directory"),
        # A folder-of-photos manifest has no splits: asking for the test split finds nothing (the default,
        # auto, takes every row of such a manifest).
        (
            ["--manifest", str(eval_manifest), "--generated", "real", "--split", "test"],
            "nothing to evaluate: " + str(eval_manifest),
        ),
        (
            ["--manifest", str(eval_manifest), "--generated", "real", "--split", "test"],
            "no images with status ok in split 'test'; such images per split: {None: ",
        ),
        (
            ["--manifest", str(eval_manifest), "--generated", "real", "--split", "all", "--limit", "0"],
            "limit (--limit) must be >= 1, got 0",
        ),
        (
            ["--manifest", str(eval_manifest), "--generated", str(tmp_path / "nope")],
            "does not exist (or pass 'real')",
        ),
        (
            [
                "--manifest",
                str(eval_manifest),
                "--generated",
                str(tmp_path / "gen"),
                "--inception",
                str(tmp_path / "garbage.pth"),
            ],
            "garbage.pth: cannot read as FID InceptionV3 weights",
        ),
        (
            [
                "--manifest",
                str(eval_manifest),
                "--generated",
                "real",
                "--inception",
                str(tmp_path / "absent.pth"),
            ],
            "absent.pth",
        ),
        (["--compare", str(tmp_path / "no_report.json")], "no_report.json"),
    ]
    for args, message in cases:
        code = 2 if "--limit" in args else 1  # a setting outside its range is a usage error
        assert main(["evaluate", *args, "--out", str(tmp_path / "out"), "--no-progress"]) == code, args
        err = capsys.readouterr().err
        assert err.startswith("handfirst-gen evaluate: error: ") and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_manifest_opened_once_and_table_shipped_pickled(eval_manifest, tmp_path, monkeypatch):
    """Detection reads every row group through the one opened images table: opening (which checks every
    shard footer) happens once per evaluation, not once per row group; the table works after pickling."""
    import pickle

    import manifests.reader
    from generation.evaluate import evaluate
    from generation.evaluate.detect import detect_unit
    from generation.evaluate.detection import detection_prep_config
    from generation.evaluate.run import EvalConfig

    real_open = manifests.reader.open_manifest
    calls = []

    def counting_open(*args, **kwargs):
        calls.append(args)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(manifests.reader, "open_manifest", counting_open)
    m = real_open(str(eval_manifest))
    ok = m.read("images", ["image_id"], status="ok", split=None).column("image_id").to_pylist()
    units = {
        u.key for u, t in m.images.iter_row_groups(["image_id"]) if set(t["image_id"].to_pylist()) & set(ok)
    }
    assert len(units) >= 2  # the point of the test: several row groups
    r = evaluate(str(eval_manifest), "real", str(tmp_path / "r"), split=None, progress=False)
    assert r["images"]["evaluated"] == len(ok) and len(calls) == 1

    calls.clear()
    table = pickle.loads(pickle.dumps(m.images))  # what a Dask worker receives
    unit = m.images.units()[-1]
    ids = m.images.read_unit(unit, ["image_id"])["image_id"].to_pylist()
    dets = detect_unit(table, unit, ids, "real", detection_prep_config(m, EvalConfig()))
    assert [d.image_id for d in dets] == ids and not calls


def test_hand_targets_read_only_the_selected_images(synthetic_manifest, monkeypatch):
    from generation.evaluate.rows import hand_targets

    m = open_manifest(str(synthetic_manifest))
    everything = m.read("hands", ["image_id", "keypoints", "handedness", "crop_box"]).to_pylist()
    ids = {"synthetic_00001", "synthetic_00006", "synthetic_00009"}  # 00009 has no hands
    real_read = m.hands.read
    materialised = []
    monkeypatch.setattr(
        m.hands, "read", lambda *a, **k: materialised.append(real_read(*a, **k)) or materialised[-1]
    )
    hands, boxes = hand_targets(m, ids)
    expected = [r for r in everything if r["image_id"] in ids]
    assert sum(t.num_rows for t in materialised) == len(expected) < len(everything)
    assert set(hands) == set(boxes) == ids and hands["synthetic_00009"] == []
    for image_id in ids:
        rows = [r for r in expected if r["image_id"] == image_id]
        assert [h.handedness for h in hands[image_id]] == [r["handedness"] for r in rows]
        for h, r in zip(hands[image_id], rows):
            np.testing.assert_allclose(h.keypoints, r["keypoints"])
        assert boxes[image_id] == [list(r["crop_box"]) for r in rows]
    assert hand_targets(m, set()) == ({}, {})


def test_real_images_hand_confidence_wrist_gap_and_evaluator_bias(eval_manifest, tmp_path):
    """The manifest's photos scored by the annotator that made it: confident hands at the ends of the
    arms, and the report says that the scoring detector is the annotator."""
    from generation.evaluate import evaluate

    r = evaluate(str(eval_manifest), "real", str(tmp_path / "r"), limit=4, split="all", progress=False)
    hands = r["hands"]
    assert 0.8 <= hands["mean_confidence"] <= 1.0 and hands["confidence_count"] == hands["predicted"] > 0
    # MediaPipe Pose's wrist and MediaPipe Hands' wrist agree to a fraction of the hand on real photos.
    assert 0.0 < hands["wrist_gap"] < 0.5 and hands["wrist_gap_count"] >= 1
    assert hands["wrist_gap_count"] + hands["wrist_gap_unscored"] == hands["predicted"]
    bias = [n for n in r["notes"] if n.startswith("evaluator bias: the scoring detector (mediapipe)")]
    assert len(bias) == 1 and r["settings"]["evaluator_bias"] is True
    md = (tmp_path / "r" / "report.md").read_text()
    assert f"  - {bias[0]}" in md and "| Hand conf. ↑ | Wrist gap ↓ |" in md


def test_evaluation_detects_through_annotator_detect(eval_manifest, monkeypatch):
    """`Annotator.detect` runs the body, then the hands given that body, timing both; evaluation's
    detection is that very call."""
    from generation.evaluate.detect import detect_unit, get_detector, load_real
    from generation.evaluate.detection import detection_prep_config
    from generation.evaluate.run import EvalConfig

    m = open_manifest(str(eval_manifest))
    config = detection_prep_config(m, EvalConfig())
    annotator = get_detector(config)
    row = m.read(
        "images", ["image_id", "image", "image_width", "image_height", "width", "height"]
    ).to_pylist()[0]
    calls = []
    body_detect, hands_detect = annotator.body.detect, annotator.hands.detect
    monkeypatch.setattr(annotator.body, "detect", lambda im: calls.append("body") or body_detect(im))
    monkeypatch.setattr(
        annotator.hands, "detect", lambda im, body, *more: calls.append(body) or hands_detect(im, body, *more)
    )
    before = dict(annotator.timings)
    hands, body = annotator.detect(load_real(row))
    # The body first, then the hands, whose wrist pass is given that very body.
    assert len(calls) == 2 and calls[0] == "body" and calls[1] is body is not None and hands
    assert annotator.timings["pose"] > before["pose"] and annotator.timings["hands"] > before["hands"]

    calls.clear()
    unit = next(
        u for u, t in m.images.iter_row_groups(["image_id"]) if row["image_id"] in t["image_id"].to_pylist()
    )
    [det] = detect_unit(m.images, unit, [row["image_id"]], "real", config)
    assert len(calls) == 2 and calls[0] == "body" and calls[1] is not None
    scale = np.array([row["width"] / row["image_width"], row["height"] / row["image_height"]])
    np.testing.assert_allclose(det.hands[0].keypoints[:, :2], hands[0].keypoints[:, :2] * scale, rtol=1e-6)
    assert det.hands[0].confidence == pytest.approx(hands[0].handedness_score)


def test_detection_spreads_over_a_real_dask_scheduler_with_two_workers(eval_manifest, tmp_path):
    """evaluate --scheduler ADDRESS: detection runs in the cluster's worker processes (not here), and the
    scores are the in-process ones."""
    from distributed import LocalCluster

    from generation.evaluate import evaluate

    here = evaluate(
        str(eval_manifest), "real", str(tmp_path / "here"), limit=LIMIT, split="all", progress=False
    )
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        assert len(cluster.workers) == 2
        spread = evaluate(
            str(eval_manifest),
            "real",
            str(tmp_path / "spread"),
            limit=LIMIT,
            split="all",
            progress=False,
            scheduler=cluster.scheduler_address,
        )
    pids = spread["timing"]["detector_workers"]
    assert pids and os.getpid() not in pids and here["timing"]["detector_workers"] in ([], [os.getpid()])
    for kind in ("hands", "body"):
        assert spread[kind] == here[kind]
    assert spread["images"] == here["images"]


def test_windowed_images_are_scored_through_their_sidecar_window(eval_manifest, tmp_path):
    """An image that shows only the trainer's square around the hands (``generate --framing hands``)
    is scored through the window its sidecar records: the photos cut to that square score as the whole
    photos do. Without the sidecar the same pixels are taken for the whole frame, stretched, and the
    hands are missed; a malformed window makes that image unreadable, with its reason."""
    import io

    from generation.evaluate import evaluate
    from manifests.transforms import FitTransform, hands_focus

    m = open_manifest(str(eval_manifest))
    rows = {r["image_id"]: r for r in m.read("images").to_pylist()}
    hands = m.read("hands", ["image_id", "keypoints"]).to_pylist()
    selected = [r["image_id"] for r in _selected(eval_manifest) if r["num_hands"] > 0][:4]
    windowed, plain = tmp_path / "windowed", tmp_path / "plain"
    windowed.mkdir(), plain.mkdir()
    for image_id in selected:
        row = rows[image_id]
        im = np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB"))
        kps = np.concatenate([np.asarray(h["keypoints"]) for h in hands if h["image_id"] == image_id])
        side = min(im.shape[:2])  # the stored photo's scale, cut to a square around the hands
        t = FitTransform.fit(row["width"], row["height"], side, side, "cover", hands_focus(kps))
        assert t.tx < 0 or t.ty < 0  # a part of the frame is cut off
        for folder in (windowed, plain):
            Image.fromarray(t.warp(im)).save(folder / f"{image_id}.png")
        (windowed / f"{image_id}.json").write_text(json.dumps({"source": {"window": t.window}}))

    def run(folder, name):
        return evaluate(
            str(eval_manifest), str(folder), str(tmp_path / name), limit=LIMIT, split="all", progress=False
        )

    real, win, flat = run("real", "real"), run(windowed, "windowed"), run(plain, "plain")
    targets = sum(rows[i]["num_hands"] for i in selected)
    assert win["images"]["evaluated"] == 4 and win["hands"]["count"] == targets
    assert win["hands"]["detected_share"] >= 0.9 and win["hands"]["pck_0.2"] >= 0.9
    assert win["hands"]["crop_detected_share"] >= real["hands"]["crop_detected_share"] - 0.25
    assert not any("aspect ratio" in note for note in win["notes"])
    # The same pixels read as the whole frame: hands land elsewhere, and the stretch is noted.
    assert flat["hands"]["detected_share"] <= win["hands"]["detected_share"] - 0.5
    assert any("aspect ratio" in note for note in flat["notes"])

    (windowed / f"{selected[0]}.json").write_text(json.dumps({"source": {"window": {"scale": [0, 1]}}}))
    broken = run(windowed, "broken")
    assert broken["images"]["unreadable"] == 1
    per = {
        p["image_id"]: p
        for p in map(json.loads, (tmp_path / "broken" / "per_image.jsonl").read_text().splitlines())
    }
    assert "source.window" in per[selected[0]]["error"]
