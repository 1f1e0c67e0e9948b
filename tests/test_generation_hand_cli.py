"""`handfirst-gen train-hand` then `sample-hand`, end to end through the real pipeline class."""

import json

import numpy as np
import pytest
from PIL import Image

from generation import HandGenerationPipeline
from generation.cli import COMMANDS, main
from generation.commands.sample_hand import PoseFileError, load_poses
from manifests.synthetic import synthetic_hand

pytestmark = pytest.mark.slow  # every test here trains and samples through the CLI


def _pose(seed: int) -> list:
    return synthetic_hand(np.random.default_rng(seed), (32, 32), 36)[:, :2].round(2).tolist()


def test_train_hand_then_sample_hand(synthetic_manifest, tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "samples"
    rc = main(
        [
            "train-hand",
            "--preset",
            "tiny",
            "--manifest",
            str(synthetic_manifest),
            "--steps",
            "20",
            "--out",
            str(run),
            "--validate-every",
            "0",
            "--validation-steps",
            "1",
            "--log-level",
            "WARNING",
        ]
    )
    assert rc == 0
    assert "finished at step 20" in capsys.readouterr().out
    assert len([line for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]) == 2
    assert (run / "curves.png").stat().st_size > 1000  # the losses and the learning rate, as a picture
    assert isinstance(HandGenerationPipeline.from_pretrained(str(run)), HandGenerationPipeline)

    pose_file = tmp_path / "pose.json"
    pose_file.write_text(json.dumps([_pose(0), _pose(1)]))
    rc = main(
        [
            "sample-hand",
            "--model",
            str(run),
            "--keypoints",
            str(pose_file),
            "--out",
            str(out),
            "--steps",
            "2",
            "--num-images-per-pose",
            "2",
            "--save-probabilities",
        ]
    )
    assert rc == 0
    images = sorted(p.name for p in out.glob("hand_???.png"))
    assert images == ["hand_000.png", "hand_001.png", "hand_002.png", "hand_003.png"]
    for name in images:
        img = Image.open(out / name)
        mask = np.asarray(Image.open(out / name.replace(".png", "_mask.png")))
        assert img.size == (64, 64) and img.mode == "RGB"
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        assert (out / name.replace(".png", "_mask_prob.png")).is_file()

    # A single pose (21 pairs) works too.
    pose_file.write_text(json.dumps(_pose(2)))
    assert (
        main(
            [
                "sample-hand",
                "--model",
                str(run),
                "--keypoints",
                str(pose_file),
                "--out",
                str(tmp_path / "one"),
                "--steps",
                "1",
            ]
        )
        == 0
    )
    assert (tmp_path / "one" / "hand_000_mask.png").is_file() and not (
        tmp_path / "one" / "hand_001.png"
    ).exists()


def test_cli_errors_are_reported_not_raised(synthetic_manifest, tmp_path, capsys):
    assert (
        main(
            [
                "sample-hand",
                "--model",
                str(tmp_path / "nope"),
                "--keypoints",
                str(tmp_path / "p.json"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "no such keypoints file" in capsys.readouterr().err
    (tmp_path / "p.json").write_text(json.dumps(_pose(0)))
    assert (
        main(
            [
                "sample-hand",
                "--model",
                str(tmp_path / "nope"),
                "--keypoints",
                str(tmp_path / "p.json"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "hand model folder not found" in capsys.readouterr().err
    rc = main(
        [
            "train-hand",
            "--preset",
            "sd",
            "--pretrained",
            str(tmp_path / "sd15"),
            "--manifest",
            str(synthetic_manifest),
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "1",
        ]
    )
    assert rc == 1 and "Stable Diffusion folder not found" in capsys.readouterr().err
    # Settings that do not go together: a usage error.
    assert main(["train-hand", "--preset", "sd", "--manifest", str(synthetic_manifest), "--steps", "1"]) == 2
    assert "--preset sd needs --pretrained" in capsys.readouterr().err
    assert main(["paint"]) == 2 and "unknown command 'paint'" in capsys.readouterr().err
    assert main(["--help"]) == 0
    overview = capsys.readouterr().out
    assert all(name in overview for name in COMMANDS)


def test_pose_file_validation(tmp_path):
    f = tmp_path / "pose.json"
    f.write_text(json.dumps([[1, 2]] * 20))
    with pytest.raises(
        PoseFileError, match=r"pose 0: expected 21 points of \[x, y\] or \[x, y, score\], got shape \(20, 2\)"
    ):
        load_poses(str(f))
    f.write_text("[[1, 2],")
    with pytest.raises(PoseFileError, match="not valid JSON"):
        load_poses(str(f))
    f.write_text(json.dumps([_pose(0), [["a", "b"]] * 21]))
    with pytest.raises(PoseFileError, match="pose 1: not a list of numbers"):
        load_poses(str(f))
    f.write_text(json.dumps({"keypoints": _pose(0)}))
    assert load_poses(str(f)).shape == (1, 21, 3)  # [x, y] poses get score 1
