"""Generation inputs that could crash or run away: seeds outside torch's range, what one image may cost,
sizes of 0, empty pose files, incomplete model folders and NaN weights. Each is one clear error line."""

import json
import shutil

import numpy as np
import pytest
import torch
from two_stage_helpers import call_two_stage, pose_spec_file, tiny_two_stage_parts

from generation import HandGenerationPipeline, TwoStageHandBodyPipeline
from generation.cli import main
from generation.guards import CostLimitError, NonFiniteOutputError, check_image_cost, check_seed, offset_seed
from generation.models.loading import ModelFolderError
from manifests.synthetic import synthetic_hand

SEED_RANGE = r"\[0, 2\*\*64\)"


@pytest.fixture(scope="module")
def pipes():
    hand, body = tiny_two_stage_parts()
    for p in (hand, body):
        p.set_progress_bar_config(disable=True)
    two = TwoStageHandBodyPipeline.from_pipelines(hand, body, crop_margin=0.25)
    two.set_progress_bar_config(disable=True)
    return hand, body, two


@pytest.fixture(scope="module")
def folders(pipes, tmp_path_factory):
    """The tiny hand and body pipelines saved as model folders (what a finished run folder holds)."""
    root = tmp_path_factory.mktemp("models")
    pipes[0].save_pretrained(str(root / "hand"))
    pipes[1].save_pretrained(str(root / "body"))
    return root / "hand", root / "body"


@pytest.fixture(scope="module")
def pose_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pose") / "pose.json"
    path.write_text(json.dumps(synthetic_hand(np.random.default_rng(0), (32, 32), 36)[:, :2].tolist()))
    return path


class poisoned:
    """Fill one parameter with NaN for the duration of a `with` block (the module fixtures stay clean)."""

    def __init__(self, param):
        self.param, self.saved = param, param.detach().clone()

    def __enter__(self):
        with torch.no_grad():
            self.param.fill_(float("nan"))

    def __exit__(self, *exc):
        with torch.no_grad():
            self.param.copy_(self.saved)


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"handfirst-gen {command}: error: "), err
    return last


# ---------------------------------------------------------------------------------------------------
# seeds


def test_seeds_outside_the_generator_range_name_the_range():
    for bad in (2**70, 2**64, -1, 1.5, "7", None, True):
        with pytest.raises(ValueError, match=SEED_RANGE):
            check_seed(bad)
    assert check_seed(0) == 0 and check_seed(2**64 - 1) == 2**64 - 1 and check_seed(3.0) == 3
    # Stage 2's seed is seed + 1, wrapped so the largest seed still has one; other seeds are unchanged.
    assert offset_seed(7, 1) == 8 and offset_seed(2**64 - 1, 1) == 0


def test_pipelines_refuse_a_huge_seed_and_take_the_largest_valid_one(pipes, pose_file):
    hand, _, two = pipes
    kps = json.loads(pose_file.read_text())
    with pytest.raises(ValueError, match=SEED_RANGE):
        hand("a hand", keypoints=kps, num_inference_steps=1, seed=2**70)
    with pytest.raises(ValueError, match=SEED_RANGE):
        call_two_stage(two, seed=2**70)
    # Stage 2 seeds with seed + 1 wrapped into [0, 2**64): unwrapped, 2**64 is an OverflowError in torch.
    out = call_two_stage(two, seed=2**64 - 1, num_inference_steps=1)
    assert out.images.shape == (1, 96, 128, 3)


# ---------------------------------------------------------------------------------------------------
# what one image may cost, and sizes of 0


