"""`handfirst-gen generate` end to end with tiny models trained by `train-hand` and `train-body`: from a
spec, from manifest rows (one id, and a resumable batch) and from a photo; replay; clear errors."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from two_stage_helpers import pose_spec_file

from generation.cli import main
from generation.generate import output_size, request_from_sidecar
from generation.generate.requests import RequestError

pytestmark = pytest.mark.slow  # every test here generates with trained tiny models

STEPS = ["--steps", "2", "--no-detect"]


def _models(tiny_runs):
    return ["--hand-model", tiny_runs[0], "--body-model", tiny_runs[1]]


def test_generate_from_spec_writes_image_sidecar_overview_and_stage1(tiny_runs, tmp_path, capsys):
    a, b = pose_spec_file(tmp_path / "wave.json"), pose_spec_file(tmp_path / "other.json", seed=4)
    out = tmp_path / "out"
    assert main(["generate", "--spec", a, b, *_models(tiny_runs), "--out", str(out), *STEPS]) == 0
    assert "generated 2 image(s)" in capsys.readouterr().out
    with Image.open(out / "wave.png") as im:
        assert im.size == (152, 120) and im.mode == "RGB"
    side = json.loads((out / "wave.json").read_text())
    assert (
        side["spec"]["width"] == 152
        and side["call"]["seed"] == 3
        and side["call"]["num_inference_steps"] == 2
    )
    assert side["call"]["blend"]["mode"] == "sequential" and side["settings"]["steps"] == 2
    assert side["call"]["blend"]["min_core"] == side["settings"]["min_core"]
    assert side["call"]["blend"]["band"] == side["settings"]["band"]
    # Per generated hand, the share of its pixels kept at each of the 2 steps, never growing.
    shares = side["result"]["kept_share"]
    assert sorted(shares) == ["0", "1"] and all(
        len(v) == 2 and 0 < v[1] <= v[0] <= 1 for v in shares.values()
    )
    assert (
        side["models"]["hand"]["path"] == os.path.abspath(tiny_runs[0])
        and len(side["models"]["hand"]["fingerprint"]) == 40
    )
    assert side["versions"]["torch"] == torch.__version__ and side["result"]["hand_indices"] == [0, 1]
    assert side["call"]["hand_prompt"] == ["a right hand", "a left hand"]
    with Image.open(out / "wave_overview.png") as im:
        assert im.size[0] > 152 and im.size[1] > 120
    for name in (
        "hand0.png",
        "hand0_mask.png",
        "hand1.png",
        "hand1_mask.png",
        "canvas.png",
        "canvas_mask.png",
        "keep.png",
    ):
        assert (out / "wave_stage1" / name).is_file(), name
    with Image.open(out / "wave_stage1" / "hand0_mask.png") as im:
        assert im.size == (64, 64) and set(np.unique(np.asarray(im))) <= {0, 255}
    first = np.asarray(Image.open(out / "wave.png"))
    assert not np.array_equal(first, np.asarray(Image.open(out / "other.png")))

    # The sidecar alone redoes the image exactly.
    again = tmp_path / "again"
    assert main(["generate", "--replay", str(out / "wave.json"), "--out", str(again)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(again / "wave.png")), first)
    # A sidecar made with keep-masks in latent pixels is refused in one line naming the setting; without
    # blending it replays (the keep-masks played no part).
    old = json.loads(json.dumps(side))
    old["settings"].pop("band")
    old["settings"].update(expand_pixels=3, d0=0, min_core=2)
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(RequestError, match=r"keep-masks in latent pixels \(expand_pixels=3") as err:
        request_from_sidecar(str(tmp_path / "old.json"))
    assert "\n" not in str(err.value)
    assert main(["generate", "--replay", str(tmp_path / "old.json"), "--out", str(tmp_path / "o")]) == 1
    old["settings"]["blend"] = "none"
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert request_from_sidecar(str(tmp_path / "old.json"))[1].blend_config().mode == "none"

    # A second run over the same folder resumes: nothing is redone.
    stamp = os.path.getmtime(out / "wave.png")
    assert main(["generate", "--spec", a, b, *_models(tiny_runs), "--out", str(out), *STEPS]) == 0
    assert "generated 0 image(s)" in capsys.readouterr().out and os.path.getmtime(out / "wave.png") == stamp


def test_generate_from_manifest_rows(tiny_runs, synthetic_manifest, tmp_path, capsys):
    out = tmp_path / "gen"
    args = [
        "generate",
        "--from-manifest",
        str(synthetic_manifest),
        *_models(tiny_runs),
        "--out",
        str(out),
        "--size",
        "128",
        *STEPS,
    ]
    assert main([*args, "--image-id", "synthetic_00001"]) == 0
    with Image.open(out / "synthetic_00001.png") as im:
        assert im.size == (128, 96)  # the 256x192 frame at longer side 128
    side = json.loads((out / "synthetic_00001.json").read_text())
    assert side["source"]["image_id"] == "synthetic_00001" and side["source"]["frame"] == [256, 192]
    assert side["spec"]["prompt"] == "a person showing a four gesture"
    assert len(side["spec"]["hands"]) == 2 and side["hand_prompts"][0].startswith(
        "a hand showing a four gesture"
    )

    # Without ids: every ok row of the split (val holds synthetic_00008 and the hand-less synthetic_00009).
    assert main([*args, "--split", "val"]) == 0
    assert (out / "synthetic_00008.png").is_file() and not (out / "synthetic_00009.png").exists()

    assert main([*args, "--image-id", "nope_1"]) == 1
    assert "no image(s) ['nope_1'] in the images table" in capsys.readouterr().err


def test_generate_then_evaluate_the_same_rows(tiny_runs, synthetic_manifest, tmp_path, capsys):
    """`generate --from-manifest --limit N` and `evaluate --limit N` select the same N rows: none missing."""
    from manifests.reader import open_manifest
    from manifests.writer import ManifestWriter

    # Rows stored in reverse id order, so manifest order and id order pick different rows.
    src = open_manifest(str(synthetic_manifest))
    writer = ManifestWriter(str(tmp_path / "reversed"))
    writer.write_shard(0, {t: src.read(t).to_pylist()[::-1] for t in ("images", "hands")})
    writer.finalize(src.config)
    manifest = str(tmp_path / "reversed")
    first_train = [
        r["image_id"]
        for r in open_manifest(manifest).read("images", ["image_id"], split="train", status="ok").to_pylist()
    ][:3]
    assert first_train != sorted(first_train)

    out, report = tmp_path / "gen", tmp_path / "report"
    select = ["--split", "train", "--limit", "3"]
    assert (
        main(
            [
                "generate",
                "--from-manifest",
                manifest,
                *_models(tiny_runs),
                "--out",
                str(out),
                "--size",
                "128",
                *STEPS,
                *select,
            ]
        )
        == 0
    )
    generated = sorted(p.stem for p in out.glob("*.png") if not p.stem.endswith("_overview"))
    assert generated == sorted(first_train)
    assert (
        main(
            [
                "evaluate",
                "--manifest",
                manifest,
                "--generated",
                str(out),
                "--out",
                str(report),
                "--no-progress",
                "--json",
                *select,
            ]
        )
        == 0
    )
    result = json.loads((report / "report.json").read_text())
    assert result["images"] == {"evaluated": 3, "missing": 0, "unreadable": 0}
    # The hand columns read generate's stage-1 files: fidelity where a keep weight was saved, the seam
    # along the pasted hands' mask.
    hands = result["hands"]
    kept = [n for n in generated if (out / f"{n}_stage1" / "keep.png").is_file()]
    assert hands["fidelity_count"] == len(kept) and hands["fidelity_unscored"] == 3 - len(kept)
    assert kept and hands["fidelity"] is not None
    assert hands["seam_mask"].get("pasted", 0) >= 1 and hands["crop_count"] >= 3
    per_image = [
        json.loads(line)["image_id"] for line in (report / "per_image.jsonl").read_text().splitlines()
    ]
    assert sorted(per_image) == generated
    # The same default split (test) for both: the synthetic manifest has none, and both say so.
    capsys.readouterr()
    assert (
        main(
            [
                "generate",
                "--from-manifest",
                str(synthetic_manifest),
                *_models(tiny_runs),
                "--out",
                str(tmp_path / "none"),
                *STEPS,
            ]
        )
        == 1
    )
    assert (
        main(
            [
                "evaluate",
                "--manifest",
                str(synthetic_manifest),
                "--generated",
                str(out),
                "--out",
                str(tmp_path / "r2"),
                "--no-progress",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("no images with status ok in split 'test'") == 2, err


def test_generate_from_a_photo(tiny_runs, data_dir, tmp_path, capsys):
    photo = data_dir / "photos" / "pointing_up.jpg"
    blank = tmp_path / "blank.png"
    Image.new("RGB", (96, 64), (128, 128, 128)).save(blank)  # nobody in it
    out = tmp_path / "photo"
    rc = main(
        [
            "generate",
            "--from-image",
            str(photo),
            str(blank),
            *_models(tiny_runs),
            "--out",
            str(out),
            "--size",
            "96",
            "--steps",
            "2",
        ]
    )
    assert rc == 1 and "blank: " in capsys.readouterr().err and not (out / "blank.png").exists()
    failure = json.loads((out / "failures.jsonl").read_text().splitlines()[0])
    assert failure["name"] == "blank" and "no hands and no body pose detected" in failure["error"]
    side = json.loads((out / "pointing_up.json").read_text())
    with Image.open(photo) as im:
        expected = output_size(*im.size, 96)
    with Image.open(out / "pointing_up.png") as im:
        assert im.size == expected
    assert side["source"]["kind"] == "image" and side["source"]["detected_hands"] >= 1
    assert len(side["spec"]["hands"]) >= 1 and side["result"]["detected"].startswith("found")


def test_clear_errors(tiny_runs, tmp_path, capsys):
    out = str(tmp_path / "err")
    spec = pose_spec_file(tmp_path / "ok.json")
    assert (
        main(
            [
                "generate",
                "--spec",
                spec,
                "--hand-model",
                str(tmp_path / "missing"),
                "--body-model",
                tiny_runs[1],
                "--out",
                out,
            ]
        )
        == 1
    )
    assert "hand model folder not found" in capsys.readouterr().err

    bad = json.loads(open(spec).read())
    bad["hands"][0]["keypoints"][2] = [float("nan"), 3.0]
    (tmp_path / "nan.json").write_text(json.dumps(bad))
    assert main(["generate", "--spec", str(tmp_path / "nan.json"), *_models(tiny_runs), "--out", out]) == 1
    assert "nan.json: hands[0].keypoints: NaN or infinite values at points [2]" in capsys.readouterr().err

    bad = json.loads(open(spec).read())
    bad["body"]["format"] = "coco17"
    (tmp_path / "fmt.json").write_text(json.dumps(bad))
    assert main(["generate", "--spec", str(tmp_path / "fmt.json"), *_models(tiny_runs), "--out", out]) == 1
    assert "body.format: unknown body format 'coco17'" in capsys.readouterr().err

    assert main(["generate", "--spec", spec, "--from-manifest", "x", *_models(tiny_runs), "--out", out]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_small_hand_refused_in_a_batch_the_rest_written(tiny_runs, tmp_path, capsys):
    good = pose_spec_file(tmp_path / "good.json")
    tiny = json.loads(open(good).read())
    wrist = np.array(tiny["hands"][1]["keypoints"][0])
    tiny["hands"][1]["keypoints"] = (
        (np.array(tiny["hands"][1]["keypoints"]) - wrist) * 0.25 + wrist
    ).tolist()
    (tmp_path / "tiny.json").write_text(json.dumps(tiny))
    out = tmp_path / "batch"
    rc = main(
        [
            "generate",
            "--spec",
            good,
            str(tmp_path / "tiny.json"),
            *_models(tiny_runs),
            "--out",
            str(out),
            "--small-hands",
            "refuse",
            "--min-hand-size",
            "8",
            *STEPS,
        ]
    )
    assert rc == 1 and (out / "good.png").is_file() and not (out / "tiny.png").exists()
    assert "tiny: hand 1 (left) spans" in capsys.readouterr().err
    failure = json.loads((out / "failures.jsonl").read_text().splitlines()[0])
    assert failure["name"] == "tiny" and "less than min_hand_size=8 px" in failure["error"]


def test_models_that_do_not_fit_together(tiny_runs, tmp_path, capsys):
    from generation.pipelines.body import BodyOutpaintPipeline

    body = BodyOutpaintPipeline.from_pretrained(tiny_runs[1])
    body.vae.register_to_config(scaling_factor=0.13025)
    body.save_pretrained(tmp_path / "other_body")
    rc = main(
        [
            "generate",
            "--spec",
            pose_spec_file(tmp_path / "s.json"),
            "--hand-model",
            tiny_runs[0],
            "--body-model",
            str(tmp_path / "other_body"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 1
    assert (
        "do not fit together: VAE scaling factor differs: hand 0.18215, body 0.13025"
        in capsys.readouterr().err
    )
