"""The evaluation metric registry, known-answer tests of its metrics, the detector registry and the
evaluator-bias note. Hand-made detections and targets; no photos and no MediaPipe."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from generation.evaluate.detect import HandDetection, ImageDetections
from generation.evaluate.metrics import METRICS, ordered
from generation.evaluate.registry import (
    Column,
    Context,
    Metric,
    MetricUnavailable,
    PoseSample,
    merge,
    register,
)
from generation.evaluate.run import EvalConfig
from generation.evaluate.scoring import metric_results, start_metrics

WRIST_L, WRIST_R = 15, 16  # MediaPipe Pose left_wrist, right_wrist


def hand(wrist, width=50.0, height=20.0, confidence=None, handedness="left") -> HandDetection:
    """21 keypoints: the wrist at `wrist`, the rest spread over a `width` x `height` box to its right."""
    kps = np.zeros((21, 3))
    kps[:, 2] = 1.0
    kps[:, 0] = wrist[0] + np.linspace(0.0, width, 21)
    kps[:, 1] = wrist[1] + np.linspace(0.0, height, 21)[::-1]
    kps[0, :2] = wrist
    return HandDetection(kps, handedness, 1.0 if confidence is None else confidence, confidence)


def body(left=None, right=None, visibility=(1.0, 1.0)) -> np.ndarray:
    """(33, 3) body far from everything except the given wrists."""
    kps = np.full((33, 3), [-1000.0, -1000.0, 1.0])
    for index, at, vis in ((WRIST_L, left, visibility[0]), (WRIST_R, right, visibility[1])):
        if at is not None:
            kps[index] = [at[0], at[1], vis]
        else:
            kps[index, 2] = 0.0
    return kps


def sample(image_id, hands=(), body_kps=None) -> PoseSample:
    return PoseSample(image_id, ImageDetections(image_id, hands=list(hands), body=body_kps), [], None)


def run_metric(name: str, samples, config: EvalConfig | None = None):
    """(report entries, reasons, per-image records) of one registered metric fed `samples`."""
    metric = METRICS[name]
    acc = metric.make(Context(config or EvalConfig(), "gen"))
    per_image = [acc.update(s) for s in samples]
    reasons: dict = {}
    return metric_results([(metric, acc)], reasons), reasons, per_image


def test_wrist_gap_known_answers():
    from generation.evaluate.metrics.wrist_gap import wrist_gap

    # A hand whose wrist is 10 px from the body's wrist, hand size 50 (its longer side) -> 0.2.
    assert wrist_gap(hand((100, 100)).keypoints, np.array([[110.0, 100.0]])) == pytest.approx(0.2)
    # The nearest wrist counts, whichever side it is: 6-8-10 triangle from the closer one, size 40.
    near = np.array([[300.0, 300.0], [106.0, 108.0]])
    assert wrist_gap(hand((100, 100), width=40, height=10).keypoints, near) == pytest.approx(10 / 40)
    assert wrist_gap(hand((0, 0)).keypoints, np.zeros((0, 2))) is None

    report, reasons, per_image = run_metric(
        "wrist_gap",
        [
            sample("a", [hand((100, 100))], body(left=(110, 100), right=(900, 900))),  # 10 / 50 = 0.2
            sample("b", [hand((100, 100), width=60)], body(right=(100, 130))),  # 30 / 60 = 0.5
            # The left wrist is hidden (visibility 0.2 < 0.5): the visible right one, 45 px away, counts.
            sample(
                "c",
                [hand((100, 100), width=90)],
                body(left=(100, 100), right=(145, 100), visibility=(0.2, 1.0)),
            ),
            sample("d", [hand((0, 0))], None),  # no body: not scored
        ],
    )
    gaps = [0.2, 0.5, 0.5]
    assert report["hands"]["wrist_gap"] == pytest.approx(np.mean(gaps))
    assert report["hands"]["wrist_gap_median"] == pytest.approx(0.5)
    assert report["hands"]["wrist_gap_count"] == 3 and report["hands"]["wrist_gap_unscored"] == 1
    assert [p["wrist_gap"] for p in per_image] == [pytest.approx([g]) for g in gaps] + [[None]]
    assert not reasons

    report, reasons, _ = run_metric("wrist_gap", [sample("d", [hand((0, 0))], None)])
    assert report["hands"]["wrist_gap"] is None and report["hands"]["wrist_gap_unscored"] == 1
    assert reasons == {"hands.wrist_gap": "no detected hand had a visible body wrist in its image"}


def test_mean_confidence_known_answers():
    report, reasons, _ = run_metric(
        "hand_confidence",
        [
            sample("a", [hand((0, 0), confidence=0.9), hand((50, 50), confidence=0.6)]),
            sample("b", []),
            sample("c", [hand((0, 0), confidence=0.9), hand((9, 9))]),
        ],  # the last one has no confidence
    )
    assert (
        report["hands"]["mean_confidence"] == pytest.approx(0.8) and report["hands"]["confidence_count"] == 3
    )
    assert not reasons

    report, reasons, _ = run_metric("hand_confidence", [sample("a", [])])
    assert report["hands"]["mean_confidence"] is None
    assert reasons == {"hands.mean_confidence": "no hand detected"}
    _, reasons, _ = run_metric("hand_confidence", [sample("a", [hand((0, 0))])])
    assert reasons == {"hands.mean_confidence": "the detector gives no hand confidence"}


def test_pose_metric_through_the_registry():
    """A detected hand 5 px off on every keypoint of a 50 px target: PCK@0.1 (5 px) holds, error is 5 px."""
    from manifests.matching import Instance

    target = hand((100, 100))
    shifted = hand((103, 104))  # every keypoint moved by (3, 4): 5 px
    s = PoseSample("a", ImageDetections("a", hands=[shifted]), [Instance(target.keypoints, "left")], None)
    report, _, per_image = run_metric("hand_pose", [s])
    assert report["hands"]["mean_error_px"] == pytest.approx(5.0)
    assert report["hands"]["pck_0.1"] == 1.0 and report["hands"]["detected_share"] == 1.0
    assert per_image == [{"target_hands": 1, "detected_hands": 1, "matched_hands": 1}]


def test_registry_layout_keeps_the_existing_columns_and_adds_the_new_ones():
    from generation.evaluate.report import columns

    headers = [c.header for c in columns()]
    assert headers == [
        "Hands det. % ↑",
        "Hand PCK@0.1 ↑",
        "Hand PCK@0.2 ↑",
        "Hand err. px ↓",
        "Hand OKS AP ↑",
        "Crop det. % ↑",
        "Crop PCK@0.2 ↑",
        "Body det. % ↑",
        "Body PCK@0.2 ↑",
        "Body OKS AP ↑",
        "FID ↓",
        "KID×10³ ↓",
        "FID-H ↓",
        "KID-H×10³ ↓",
        "CLIP ↑",
        "Hand conf. ↑",
        "Wrist gap ↓",
        "Seam ↓",
        "Fidelity dB ↑",
        "Images",
        "Hands",
    ]
    assert [m.name for m in ordered()] == [
        "hand_pose",
        "crop_detection",
        "body_pose",
        "fid",
        "fid_hands",
        "clip_score",
        "hand_confidence",
        "wrist_gap",
        "seam",
        "fidelity",
    ]
    assert {m.name: m.weights for m in ordered() if m.weights} == {
        "fid": "inception",
        "fid_hands": "inception",
        "clip_score": "clip",
    }
    with pytest.raises(ValueError, match="weights must be one of"):
        Metric("x", make=lambda ctx: None, weights="nope")
    with pytest.raises(ValueError, match="fmt must be one of"):
        Column("X", ("x",), True, "pct2")
    with pytest.raises(ValueError, match="already registered"):
        register(Metric("wrist_gap", make=lambda ctx: None))


class _Count:
    """A toy metric: the number of detected hands, reported at the top level."""

    def __init__(self, ctx):
        self.n = 0

    def update(self, sample):
        self.n += len(sample.detections.hands)
        return {"toy": len(sample.detections.hands)}

    def result(self):
        if not self.n:
            raise MetricUnavailable("nothing counted")
        return {"toy_count": self.n}


def test_a_new_metric_is_one_entry(monkeypatch, tmp_path):
    """Registering one entry gives its report key, per-image field, Markdown column, legend and compare row;
    without its weights it is null with the weights' reason, and the other metrics are untouched."""
    from generation.evaluate.report import compare, markdown_table

    toy = Metric(
        "toy",
        make=_Count,
        columns=(Column("Toy ↑", ("toy_count",), True, "int"),),
        null={"toy_count": None},
        legend="Toy: detected hands.",
        order=65,
    )
    monkeypatch.setitem(METRICS, "toy", toy)
    reasons: dict = {}
    ctx, runs = start_metrics(EvalConfig(), "gen", reasons)
    names = [m.name for m, _ in runs]
    assert names[names.index("hand_confidence") : names.index("wrist_gap") + 1] == [
        "hand_confidence",
        "toy",
        "wrist_gap",
    ]
    acc = dict((m.name, a) for m, a in runs)["toy"]
    assert acc.update(sample("a", [hand((0, 0)), hand((9, 9))])) == {"toy": 2}
    report = metric_results(runs, reasons)
    assert report["toy_count"] == 2 and "toy_count" not in reasons
    assert list(report)[:2] == ["hands", "body"] and report["fid"] is None and "fid" in reasons

    report = {"label": "run", **report, "reasons": reasons, "settings": {}, "images": {"evaluated": 1}}
    md = markdown_table([report])
    header = next(line for line in md.splitlines() if line.startswith("| Method"))
    cells = header.split(" | ")
    assert cells[cells.index("Toy ↑") + 1] == "Wrist gap ↓" and "- Toy: detected hands." in md
    (tmp_path / "r.json").write_text(json.dumps(report))
    assert compare([str(tmp_path / "r.json")], str(tmp_path / "cmp"))["rows"][0]["Toy ↑"] == 2

    # The same metric needing weights that were not given: null, with the weights' reason.
    monkeypatch.setitem(
        METRICS,
        "toy",
        Metric("toy", make=_Count, columns=toy.columns, null=toy.null, weights="clip", order=65),
    )
    reasons = {}
    ctx, runs = start_metrics(EvalConfig(), "gen", reasons)
    assert dict((m.name, a) for m, a in runs)["toy"] is None
    assert metric_results(runs, reasons)["toy_count"] is None
    assert reasons["toy_count"].startswith("no CLIP checkpoint given")