def test_cost_bounds_are_inclusive_and_count_the_hands():
    check_image_cost(128, 96, 3, max_pixels=128 * 96, max_pixel_steps=128 * 96 * 3)
    with pytest.raises(CostLimitError, match=r"image 128x96 is 12,288 pixels, over max_pixels 12,287"):
        check_image_cost(128, 96, 3, max_pixels=128 * 96 - 1)
    with pytest.raises(
        CostLimitError,
        match=r"128x96 x 3 steps \+ 10 for its hands is 36,874 pixel-steps, "
        r"over max_pixel_steps 36,873",
    ):
        check_image_cost(128, 96, 3, max_pixel_steps=36_873, extra_pixel_steps=10)
    with pytest.raises(ValueError, match="max_pixels must be an integer >= 1, got 0"):
        check_image_cost(8, 8, 1, max_pixels=0)


def test_a_huge_request_is_refused_before_anything_is_drawn(pipes, pose_file, monkeypatch):
    hand, body, two = pipes

    def never(*args, **kwargs):
        raise AssertionError("drew or allocated before checking the cost")

    monkeypatch.setattr("generation.pipelines.hand.keypoints_to_heatmaps", never)
    monkeypatch.setattr("generation.pipelines.two_stage_request.keypoints_to_heatmaps", never)
    monkeypatch.setattr(two, "place_hands", never)
    kps = json.loads(pose_file.read_text())
    with pytest.raises(
        CostLimitError, match=r"hand crop 100000x100000 is 10,000,000,000 pixels, over max_pixels"
    ):
        hand("a hand", keypoints=kps, size=100_000, num_inference_steps=1)
    with pytest.raises(
        CostLimitError,
        match=r"image \(stage-2 canvas\) 8192x8192 is 67,108,864 pixels, over "
        r"max_pixels 4,194,304 \(2048x2048\)",
    ):
        call_two_stage(two, width=8192, height=8192)
    with pytest.raises(CostLimitError, match="over max_pixel_steps"):
        call_two_stage(two, num_inference_steps=100_000)
    with pytest.raises(CostLimitError, match="max_pixels 12,287"):
        call_two_stage(two, max_pixels=128 * 96 - 1)
    with pytest.raises(CostLimitError, match="over max_pixels"):
        body("a person", condition=torch.zeros(1, 5, 4096, 4096), num_inference_steps=1)


def test_zero_sizes_and_steps_are_errors_not_the_default(pipes, pose_file):
    hand, body, two = pipes
    kps = json.loads(pose_file.read_text())
    with pytest.raises(ValueError, match="size must be a positive multiple of 8 pixels, got 0"):
        hand("a hand", keypoints=kps, size=0, num_inference_steps=1)
    with pytest.raises(ValueError, match="num_images_per_prompt must be an integer >= 1, got 0"):
        hand("a hand", keypoints=kps, num_images_per_prompt=0, num_inference_steps=1)
    condition = torch.zeros(1, body.controlnet.config.conditioning_channels, 64, 64)
    with pytest.raises(ValueError, match="height must be a positive integer, got 0"):
        body("a person", condition=condition, height=0, num_inference_steps=1)
    with pytest.raises(ValueError, match="hand_num_inference_steps must be >= 1, got 0"):
        call_two_stage(two, hand_num_inference_steps=0)


# ---------------------------------------------------------------------------------------------------
# NaN weights


def test_nan_weights_stop_each_pipeline_with_the_model_named(pipes, pose_file):
    hand, body, two = pipes
    kps = json.loads(pose_file.read_text())
    with poisoned(hand.unet.unet.conv_out.weight):
        with pytest.raises(
            NonFiniteOutputError,
            match=r"hand model's denoised latents hold NaN/inf values "
            r"\(100%.*unet has NaN/inf weights in 1 tensor\(s\) "
            r"\(e\.g\. unet\.conv_out\.weight\)",
        ):
            hand("a hand", keypoints=kps, num_inference_steps=1, seed=0)
    with poisoned(hand.vae.decoder.conv_out.bias):
        with pytest.raises(
            NonFiniteOutputError, match=r"VAE's decoded hand pixels .*vae has NaN/inf weights"
        ):
            hand("a hand", keypoints=kps, num_inference_steps=1, seed=0)
    with poisoned(body.controlnet.controlnet_mid_block.weight):
        with pytest.raises(
            NonFiniteOutputError, match=r"body model's denoised latents.*controlnet_mid_block"
        ):
            call_two_stage(two, num_inference_steps=1)
    # Finite weights and non-finite latents: the message points at the precision instead.
    condition = torch.zeros(1, body.controlnet.config.conditioning_channels, 64, 64)
    with pytest.raises(NonFiniteOutputError, match="weights are finite, so the values overflowed"):
        body("a person", condition=condition, num_inference_steps=1, latents=torch.full((1, 4, 8, 8), np.inf))


