"""`handfirst-gen baseline`: one-stage baselines on exactly the rows generate --from-manifest takes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from generation.cli import main

pytestmark = pytest.mark.slow  # every test here draws the one-stage baselines


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """A tiny Stable Diffusion folder and a tiny 3-channel ControlNet folder, as a user would have them."""
    from generation.models.body import controlnet_from_unet
    from generation.models.loading import build_components, save_components

    root = tmp_path_factory.mktemp("baseline_models")
    c = build_components("tiny", resolution=64, seed=0)
    save_components(c, str(root / "sd"))
    controlnet_from_unet(c.unet, conditioning_channels=3, scale_factor=c.vae_scale_factor).save_pretrained(
        str(root / "openpose")
    )
    return str(root / "sd"), str(root / "openpose")


def _args(manifest, out, sd, *extra):
    return [
        "baseline",
        "--from-manifest",
        str(manifest),
        "--out",
        str(out),
        "--pretrained",
        sd,
        "--split",
        "all",
        "--limit",
        "2",
        "--size",
        "60",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def test_controlnet_openpose_writes_what_generate_would_name(
    synthetic_manifest, tiny_folders, tmp_path, capsys
):
    from generation.generate import requests_from_manifest

    sd, openpose = tiny_folders
    out = tmp_path / "baseline-openpose"
    assert main(_args(synthetic_manifest, out, sd, "--controlnet", openpose)) == 0
    assert "controlnet-openpose: wrote 2 image(s), skipped 0" in capsys.readouterr().out
    requests = requests_from_manifest(str(synthetic_manifest), None, 60, "all", 2, 0)
    for request in requests:
        spec = request.spec
        image = np.asarray(Image.open(out / f"{request.name}.png"))
        # 60 px longer side is not a multiple of 8: drawn at 64 and cropped back to the frame.
        assert image.shape == (spec.height, spec.width, 3) and max(image.shape[:2]) == 60
        sidecar = json.loads((out / f"{request.name}.json").read_text())
        assert sidecar["source"] == request.source and sidecar["spec"] == json.loads(
            json.dumps(spec.to_dict())
        )
        assert sidecar["baseline"] == "controlnet-openpose" and sidecar["models"]["controlnet"].endswith(
            "openpose"
        )
        condition = np.asarray(Image.open(out / sidecar["files"]["condition"]))
        assert condition.shape == image.shape
        for hand in spec.hands:  # every visible hand joint is drawn
            for x, y, score in hand.keypoints:
                if score > 0 and 0 <= x < spec.width - 1 and 0 <= y < spec.height - 1:
                    assert condition[int(round(y)), int(round(x))].any()

    # A rerun skips what is done; --overwrite redoes it.
    assert main(_args(synthetic_manifest, out, sd, "--controlnet", openpose)) == 0
    assert "wrote 0 image(s), skipped 2" in capsys.readouterr().out


def test_sd_floor_and_bad_method_settings(synthetic_manifest, tiny_folders, tmp_path, capsys):
    sd, openpose = tiny_folders
    assert main(_args(synthetic_manifest, tmp_path / "sd", sd, "--method", "sd")) == 0
    names = sorted(p.name for p in (tmp_path / "sd").iterdir())
    assert len(names) == 4 and not any("condition" in n for n in names)

    # settings that do not go together: usage errors
    assert main(_args(synthetic_manifest, tmp_path / "x", sd)) == 2
    assert "controlnet-openpose needs --controlnet DIR" in capsys.readouterr().err
    assert (
        main(_args(synthetic_manifest, tmp_path / "x", sd, "--method", "sd", "--controlnet", openpose)) == 2
    )
    assert "--method sd draws from the prompt alone" in capsys.readouterr().err
    assert main(_args(synthetic_manifest, tmp_path / "x", sd, "--controlnet", sd)) == 1
    assert "not a diffusers ControlNet folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_openpose_full_is_the_outpainters_pose_channels_with_hand_skeletons():
    import torch

    from generation.pipelines.condition import (
        ConditionConfig,
        ConditionInputs,
        build_condition,
        render_openpose,
    )

    rng = np.random.default_rng(0)
    body = np.concatenate([rng.uniform(10, 90, (33, 2)), np.ones((33, 1))], axis=1)
    hand = np.concatenate([rng.uniform(20, 80, (21, 2)), np.ones((21, 1))], axis=1)
    drawn = render_openpose(100, 80, body, "mediapipe33", [hand])
    assert drawn.shape == (80, 100, 3) and drawn.dtype == np.uint8
    cfg = ConditionConfig(channels=("pose",), draw_hand_skeletons=True)
    inputs = ConditionInputs(body, np.zeros((80, 100, 3), np.uint8), np.zeros((80, 100), bool), [hand])
    channels = build_condition(inputs, cfg)
    assert torch.equal(channels, torch.from_numpy(drawn).permute(2, 0, 1).float() / 255.0)

    no_body = render_openpose(100, 80, None, "mediapipe33", [hand])  # hands alone still draw
    assert no_body.any() and (drawn.astype(int).sum() > no_body.astype(int).sum())
    assert not render_openpose(100, 80, None).any()


def test_fit_draws_frames_at_the_training_scale_as_generate_does(
    synthetic_manifest, tiny_folders, tmp_path, capsys
):
    from generation.generate import requests_from_manifest

    sd, openpose = tiny_folders
    out = tmp_path / "framed"
    args = _args(synthetic_manifest, out, sd, "--controlnet", openpose, "--fit", "cover", "--size", "64")
    assert main(args) == 0
    for request in requests_from_manifest(str(synthetic_manifest), None, 64, "all", 2, 0, fit="cover"):
        image = Image.open(out / f"{request.name}.png")
        assert image.size == (request.spec.width, request.spec.height) and min(image.size) == 64
    # --framing hands: generate's square around the hands, its window in the sidecar for evaluate.
    square = tmp_path / "square"
    assert (
        main(
            [
                *_args(synthetic_manifest, square, sd, "--controlnet", openpose, "--fit", "cover"),
                "--size",
                "64",
                "--framing",
                "hands",
            ]
        )
        == 0
    )
    for request in requests_from_manifest(str(synthetic_manifest), None, 64, "all", 2, 0, "cover", "hands"):
        assert Image.open(square / f"{request.name}.png").size == (64, 64)
        sidecar = json.loads((square / f"{request.name}.json").read_text())
        assert sidecar["source"]["window"] == request.source["window"]


def test_a_batch_gives_the_one_by_one_images_and_dry_run_writes_nothing(
    synthetic_manifest, tiny_folders, tmp_path, capsys
):
    sd, openpose = tiny_folders
    one, batched = tmp_path / "one", tmp_path / "batched"
    extra = ["--controlnet", openpose, "--limit", "4"]
    assert main(_args(synthetic_manifest, one, sd, *extra)) == 0
    assert main(_args(synthetic_manifest, batched, sd, *extra, "--batch-size", "4")) == 0
    pngs = sorted(p.name for p in one.glob("*.png"))
    assert pngs == sorted(p.name for p in batched.glob("*.png")) and len(pngs) == 8  # 4 images + conditions
    for name in pngs:
        a = np.asarray(Image.open(one / name), np.int16)
        b = np.asarray(Image.open(batched / name), np.int16)
        assert np.abs(a - b).max() <= 2, name  # float rounding only
    sizes = {json.loads(p.read_text())["batch"] for p in batched.glob("*.json")}
    assert sizes <= {1, 2, 3, 4} and max(sizes) > 1  # rows of one drawn size went through together
    capsys.readouterr()
    assert main(_args(synthetic_manifest, tmp_path / "dry", sd, *extra, "--dry-run")) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["steps"]["images"] == 4 and plan["models"]["parameters"]["controlnet"] > 0
    assert not (tmp_path / "dry").exists()