def test_merge_keeps_blocks_and_never_shares_the_null_entries():
    null = {"hands": {"wrist_gap": None}}
    out = merge({"hands": {"count": 3}}, null)
    assert out == {"hands": {"count": 3, "wrist_gap": None}}
    fresh = merge({}, null)
    fresh["hands"]["wrist_gap"] = 1.0
    assert null == {"hands": {"wrist_gap": None}}


def test_evaluator_bias_note_compares_recorded_names_only():
    import sys

    from generation.evaluate.detect import AnnotatorDetector, detectors
    from generation.evaluate.detection import evaluator_bias

    mediapipe = detectors()["mediapipe"]

    def manifest(**config):
        return SimpleNamespace(config=config)

    # prep records the registry name's module:Class; either spelling is the same annotator.
    for recorded in ("prep.annotate:Annotator", "mediapipe"):
        note = evaluator_bias(manifest(annotator=recorded, keypoint_source="detect"), mediapipe)
        assert note.startswith("evaluator bias: the scoring detector (mediapipe)") and "target poses" in note
    note = evaluator_bias(manifest(annotator="mediapipe", keypoint_source="annotation"), mediapipe)
    assert "target bodies (its hands come from the dataset's keypoints" in note
    assert evaluator_bias(manifest(annotator="planted_xyz:Annotator"), mediapipe) is None
    assert "planted_xyz" not in sys.modules  # compared as a string, never imported
    assert evaluator_bias(manifest(source="synthetic"), mediapipe) is None  # no annotator recorded
    assert evaluator_bias(manifest(annotator=["odd"]), mediapipe) is None
    other = AnnotatorDetector("prep_standin:StandInAnnotator")
    assert evaluator_bias(manifest(annotator="prep.annotate:Annotator"), other) is None
    plugin = SimpleNamespace(name="plugin", annotator=None)
    assert evaluator_bias(manifest(annotator="prep.annotate:Annotator"), plugin) is None