# ---------------------------------------------------------------------------------------------------
# the commands


def test_sample_hand_bad_inputs_are_one_error_line_and_write_nothing(folders, pose_file, tmp_path, capsys):
    model, out = str(folders[0]), tmp_path / "out"
    base = ["sample-hand", "--model", model, "--keypoints", str(pose_file), "--out", str(out), "--steps", "1"]
    empty = tmp_path / "empty.json"
    empty.write_text("[[]]")
    cases = {
        "pose 0: expected 21 points of [x, y] or [x, y, score], got shape (0,)": ["--keypoints", str(empty)],
        # the CLI's settings are checked first (manifests.settings); the pipeline checks the same again
        "num_images_per_pose (--num-images-per-pose) must be >= 1, got 0": ["--num-images-per-pose", "0"],
        "seed (--seed) must be <= 18446744073709551615": ["--seed", str(2**70)],
        "size (--size) must be >= 8, got 0": ["--size", "0"],
        "hand crop 100000x100000 is 10,000,000,000 pixels, over max_pixels 4,194,304": ["--size", "100000"],
        "over max_pixels 4,095": ["--max-pixels", "4095"],
    }
    for message, extra in cases.items():
        code = 2 if "must be" in message else 1  # a setting outside its range is a usage error
        assert main([*base, *extra]) == code, extra
        assert message in _one_error_line(capsys, "sample-hand"), extra
    assert not out.exists()
    assert main([*base, "--max-pixels", "4096"]) == 0  # the bound is inclusive: a 64 px crop fits
    assert (out / "hand_000.png").is_file()


def test_sample_hand_with_nan_weights_fails_instead_of_writing_black_hands(
    pipes, tmp_path, pose_file, capsys
):
    hand = pipes[0]
    with poisoned(hand.unet.unet.conv_out.weight):
        hand.save_pretrained(str(tmp_path / "nan"))
    out = tmp_path / "out"
    rc = main(
        [
            "sample-hand",
            "--model",
            str(tmp_path / "nan"),
            "--keypoints",
            str(pose_file),
            "--out",
            str(out),
            "--steps",
            "1",
        ]
    )
    assert rc == 1
    assert "NaN/inf weights in 1 tensor(s) (e.g. unet.conv_out.weight)" in _one_error_line(
        capsys, "sample-hand"
    )
    assert not out.exists()


def test_a_model_folder_missing_a_part_is_named(folders, tmp_path, pose_file, capsys):
    broken = tmp_path / "hand"
    shutil.copytree(folders[0], broken)
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(
        ModelFolderError, match=r"lacks the part\(s\) \['tokenizer'\] that its model_index.json"
    ):
        HandGenerationPipeline.from_pretrained(str(broken))
    rc = main(
        ["sample-hand", "--model", str(broken), "--keypoints", str(pose_file), "--out", str(tmp_path / "o")]
    )
    assert rc == 1 and "['tokenizer']" in _one_error_line(capsys, "sample-hand")
    # A tokenizer folder without its config gets no length limit: named instead of an OverflowError.
    (broken / "tokenizer").mkdir()
    shutil.copy(folders[0] / "tokenizer" / "tokenizer.json", broken / "tokenizer" / "tokenizer.json")
    rc = main(
        ["sample-hand", "--model", str(broken), "--keypoints", str(pose_file), "--out", str(tmp_path / "o")]
    )
    assert rc == 1 and "tokenizer has no usable model_max_length" in _one_error_line(capsys, "sample-hand")


