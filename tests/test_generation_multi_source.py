"""Pretraining then fine-tuning on several sources: manifest mixtures with exact resume, weights, and
``--init-from`` a finished run (same outputs at step 0, fresh optimiser state)."""

import json
import os
import warnings
from collections import Counter

import pytest
import torch
from accelerate import Accelerator

from generation import HandGenerationPipeline
from generation.pipelines.body import BodyOutpaintPipeline
from generation.training import DataCheckError
from generation.training.body import BodyTask, train_body
from generation.training.body_config import BodyTrainConfig
from generation.training.checkpoint import list_checkpoints
from generation.training.errors import RunFolderError
from generation.training.hand import HandTask, HandTrainConfig, train_hand
from generation.training.metrics import read_metrics
from manifests.datasets import HandCropDataset, ManifestDataLoader, MixtureDataset
from manifests.partition import loader_order
from manifests.settings import SettingError
from manifests.synthetic import make_synthetic_manifest

warnings.filterwarnings("ignore", message=".*worker processes in total.*")

FAST = dict(
    batch_size=2,
    log_every=1,
    checkpoint_every=0,
    validate_every=0,
    num_validation_poses=1,
    validation_steps=1,
)
BODY_FAST = dict(
    batch_size=2,
    log_every=1,
    checkpoint_every=0,
    validate_every=0,
    num_validation_images=1,
    validation_steps=1,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two small manifests of different sizes and contents (10 and 5 images, several row groups)."""
    root = tmp_path_factory.mktemp("sources")
    a = make_synthetic_manifest(str(root / "a"), num_images=10, shard_size=4, seed=1)
    b = make_synthetic_manifest(str(root / "b"), num_images=5, shard_size=3, seed=2)
    return str(a), str(b)


def _mixture(sources, weights=None, seed=0, **kw):
    return MixtureDataset([HandCropDataset(s, seed=seed, **kw) for s in sources], weights, seed=seed)


def _keys(samples):
    return [(int(s["source"]), s["hand_id"]) for s in samples]


def _batches(loader):
    return [(int(k), h) for b in loader for k, h in zip(b["source"], b["hand_id"])]


# ----- the mixture ---------------------------------------------------------------------------------


def test_without_weights_an_epoch_is_every_sample_of_every_source_once_interleaved(sources):
    mix = _mixture(sources)
    per_source = [sorted(s["hand_id"] for s in HandCropDataset(m, seed=0)) for m in sources]
    epoch = _keys(iter(mix))
    assert len(epoch) == mix.num_samples() == sum(len(p) for p in per_source)
    for k, ids in enumerate(per_source):
        assert sorted(h for s, h in epoch if s == k) == ids
    order = [s for s, _ in epoch]
    assert order != sorted(order)  # interleaved, not one source after the other
    assert _keys(iter(_mixture(sources))) == epoch  # a function of the seed
    assert _keys(iter(_mixture(sources, seed=1))) != epoch


def test_weights_set_the_share_of_each_source_and_a_small_source_starts_its_next_epoch(sources):
    mix = _mixture(sources, weights=(1.0, 4.0))
    sizes = [HandCropDataset(m).num_samples() for m in sources]
    draws = []
    for epoch in range(3):
        mix.set_epoch(epoch)
        draws += _keys(iter(mix))
    counts = Counter(s for s, _ in draws)
    assert len(draws) == 3 * sum(sizes)
    assert counts[1] / len(draws) == pytest.approx(0.8, abs=0.06)  # drawn with p = 4 / 5
    small = Counter(h for s, h in draws if s == 1)
    # Source 1 is read about 3 times per mixture epoch: every hand comes back, one own epoch at a time.
    assert set(small) == {s["hand_id"] for s in HandCropDataset(sources[1])}
    assert max(small.values()) - min(small.values()) <= 1


@pytest.mark.parametrize("weights", [None, (1.0, 3.0)])
@pytest.mark.parametrize("stop", [2, 7])
def test_a_resumed_loader_continues_the_mixture_exactly(sources, weights, stop):
    whole = ManifestDataLoader(_mixture(sources, weights), batch_size=2)
    whole.set_epoch(1)
    expected = _batches(whole)
    part = ManifestDataLoader(_mixture(sources, weights), batch_size=2)
    part.set_epoch(1)
    seen = []
    for i, batch in enumerate(part):
        seen += [(int(k), h) for k, h in zip(batch["source"], batch["hand_id"])]
        if i + 1 == stop:
            break
    state = json.loads(json.dumps(part.state_dict()))  # as a checkpoint stores it
    resumed = ManifestDataLoader(_mixture(sources, weights), batch_size=2)
    resumed.load_state_dict(state)
    assert seen + _batches(resumed) == expected
    resumed.set_epoch(2)  # and the next epoch is the uninterrupted run's next epoch
    again = ManifestDataLoader(_mixture(sources, weights), batch_size=2)
    again.set_epoch(2)
    assert _batches(resumed) == _batches(again)


def test_resume_with_workers_replays_the_loader_order(sources):
    """Three DataLoader workers, replayed in-process: each worker mixes its own share of both sources."""
    mix, workers, batch = _mixture(sources, (2.0, 1.0)), 3, 2
    streams = [_keys(mix._generate(w, workers, 0, None)) for w in range(workers)]
    full = loader_order(streams, batch)
    assert len(full) == mix.num_samples()
    for seen in (2, 6, 10):
        resume = {
            "epoch": 0,
            "samples_seen": seen,
            "batch_size": batch,
            "num_workers": workers,
            "drop_last": False,
        }
        rest = [_keys(mix._generate(w, workers, 0, resume)) for w in range(workers)]
        assert loader_order(rest, batch) == full[seen:]


def test_a_position_saved_for_other_sources_or_weights_is_refused(sources):
    loader = ManifestDataLoader(_mixture(sources, (1.0, 2.0)), batch_size=2)
    next(iter(loader))
    state = loader.state_dict()
    with pytest.raises(ValueError, match="weights"):
        ManifestDataLoader(_mixture(sources, (1.0, 3.0)), batch_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="sources"):
        ManifestDataLoader(_mixture(sources[::-1], (1.0, 2.0)), batch_size=2).load_state_dict(state)


def test_bad_mixture_weights_are_refused(sources):
    parts = [HandCropDataset(s) for s in sources]
    with pytest.raises(ValueError, match="2 weights for 2 datasets|one per dataset"):
        MixtureDataset(parts, (1.0,))
    with pytest.raises(ValueError, match="finite and > 0"):
        MixtureDataset(parts, (1.0, float("nan")))


# ----- settings ------------------------------------------------------------------------------------


def test_one_manifest_as_a_string_still_works_and_means_a_one_tuple(tmp_path):
    assert HandTrainConfig(manifest="m").manifest == ("m",)
    assert BodyTrainConfig(manifest=tmp_path).manifest == (str(tmp_path),)
    # A config.json written when `manifest` was a string: read back, and not a change on resume.
    from generation.training.run_folder import resume_changes

    run = tmp_path / "run"
    run.mkdir()
    old = HandTrainConfig(manifest="m").to_dict() | {"manifest": "m"}
    (run / "config.json").write_text(json.dumps({"task": "hand", "config": old}))
    assert HandTrainConfig.from_dict(old).manifest == ("m",)
    assert resume_changes(str(run), HandTrainConfig(manifest=("m",))) == {}
    assert resume_changes(str(run), HandTrainConfig(manifest=("m", "n")))["manifest"] == [["m"], ["m", "n"]]


def test_the_cli_takes_several_manifests_with_weights(tmp_path, capsys):
    import argparse

    from generation.cli import main
    from manifests.settings import add_arguments as add_config_arguments
    from manifests.settings import from_args as config_from_args

    args = ["--manifest", "a", "b", "--manifest-weights", "1", "3"]
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, HandTrainConfig)
    config = config_from_args(HandTrainConfig, parser.parse_args(args))
    assert config.manifest == ("a", "b") and config.manifest_weights == (1.0, 3.0)
    code = main(["train-hand", *args[:-1], "--out", str(tmp_path / "o")])  # one weight for two manifests
    err = capsys.readouterr().err
    assert code == 2 and "1 weight(s) for 2 --manifest" in err and "Traceback" not in err  # a usage error
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(manifest=("a", "b"), manifest_weights=(1.0,)), "1 weight.*2 --manifest"),
        (dict(manifest=("a",), manifest_weights=(0.0,)), "manifest_weights.*> 0"),
        (dict(manifest=("a",), out="r", init_from="r"), "--init-from 'r' is the run folder itself"),
    ],
)
def test_bad_source_settings_are_one_line_errors(changes, message):
    with pytest.raises(SettingError, match=message):
        HandTrainConfig(**changes).validate()


def test_body_init_from_and_init_controlnet_exclude_each_other():
    with pytest.raises(SettingError, match="exclude each other"):
        BodyTrainConfig(manifest="m", init_from="a", init_controlnet="b").validate()


# ----- training on several manifests ---------------------------------------------------------------


@pytest.mark.slow  # trains
def test_train_hand_on_two_manifests_records_them_and_resumes_exactly(sources, tmp_path):
    kw = dict(FAST, manifest=sources, manifest_weights=(1.0, 2.0), steps=4, seed=5)
    whole = train_hand(HandTrainConfig(out=str(tmp_path / "whole"), **kw))
    assert whole.finished
    record = json.load(open(tmp_path / "whole" / "config.json"))
    assert record["config"]["manifest"] == list(sources)
    assert [s["hands_selected"] for s in record["data"]["sources"]] == [
        HandCropDataset(m).num_samples() for m in sources
    ]
    assert record["data"]["manifest_weights"] == [1.0, 2.0]
    train_hand(HandTrainConfig(out=str(tmp_path / "parts"), interrupt_after=2, **kw))
    train_hand(HandTrainConfig(out=str(tmp_path / "parts"), resume="latest", **kw))
    a = [r["loss"] for r in read_metrics(tmp_path / "whole") if "loss" in r]
    b = [r["loss"] for r in read_metrics(tmp_path / "parts") if "loss" in r]
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


# ----- --init-from ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hand_run(sources, tmp_path_factory):
    """A finished train-hand run of 3 steps on the first source (EMA on, so its saved model is the EMA)."""
    run = str(tmp_path_factory.mktemp("pre") / "hand")
    train_hand(HandTrainConfig(out=run, manifest=sources[0], steps=3, seed=7, ema_decay=0.5, **FAST))
    return run


def _hand_outputs(model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    heat = torch.rand(2, 21, 8, 8, generator=g)
    text = torch.randn(2, 77, model.unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        out = model(x, torch.tensor([10, 500]), text, heat)
    return out.sample, out.mask_logits


def test_init_from_gives_the_source_runs_outputs_at_step_0(sources, hand_run, tmp_path):
    config = HandTrainConfig(
        out=str(tmp_path / "fine"), manifest=sources[1], init_from=hand_run, seed=1, **FAST
    )
    task = HandTask(config.resolve().validate())
    task.check_data()
    task.build(Accelerator(cpu=True))
    saved = HandGenerationPipeline.from_pretrained(hand_run)
    for ours, theirs in zip(_hand_outputs(task.trainable()), _hand_outputs(saved.unet)):
        assert torch.equal(ours, theirs)
    # A model built from the preset with this seed is a different one: the comparison can fail.
    fresh = HandTask(HandTrainConfig(out=str(tmp_path / "x"), manifest=sources[1], seed=1, **FAST))
    fresh.check_data()
    fresh.build(Accelerator(cpu=True))
    assert not torch.equal(_hand_outputs(fresh.trainable())[0], _hand_outputs(saved.unet)[0])
    # The frozen parts are the run's too (its UNet learned with that VAE).
    for a, b in zip(task.vae.state_dict().values(), saved.vae.state_dict().values()):
        assert torch.equal(a, b)
    assert task.describe()["init_from"] == os.path.abspath(hand_run)


def test_init_from_takes_the_runs_preset_and_resolution_unless_given(sources, hand_run, tmp_path):
    # --preset sd would need --pretrained and train at 512 px with lr 1e-5: the run's model is a tiny one.
    config = HandTrainConfig(out=str(tmp_path / "o"), manifest=sources[1], init_from=hand_run, preset="sd")
    config.resolve().validate()
    assert (config.preset, config.resolution, config.learning_rate) == ("tiny", 64, 1e-3)
    given = HandTrainConfig(out=str(tmp_path / "o"), manifest=sources[1], init_from=hand_run, resolution=32)
    assert given.resolve().resolution == 32
    with pytest.raises(SettingError, match="--pretrained"):
        HandTrainConfig(manifest=sources[1], preset="sd").resolve().validate()


def test_init_from_starts_a_new_optimiser_and_schedule(sources, hand_run, tmp_path):
    out = str(tmp_path / "fine")
    result = train_hand(
        HandTrainConfig(
            out=out, manifest=sources[1], init_from=hand_run, steps=1, seed=1, lr_schedule="linear", **FAST
        )
    )
    assert result.finished and result.step == 1
    source_ckpt = list_checkpoints(hand_run)[-1]
    assert source_ckpt[0] == 3
    ((step, path),) = list_checkpoints(out)
    assert step == 1
    optimizer = torch.load(os.path.join(path, "optimizer.bin"), weights_only=True)
    source_optimizer = torch.load(os.path.join(source_ckpt[1], "optimizer.bin"), weights_only=True)
    steps = {float(s["step"]) for s in optimizer["state"].values()}
    assert steps == {1.0}  # one AdamW step of its own, not the source's 3 + 1
    assert {float(s["step"]) for s in source_optimizer["state"].values()} == {3.0}
    scheduler = torch.load(os.path.join(path, "scheduler.bin"), weights_only=True)
    assert scheduler["last_epoch"] == 1
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1]


def test_init_from_refuses_what_is_not_a_finished_run_of_the_task(sources, hand_run, tmp_path):
    unfinished = str(tmp_path / "unfinished")
    train_hand(HandTrainConfig(out=unfinished, manifest=sources[0], steps=2, interrupt_after=1, **FAST))
    for source, message in (
        (str(tmp_path / "none"), "not a folder"),
        (unfinished, "without its final model"),
    ):
        task = HandTask(
            HandTrainConfig(out=str(tmp_path / "o"), manifest=sources[1], init_from=source, **FAST)
        )
        with pytest.raises(RunFolderError, match=message):
            task.check_data()
    task = BodyTask(BodyTrainConfig(out=str(tmp_path / "b"), manifest=sources[1], init_from=hand_run))
    with pytest.raises(RunFolderError, match="is a train-hand run; it must be a finished train-body run"):
        task.check_data()


def test_train_hand_cli_init_from_a_missing_run_is_one_line(sources, tmp_path, capsys):
    from generation.cli import main

    code = main(
        [
            "train-hand",
            "--manifest",
            sources[1],
            "--out",
            str(tmp_path / "o"),
            "--init-from",
            str(tmp_path / "missing"),
            "--steps",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code != 0 and "--init-from" in err and "not a folder" in err and "Traceback" not in err


@pytest.mark.slow  # trains
def test_body_init_from_gives_the_source_controlnet_and_checks_the_condition(sources, tmp_path):
    run = str(tmp_path / "body")
    train_body(BodyTrainConfig(out=run, manifest=sources[0], steps=1, seed=3, **BODY_FAST))
    config = BodyTrainConfig(out=str(tmp_path / "fine"), manifest=sources, init_from=run, seed=4, **BODY_FAST)
    task = BodyTask(config.resolve().validate())
    task.check_data()
    task.build(Accelerator(cpu=True))
    saved = BodyOutpaintPipeline.from_pretrained(run)
    for a, b in zip(task.trainable().state_dict().values(), saved.controlnet.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(task.unet.state_dict().values(), saved.unet.state_dict().values()):
        assert torch.equal(a, b)
    assert [s["manifest"] for s in task.describe()["sources"]] == list(sources)
    # The loop runs the mixture (both sources drawn) from those weights.
    result = train_body(BodyTrainConfig(**{**config.to_dict(), "steps": 2, "manifest_weights": (1.0, 1.0)}))
    assert result.finished and json.load(open(tmp_path / "fine" / "config.json"))["data"]["init_from"] == run
    other = BodyTask(
        BodyTrainConfig(
            out=str(tmp_path / "o"), manifest=sources[1], init_from=run, condition_channels=("pose", "hands")
        )
    )
    other.check_data()
    with pytest.raises(DataCheckError, match="channels"):
        other.build(Accelerator(cpu=True))


@pytest.mark.slow  # trains
def test_manifests_whose_crops_have_other_margins_are_refused(sources, tmp_path):
    from manifests.reader import open_manifest
    from manifests.writer import ManifestWriter

    src = open_manifest(sources[1])
    made = []
    for margin in (0.25, 0.5):
        writer = ManifestWriter(str(tmp_path / f"m{margin}"))
        writer.write_shard(0, {t: src.read(t).to_pylist() for t in ("images", "hands")})
        writer.finalize({**src.config, "crop_margin": margin})
        made.append(str(tmp_path / f"m{margin}"))
    HandTask(HandTrainConfig(manifest=(sources[0], made[0]), **FAST)).check_data()  # one margin recorded
    with pytest.raises(DataCheckError, match="different margins.*--crop-margin"):
        HandTask(HandTrainConfig(manifest=made, **FAST)).check_data()