def test_detector_choice():
    from generation.evaluate.detect import DEFAULT_DETECTOR, detector_names
    from generation.evaluate.detection import choose_detector
    from manifests.settings import SettingError
    from prep.annotators import ANNOTATORS, DEFAULT_ANNOTATOR

    assert DEFAULT_DETECTOR == DEFAULT_ANNOTATOR and set(ANNOTATORS) <= set(detector_names())
    assert choose_detector(EvalConfig()).annotator == "mediapipe"
    standin = choose_detector(EvalConfig(detection={"annotator": "prep_standin:StandInAnnotator"}))
    assert standin.annotator == "prep_standin:StandInAnnotator"
    with pytest.raises(ValueError, match="two detectors named: --detector other and --detect annotator=x:Y"):
        choose_detector(EvalConfig(detector="other", detection={"annotator": "x:Y"}))
    with pytest.raises(
        SettingError, match=r"detector \(--detector\) must be one of .*mediapipe.*; got 'nope'"
    ):
        EvalConfig(detector="nope").validate()


class _FixedModel:
    """In every image: one hand, 50 px wide, whose wrist is 10 px from the body's left wrist."""

    def detect(self, image):
        from prep.body import BodyPose
        from prep.hands import Hand

        h = hand((20, 30), confidence=0.75)
        return [Hand(h.keypoints, "left", 0.75, "fixed")], BodyPose(body(left=(30, 30)))