def test_sample_body_checks_size_cost_and_seed_before_drawing(
    folders, synthetic_manifest, tmp_path, capsys, monkeypatch
):
    def never(*args, **kwargs):
        raise AssertionError("a manifest image was drawn before the checks")

    monkeypatch.setattr("generation.pipelines.body_inputs.manifest_inputs", never)
    out = tmp_path / "out"
    base = [
        "sample-body",
        "--model",
        str(folders[1]),
        "--manifest",
        str(synthetic_manifest),
        "--image-id",
        "synthetic_00001",
        "--out",
        str(out),
        "--steps",
        "1",
    ]
    cases = {
        "image 100000x100000 is 10,000,000,000 pixels, over max_pixels": ["--resolution", "100000"],
        "resolution (--resolution) must be >= 8, got 0": ["--resolution", "0"],
        "over max_pixel_steps 4,095": ["--resolution", "64", "--max-pixel-steps", "4095"],
        "seed (--seed) must be <= 18446744073709551615": ["--seed", str(2**70)],
        "guidance_scale (--guidance-scale) must be a finite number, got nan": ["--guidance-scale", "nan"],
    }
    for message, extra in cases.items():
        code = 2 if "must be" in message else 1  # a setting outside its range is a usage error
        assert main([*base, *extra]) == code, extra
        assert message in _one_error_line(capsys, "sample-body"), extra
    assert not list(out.glob("*.png"))


def test_generate_refuses_a_huge_canvas_and_a_huge_seed_per_image(folders, tmp_path, capsys):
    big = pose_spec_file(tmp_path / "big.json", width=8192, height=8192)
    seed = pose_spec_file(tmp_path / "seed.json", seed=2**70)
    out = tmp_path / "out"
    rc = main(
        [
            "generate",
            "--spec",
            big,
            seed,
            "--hand-model",
            str(folders[0]),
            "--body-model",
            str(folders[1]),
            "--out",
            str(out),
            "--steps",
            "1",
            "--no-detect",
        ]
    )
    assert rc == 1
    failures = {
        f["name"]: f["error"] for f in map(json.loads, (out / "failures.jsonl").read_text().splitlines())
    }
    assert failures["big"].startswith("CostLimitError: image (stage-2 canvas) 8192x8192 is 67,108,864 pixels")
    assert "seed must be in [0, 2**64)" in failures["seed"]
    assert not list(out.glob("*.png"))
    assert "Traceback" not in capsys.readouterr().err


def test_request_reaches_the_pipeline_with_its_bounds(folders, tmp_path):
    from generation.generate import GenerateConfig, Request, call_arguments
    from generation.spec import load_spec

    spec = load_spec(pose_spec_file(tmp_path / "s.json"))
    kwargs = call_arguments(Request(spec), GenerateConfig(max_pixels=123, max_pixel_steps=456, steps=7))
    assert kwargs["max_pixels"] == 123 and kwargs["max_pixel_steps"] == 456
    assert kwargs["hand_num_inference_steps"] == 7


# ---------------------------------------------------------------------------------------------------
# training run folders (--out)

FAST_RUN = ["--preset", "tiny", "--batch-size", "2", "--log-every", "1", "--checkpoint-every", "0",
            "--validate-every", "0", "--num-validation-poses", "1", "--validation-steps", "1",
            "--log-level", "WARNING"]  # fmt: skip


def _train_hand(manifest, run, *extra) -> int:
    return main(["train-hand", "--manifest", str(manifest), "--out", str(run), *FAST_RUN, *extra])


