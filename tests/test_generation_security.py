"""Names read from files never become paths outside the output folder, and a manifest never chooses code.

- `manifests.names`: the one rule for names that become file names, and the reduction prep's ids use;
- validate reports image and hand ids that are not safe file names;
- generate refuses manifest ids and replayed sidecar names such as ``./../x`` or an absolute path, and
  writes nothing outside ``--out``; evaluate refuses to look such an id up in the generated folder;
- evaluate detects with prep's registry annotator (or the one given on the command line), never with
  the ``module:Class`` a manifest's ``_manifest.json`` records;
- the annotator registry, with an explicit ``module:Class`` still accepted from the user.
"""

import json
import os
from pathlib import Path

import pytest
from manifest_edits import rewrite

from generation.cli import main
from manifests.names import (
    MAX_NAME_BYTES,
    UnsafeNameError,
    check_name,
    name_problem,
    path_in,
    safe_name,
)

BAD_NAMES = {
    "./../x": "'/'",
    "..": "starts with '.'",
    ".hidden": "starts with '.'",
    "/tmp/abs": "'/'",
    "a\\b": "contains '\\\\'",
    "C:x": "':'",
    "a\x00b": "U+0000",
    "tab\there": "U+0009",
    "": "empty",
    "x" * (MAX_NAME_BYTES + 1): f"more than {MAX_NAME_BYTES}",
    "é" * 101: "202 bytes long",
    "\ud800": "not valid UTF-8",
}


@pytest.mark.parametrize("name, reason", list(BAD_NAMES.items()), ids=range(len(BAD_NAMES)))
def test_unsafe_names_are_refused_with_the_reason(name, reason, tmp_path):
    with pytest.raises(UnsafeNameError) as err:
        check_name(name, "image_id")
    assert str(err.value).startswith(f"image_id {name!r} is not a safe file name: ") and reason in str(
        err.value
    )
    with pytest.raises(UnsafeNameError):
        path_in(str(tmp_path), name, ".png")


def test_plain_names_pass_and_stay_in_their_folder(tmp_path):
    for name in ("synthetic_00001", "a b", "ünïcode", "a..b", "x" * MAX_NAME_BYTES, "-", "3f2a-uuid"):
        assert name_problem(name) is None, name
        assert os.path.dirname(path_in(str(tmp_path), name, "_overview.png")) == str(tmp_path)
    assert name_problem(None) == "not a string (NoneType)"


def test_safe_name_reduces_anything_to_a_distinct_safe_name():
    texts = [
        "./../x",
        "../x",
        "/tmp/abs",
        "C:\\data\\x.jpg",
        "a\x00b",
        "",
        "..",
        ".hidden",
        "x" * 500,
        "x" * 499 + "y",
        "日本/写真",
        "call/abc",
        "call__abc",
        "a b",
    ]
    names = [safe_name(t) for t in texts]
    assert all(name_problem(n) is None for n in names), names
    assert len(set(names)) == len(texts)
    # Ids that were already plain keep their value, so existing manifests keep their ids.
    assert safe_name("call/abc") == "call__abc" and safe_name("synthetic_00001") == "synthetic_00001"
    # Room is left for the suffixes prep appends to an id it made (-hash, __dupN, _hN).
    assert len(safe_name("x" * 500)) <= MAX_NAME_BYTES - 40


def _rename(src: Path, dst: Path, renames: dict[str, str]) -> Path:
    """A copy of manifest `src` whose images `renames` keys are renamed (hand rows follow)."""

    def edit(_, images, hands):
        for r in images:
            r["image_id"] = renames.get(r["image_id"], r["image_id"])
        for h in hands:
            if h["image_id"] in renames:
                h["image_id"] = renames[h["image_id"]]
                h["hand_id"] = f"{h['image_id']}_h{h['hand_index']}"
        return images, hands

    return rewrite(src, dst, edit)


def _files_outside(root: Path, *inside: Path) -> set[str]:
    keep = [str(p) for p in inside]
    return {
        str(p)
        for p in root.rglob("*")
        if p.is_file() and not any(str(p).startswith(k + os.sep) for k in keep)
    }


def test_validate_reports_ids_that_are_not_safe_names(synthetic_manifest, tmp_path):
    from manifests.validate import validate_manifest

    root = _rename(
        synthetic_manifest, tmp_path / "m", {"synthetic_00001": "./../x", "synthetic_00002": "/tmp/abs"}
    )
    problems = validate_manifest(str(root), decode=False)
    reasons = [p.reason for p in problems if p.kind == "ids"]
    assert "image_id './../x' is not a safe file name: contains '/'" in reasons[0]
    assert any(r.startswith("image_id '/tmp/abs' is not a safe file name") for r in reasons)
    assert any(r.startswith("hand_id './../x_h0' is not a safe file name") for r in reasons)
    bad = {p.row for p in problems if p.kind == "ids" and "image_id" in p.reason}
    assert bad == {1, 2} and all(p.file.endswith("shard-00000.parquet") for p in problems)


