"""A saved model carries what generation needs from its training (the hand crop margin, the body
framing): a run folder copied away from its manifest generates the same image, and a model saved
without them is refused with one clear error."""

import json
import os
import shutil

import numpy as np
import pytest

from generation import TwoStageHandBodyPipeline
from generation.cli import main
from generation.spec import load_spec

MARGIN = 0.45  # not prep's default, so a margin guessed instead of read shows in the image


def _spec(path) -> str:
    """examples/pose.json scaled into a 128 x 96 canvas."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "examples", "pose.json")) as f:
        obj = json.load(f)
    obj.update(width=128, height=96, seed=1)
    obj["body"]["keypoints"] = [[x * 0.25, y * 0.1875, v] for x, y, v in obj["body"]["keypoints"]]
    for hand in obj["hands"]:
        hand["keypoints"] = [[x * 0.25, y * 0.1875] for x, y in hand["keypoints"]]
    path.write_text(json.dumps(obj))
    return str(path)


def _draw(hand_run, body_run, spec) -> np.ndarray:
    pipe = TwoStageHandBodyPipeline.from_runs(hand_run, body_run)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.crop_margin == pytest.approx(MARGIN)
    return pipe(spec=load_spec(spec), num_inference_steps=2, output_type="np").images[0]


def test_a_run_folder_moved_away_from_its_manifest_generates_the_same_image(
    synthetic_manifest, tiny_runs, tmp_path
):
    manifest = tmp_path / "manifest"
    shutil.copytree(synthetic_manifest, manifest)
    info = json.loads((manifest / "_manifest.json").read_text())
    info.setdefault("config", {})["crop_margin"] = MARGIN
    (manifest / "_manifest.json").write_text(json.dumps(info))
    hand = tmp_path / "hand"
    args = ["train-hand", "--preset", "tiny", "--manifest", str(manifest), "--out", str(hand)]
    args += ["--steps", "1", "--batch-size", "2", "--checkpoint-every", "0", "--validate-every", "0"]
    assert main([*args, "--log-level", "WARNING"]) == 0
    spec = _spec(tmp_path / "pose.json")
    before = _draw(str(hand), tiny_runs[1], spec)

    shutil.move(str(manifest), str(tmp_path / "elsewhere"))
    moved = tmp_path / "copied" / "hand"
    shutil.copytree(hand, moved)
    shutil.rmtree(hand)
    np.testing.assert_array_equal(_draw(str(moved), tiny_runs[1], spec), before)


def test_models_saved_without_what_they_learned_are_refused_with_one_clear_error(
    tiny_runs, synthetic_manifest, tmp_path
):
    hand, body = tmp_path / "hand", tmp_path / "body"
    shutil.copytree(tiny_runs[0], hand)
    shutil.copytree(tiny_runs[1], body)
    unet_config = json.loads((hand / "unet" / "config.json").read_text())
    assert unet_config["crop_margin"] == 0.25  # the synthetic manifest records none: prep's default
    del unet_config["crop_margin"]
    (hand / "unet" / "config.json").write_text(json.dumps(unet_config))
    with pytest.raises(ValueError, match="the hand generator records no crop_margin"):
        TwoStageHandBodyPipeline.from_runs(str(hand), str(body))
    assert TwoStageHandBodyPipeline.from_runs(str(hand), str(body), crop_margin=0.3).config.crop_margin == 0.3

    index = json.loads((body / "model_index.json").read_text())
    assert index["fit"] == "cover"  # train-body's --fit
    del index["fit"]
    (body / "model_index.json").write_text(json.dumps(index))
    args = ["generate", "--from-manifest", str(synthetic_manifest), "--image-id", "synthetic_00001"]
    args += ["--hand-model", tiny_runs[0], "--body-model", str(body), "--steps", "1", "--no-detect"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / "synthetic_00001.png").exists()
    assert main([*args, "--out", str(tmp_path / "sized"), "--size", "64"]) == 0