def _snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # trains
def test_train_refuses_user_files_and_another_tasks_run_whatever_the_options(
    synthetic_manifest, tmp_path, capsys
):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "config.json").write_text('{"my": "settings"}')
    (users / "model_index.json").write_text('{"keep": true}')
    (users / "notes.txt").write_text("do not touch")
    body_run = tmp_path / "body_run"
    body_run.mkdir()
    (body_run / "config.json").write_text(json.dumps({"task": "body", "config": {}}))
    before = {users: _snapshot(users), body_run: _snapshot(body_run)}
    for folder, what in (
        (users, "not a training run (no config.json naming its task)"),
        (body_run, "a train-body run"),
    ):
        for options in ([], ["--overwrite"], ["--resume", "latest"]):
            assert _train_hand(synthetic_manifest, folder, "--steps", "1", *options) == 1
            line = _one_error_line(capsys, "train-hand")
            assert f"is not empty and is {what}; train-hand writes only into" in line, (folder, options)
            assert _snapshot(folder) == before[folder]
    # A file where the folder should be is named too, and so is asking to resume and overwrite at once.
    assert _train_hand(synthetic_manifest, users / "notes.txt", "--steps", "1") == 1
    assert "exists and is not a folder" in _one_error_line(capsys, "train-hand")
    assert _train_hand(synthetic_manifest, tmp_path / "new", "--resume", "latest", "--overwrite") == 1
    assert "--resume and --overwrite exclude each other" in _one_error_line(capsys, "train-hand")
    assert not (tmp_path / "new").exists()


def test_train_hand_on_a_png_bomb_is_one_line_naming_the_shard_and_row(synthetic_manifest, tmp_path, capsys):
    from hostile_files import png_bomb_manifest

    root = png_bomb_manifest(synthetic_manifest, tmp_path / "bombs", 3000, rows=1000)  # all of shard 0
    assert _train_hand(root, tmp_path / "run", "--steps", "50") == 1
    line = _one_error_line(capsys, "train-hand")
    assert "hands/shard-00000.parquet row group" in line and "crop: image header is 3000x3000" in line