def test_generate_from_a_manifest_refuses_unsafe_ids_and_writes_nothing_outside_out(
    tiny_runs, synthetic_manifest, tmp_path, capsys
):
    outside = tmp_path / "outside" / "abs"  # an absolute id, kept inside this test's folder
    manifest = _rename(
        synthetic_manifest, tmp_path / "m", {"synthetic_00001": "./../x", "synthetic_00002": str(outside)}
    )
    out = tmp_path / "out"
    before = _files_outside(tmp_path, manifest)
    common = [
        "generate",
        "--from-manifest",
        str(manifest),
        "--hand-model",
        tiny_runs[0],
        "--body-model",
        tiny_runs[1],
        "--out",
        str(out),
        "--size",
        "64",
        "--steps",
        "1",
        "--no-detect",
    ]
    for image_id in ("./../x", str(outside)):
        assert main([*common, "--image-id", "synthetic_00000", image_id]) == 1
        err = capsys.readouterr().err
        assert f"image {image_id}: name {image_id!r} is not a safe file name" in err, err
    # Without ids the whole split is taken: one bad id stops the command before anything is made.
    assert main([*common, "--split", "train"]) == 1
    assert "is not a safe file name" in capsys.readouterr().err
    assert _files_outside(tmp_path, manifest) == before
    assert not out.exists() or not any(out.iterdir())