class _FixedDetector:
    name = "fixed"
    description = "stand-in: one hand at the body's wrist"
    annotator = None  # not a prep annotator

    def load(self, config):
        return _FixedModel()


def test_a_plugged_in_detector_scores_through_the_cli(synthetic_manifest, tmp_path, monkeypatch, capsys):
    """--detector picks a registered plug-in; its hands and body give the known wrist gap and confidence."""
    import generation.evaluate.detect as detect
    from generation.cli import main

    monkeypatch.setattr(detect, "DETECTORS", dict(detect.detectors()))  # the plug-in leaves with the test
    detect.register_detector(_FixedDetector())
    with pytest.raises(ValueError, match="detector 'mediapipe' is already registered"):
        detect.register_detector(SimpleNamespace(name="mediapipe", description="a second one"))
    out = tmp_path / "r"
    assert (
        main(
            [
                "evaluate",
                "--manifest",
                str(synthetic_manifest),
                "--generated",
                "real",
                "--out",
                str(out),
                "--split",
                "all",
                "--limit",
                "3",
                "--detector",
                "fixed",
                "--no-progress",
            ]
        )
        == 0
    )
    r = json.loads((out / "report.json").read_text())
    assert r["hands"]["wrist_gap"] == pytest.approx(0.2) and r["hands"]["wrist_gap_count"] == 3
    assert r["hands"]["mean_confidence"] == pytest.approx(0.75)
    assert r["settings"]["detector"] == "fixed" and r["settings"]["evaluator_bias"] is False
    assert not any(n.startswith("evaluator bias") for n in r["notes"])
    lines = (out / "report.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| Method |")).split(" | ")
    row = next(line for line in lines if line.startswith("| real |")).split(" | ")
    cells = dict(zip(header, row))
    assert (cells["Hand conf. ↑"], cells["Wrist gap ↓"]) == ("0.75", "0.20")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(
            [
                "evaluate",
                "--manifest",
                str(synthetic_manifest),
                "--generated",
                "real",
                "--out",
                str(out),
                "--detector",
                "nope",
            ]
        )
    assert "invalid choice: 'nope'" in capsys.readouterr().err