class _Marker:
    """A pickle that, once loaded, creates the file `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.slow  # trains
def test_init_from_a_folder_of_pickled_weights_is_one_line_and_unpickles_nothing(
    tiny_runs, synthetic_manifest, tmp_path, capsys
):
    import pickle
    import shutil

    source = tmp_path / "pickled"
    shutil.copytree(tiny_runs[0], source, ignore=shutil.ignore_patterns("checkpoints", "validation"))
    marker = tmp_path / "unpickled"
    for weights in source.glob("*/*.safetensors"):
        weights.unlink()
        name = "pytorch_model.bin" if weights.name == "model.safetensors" else "diffusion_pytorch_model.bin"
        (weights.parent / name).write_bytes(pickle.dumps(_Marker(marker)))
    assert _train_hand(synthetic_manifest, tmp_path / "run", "--steps", "1", "--init-from", str(source)) == 1
    line = _one_error_line(capsys, "train-hand")
    assert "holds pickled weights (" in line and "model.bin) and no .safetensors" in line
    assert not marker.exists() and not (tmp_path / "run" / "model_index.json").exists()


@pytest.mark.slow  # trains
def test_an_existing_run_needs_resume_or_overwrite(synthetic_manifest, tmp_path, capsys):
    from generation.training.checkpoint import list_checkpoints
    from generation.training.metrics import read_metrics

    run = tmp_path / "run"
    assert _train_hand(synthetic_manifest, run, "--steps", "2") == 0
    (run / "notes.txt").write_text("mine")  # a file of the user's inside a run folder
    first = _snapshot(run)
    assert _train_hand(synthetic_manifest, run, "--steps", "2") == 1
    line = _one_error_line(capsys, "train-hand")
    assert "already holds a train-hand run (checkpoints up to step 2); pass --resume latest" in line
    assert _snapshot(run) == first  # no second run's metrics interleaved, no checkpoint replaced

    assert _train_hand(synthetic_manifest, run, "--steps", "1", "--overwrite") == 0
    assert [r["step"] for r in read_metrics(str(run)) if "loss" in r] == [1]
    assert [s for s, _ in list_checkpoints(str(run))] == [1]
    assert (run / "notes.txt").read_text() == "mine" and (run / "model_index.json").is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["overwrite"] is True and config["config"]["steps"] == 1

    # The run's own config.json as --config continues it: its `overwrite` is not taken over.
    rc = main(
        [
            "train-hand",
            "--config",
            str(run / "config.json"),
            "--resume",
            "latest",
            "--steps",
            "2",
            "--log-level",
            "WARNING",
        ]
    )
    assert rc == 0
    assert [r["step"] for r in read_metrics(str(run)) if "loss" in r] == [1, 2]


@pytest.mark.slow  # trains
def test_overwrite_deletes_only_what_the_task_writes_not_what_model_index_json_lists(
    synthetic_manifest, tmp_path
):
    run = tmp_path / "run"
    assert _train_hand(synthetic_manifest, run, "--steps", "1") == 0
    index = json.loads((run / "model_index.json").read_text())
    index.update(user_plots=["diffusers", "ConfigMixin"], **{"my_notes.txt": ["diffusers", "ConfigMixin"]})
    (run / "model_index.json").write_text(json.dumps(index))
    (run / "user_plots").mkdir()
    (run / "user_plots" / "loss.png").write_bytes(b"mine")
    (run / "my_notes.txt").write_text("mine")
    assert _train_hand(synthetic_manifest, run, "--steps", "1", "--overwrite") == 0
    assert (run / "user_plots" / "loss.png").read_bytes() == b"mine"
    assert (run / "my_notes.txt").read_text() == "mine"
    assert (run / "unet").is_dir() and "user_plots" not in json.loads((run / "model_index.json").read_text())


@pytest.mark.slow  # trains
def test_a_resume_with_a_new_learning_rate_trains_with_it_and_config_json_says_so(
    synthetic_manifest, tmp_path
):
    from generation.training.hand import HandTrainConfig, train_hand
    from generation.training.metrics import read_metrics

    kw = dict(
        manifest=str(synthetic_manifest),
        out=str(tmp_path / "run"),
        steps=4,
        batch_size=2,
        log_every=1,
        checkpoint_every=0,
        validate_every=0,
        num_validation_poses=1,
        validation_steps=1,
        lr_schedule="constant",
        learning_rate=1e-3,
        ema_decay=0.99,
    )
    assert not train_hand(HandTrainConfig(**kw, interrupt_after=2)).finished
    assert train_hand(
        HandTrainConfig(**{**kw, "learning_rate": 5e-4, "ema_decay": 0.9}, resume="latest")
    ).finished
    lrs = [r["lr"] for r in read_metrics(str(tmp_path / "run")) if "loss" in r]
    assert lrs == [1e-3, 1e-3, 5e-4, 5e-4]  # the checkpoint must not bring 1e-3 back for steps 3 and 4
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["learning_rate"] == 5e-4
    assert config["changed_on_resume"] == {"learning_rate": [1e-3, 5e-4], "ema_decay": [0.99, 0.9]}


@pytest.mark.slow  # trains
def test_training_takes_the_largest_seed(synthetic_manifest, tmp_path):
    from generation.training.hand import HandTrainConfig, train_hand

    config = HandTrainConfig(
        manifest=str(synthetic_manifest),
        out=str(tmp_path / "run"),
        steps=1,
        batch_size=2,
        checkpoint_every=0,
        validate_every=0,
        num_validation_poses=1,
        validation_steps=1,
        seed=2**64 - 1,
    )
    assert train_hand(config).finished  # numpy's global seed and seed * 7919 must not overflow
    from generation.training.body import train_body
    from generation.training.body_config import BodyTrainConfig

    body = BodyTrainConfig(
        manifest=str(synthetic_manifest),
        out=str(tmp_path / "body"),
        steps=1,
        batch_size=2,
        checkpoint_every=0,
        validate_every=0,
        num_validation_images=2,
        validation_steps=1,
        seed=2**64 - 1,
    )
    assert train_body(body).finished  # its second validation image was seeded with seed + 1