def test_replayed_sidecar_with_an_unsafe_name_writes_nothing_outside_out(tiny_runs, tmp_path, capsys):
    spec = json.loads((Path(__file__).resolve().parents[1] / "examples" / "pose.json").read_text())
    spec.update(width=128, height=128)  # the 512 px example at a quarter of its size: a fast tiny run
    spec["body"]["keypoints"] = [[x / 4, y / 4, v] for x, y, v in spec["body"]["keypoints"]]
    for hand in spec["hands"]:
        hand["keypoints"] = [[x / 4, y / 4] for x, y in hand["keypoints"]]
    (tmp_path / "wave.json").write_text(json.dumps(spec))
    first = tmp_path / "first"
    assert (
        main(
            [
                "generate",
                "--spec",
                str(tmp_path / "wave.json"),
                "--hand-model",
                tiny_runs[0],
                "--body-model",
                tiny_runs[1],
                "--out",
                str(first),
                "--size",
                "64",
                "--steps",
                "1",
                "--no-detect",
            ]
        )
        == 0
    )
    sidecar = json.loads((first / "wave.json").read_text())
    out = tmp_path / "out"
    for name in ("./../x", str(tmp_path / "abs"), "..", ""):
        sidecar["name"] = name
        (tmp_path / "replay.json").write_text(json.dumps(sidecar))
        before = _files_outside(tmp_path, first)
        assert main(["generate", "--replay", str(tmp_path / "replay.json"), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"replay.json: name {name!r} is not a safe file name" in err, err
        assert _files_outside(tmp_path, first) == before
    assert not out.exists() or not any(out.iterdir())


def test_output_paths_refuse_unsafe_names(tmp_path):
    from generation.generate import is_done, output_paths

    paths = output_paths(str(tmp_path), "wave")
    assert all(os.path.dirname(p) == str(tmp_path) for p in paths.values())
    for name in ("./../x", "/tmp/abs", "..", "a/b"):
        with pytest.raises(UnsafeNameError, match="is not a safe file name"):
            is_done(str(tmp_path), name)


def test_evaluate_refuses_to_look_up_an_unsafe_id_outside_the_generated_folder(synthetic_manifest, tmp_path):
    from PIL import Image

    from generation.evaluate import evaluate

    manifest = _rename(synthetic_manifest, tmp_path / "m", {"synthetic_00000": "../planted"})
    generated = tmp_path / "gen"
    generated.mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "planted.png")  # what ``gen/../planted.png`` would read
    with pytest.raises(UnsafeNameError, match=r"m: image_id '../planted' is not a safe file name"):
        evaluate(str(manifest), str(generated), str(tmp_path / "report"), split="all", progress=False)


PLANTED = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")
from prep.annotate import Annotator, error_row
"""


def test_evaluate_never_imports_the_annotator_a_manifest_names(
    synthetic_manifest, tmp_path, monkeypatch, capsys
):
    """A module shipped beside a manifest and named in its config must not run, even when importable."""
    manifest = _rename(synthetic_manifest, tmp_path / "m", {})
    marker = tmp_path / "marker.txt"
    (tmp_path / "planted_annotator.py").write_text(PLANTED.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))  # e.g. evaluate run from the folder the manifest came in
    info = json.loads((manifest / "_manifest.json").read_text())
    info["config"].update(
        annotator="planted_annotator:Annotator",
        sam_checkpoint=str(tmp_path / "x.pth"),
        min_detection_confidence=0.4,
    )
    (manifest / "_manifest.json").write_text(json.dumps(info))
    report = tmp_path / "report"
    assert (
        main(
            [
                "evaluate",
                "--manifest",
                str(manifest),
                "--generated",
                "real",
                "--out",
                str(report),
                "--split",
                "all",
                "--limit",
                "1",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    assert not marker.exists()
    result = json.loads((report / "report.json").read_text())
    assert result["images"]["evaluated"] == 1
    # The manifest's plain thresholds are still the detection settings.
    assert result["settings"]["detection_settings"]["min_detection_confidence"] == 0.4


def test_the_annotator_comes_from_the_registry_or_the_command_line(synthetic_manifest):
    from generation.evaluate.detection import detection_prep_config
    from generation.evaluate.run import EvalConfig
    from manifests.reader import open_manifest
    from prep.annotators import ANNOTATORS, DEFAULT_ANNOTATOR, AnnotatorError, annotator_module
    from prep.config import PrepConfig

    m = open_manifest(str(synthetic_manifest))
    assert detection_prep_config(m, EvalConfig()).annotator == PrepConfig().annotator
    user = detection_prep_config(m, EvalConfig(detection={"annotator": "prep_standin:StandInAnnotator"}))
    assert user.annotator == "prep_standin:StandInAnnotator"

    module, cls = annotator_module(PrepConfig(annotator=DEFAULT_ANNOTATOR))
    assert f"{module.__name__}:{cls.__name__}" == ANNOTATORS[DEFAULT_ANNOTATOR] == "prep.annotate:Annotator"
    assert (
        annotator_module(PrepConfig(annotator="prep_standin:StandInAnnotator"))[1].__name__
        == "StandInAnnotator"
    )
    with pytest.raises(AnnotatorError, match=r"annotator 'nonsense': expected one of \['mediapipe'\]"):
        annotator_module(PrepConfig(annotator="nonsense"))
    with pytest.raises(AnnotatorError, match="cannot import 'no_such_module_xyz'"):
        annotator_module(PrepConfig(annotator="no_such_module_xyz:Annotator"))
    with pytest.raises(AnnotatorError, match="lacks class 'Nope'"):
        annotator_module(PrepConfig(annotator="prep.annotate:Nope"))


def test_bench_loose_file_export_refuses_an_unsafe_hand_id(synthetic_manifest, tmp_path):
    import importlib.util

    loader = Path(__file__).resolve().parents[1] / "bench" / "loader.py"
    spec = importlib.util.spec_from_file_location("bench_loader", loader)
    bench_loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_loader)

    def edit(_, images, hands):
        hands[0]["hand_id"] = "../escaped"
        return images, hands

    manifest = rewrite(synthetic_manifest, tmp_path / "m", edit)
    with pytest.raises(UnsafeNameError, match="hand_id '../escaped' is not a safe file name"):
        bench_loader.export_folder(str(manifest), str(tmp_path / "folder"))
    assert not list(tmp_path.glob("escaped*"))


def test_prep_ids_from_long_or_odd_paths_are_safe_names(tmp_path):
    """Folder ids come from relative paths: long nested names give distinct safe ids, with room for
    the ``_h<i>`` suffix of hand ids."""
    from prep.config import PrepConfig
    from prep.sources import load_records

    deep = tmp_path / ("a" * 150) / ("b" * 150)
    deep.mkdir(parents=True)
    for name in ("c" * 120 + ".jpg", "c" * 120 + ".png", "x..y.jpg"):
        (deep / name).write_bytes(b"x")
    (tmp_path / ("d" * 240 + ".jpg")).write_bytes(b"x")
    ids = [r.image_id for r in load_records(PrepConfig(input=str(tmp_path)))]
    assert len(ids) == 4 and len(set(ids)) == 4
    for image_id in ids:
        assert name_problem(image_id) is None and name_problem(f"{image_id}_h3") is None, image_id


def test_a_dtype_from_read_settings_picks_from_a_table_not_any_torch_attribute(tmp_path):
    from generation.generate import GenerateConfig, load_pipeline

    # "load" would be torch.load through getattr(torch, ...); the table refuses it before any folder is read.
    with pytest.raises(
        ValueError, match=r"precision \(--precision\) must be one of fp32, fp16, bf16; got 'load'"
    ):
        load_pipeline(str(tmp_path / "hand"), str(tmp_path / "body"), GenerateConfig(precision="load"))


def test_generate_refuses_a_photo_whose_name_is_not_a_safe_name(tiny_runs, tmp_path, capsys):
    from PIL import Image

    photo = tmp_path / ".hidden.png"
    Image.new("RGB", (64, 48)).save(photo)
    out = tmp_path / "out"
    assert (
        main(
            [
                "generate",
                "--from-image",
                str(photo),
                "--hand-model",
                tiny_runs[0],
                "--body-model",
                tiny_runs[1],
                "--out",
                str(out),
                "--steps",
                "1",
                "--no-detect",
            ]
        )
        == 1
    )
    assert "output name (the photo's file name) '.hidden' is not a safe file name" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
