"""Stage-2 training: samples and their condition, the border-weighted loss, data checks, overfitting,
exact resume, and the train-body / sample-body commands end to end (tiny models, CPU)."""

import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from manifest_edits import rewrite

from generation.cli import main as gen_main
from generation.models.body import BASE_KINDS, CONDITION_EMBEDDING_INITS
from generation.models.loading import ModelFolderError
from generation.pipelines.body import BodyOutpaintPipeline
from generation.pipelines.body_inputs import manifest_inputs
from generation.pipelines.condition import CONDITION_GROUPS
from generation.training import latent_cache
from generation.training.body import BodyTask, hand_border_weight, train_body, weighted_mse
from generation.training.body_config import (
    BASE_KIND_NAMES,
    CONDITION_EMBEDDING_INIT_NAMES,
    CONDITION_GROUP_NAMES,
    BodyTrainConfig,
)
from generation.training.errors import DataCheckError
from generation.training.latent_cache import LatentCache, encode_moments
from generation.training.metrics import read_metrics
from manifests.datasets import BodyDataset
from manifests.synthetic import make_synthetic_manifest

pytestmark = pytest.mark.slow  # every test here trains the stage-2 outpainter

SKIN = np.array([224, 172, 138], np.float32)  # the synthetic manifest paints hands in this colour


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("body") / "m"
    make_synthetic_manifest(str(root), num_images=8, shard_size=4)
    return root


def _config(manifest, out, **kw):
    base = dict(
        manifest=str(manifest),
        out=str(out),
        steps=4,
        batch_size=2,
        learning_rate=1e-3,
        log_every=1,
        checkpoint_every=2,
        validate_every=0,
        validation_steps=1,
        num_validation_images=1,
        seed=0,
    )
    return BodyTrainConfig(**{**base, **kw})


def test_config_mirrors_the_model_registries():
    assert CONDITION_GROUP_NAMES == tuple(CONDITION_GROUPS)
    assert BASE_KIND_NAMES == tuple(BASE_KINDS)
    assert CONDITION_EMBEDDING_INIT_NAMES == tuple(CONDITION_EMBEDDING_INITS)


def test_border_weight_marks_a_band_around_the_hand():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1.0  # latent cells 2..5 of 8
    w = hand_border_weight(mask, (8, 8), width=1, weight=3.0)[0, 0]
    band = torch.zeros(8, 8, dtype=torch.bool)
    band[1:7, 1:7] = True
    band[3:5, 3:5] = False  # deep inside the hand
    assert torch.all(w[band] == 4.0) and torch.all(w[~band] == 1.0)
    # width 0: only the latent cells the border cuts through.
    half = torch.zeros(1, 1, 64, 64)
    half[..., :, :20] = 1.0  # cell 2 is half covered
    w0 = hand_border_weight(half, (8, 8), width=0, weight=1.0)[0, 0]
    assert torch.all(w0[:, 2] == 2.0) and torch.all(w0[:, [0, 1, 3, 7]] == 1.0)


def test_weighted_mse_is_mse_for_uniform_weight_and_favours_the_band():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.allclose(
        weighted_mse(pred, target, torch.ones(2, 1, 8, 8)), torch.nn.functional.mse_loss(pred, target)
    )
    weight = torch.ones(1, 1, 8, 8)
    weight[..., 0, :] = 5.0
    err_band, err_inside = torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8)
    err_band[..., 0, :], err_inside[..., 4, :] = 1.0, 1.0
    zero = torch.zeros(1, 4, 8, 8)
    assert weighted_mse(err_band, zero, weight) > 2 * weighted_mse(err_inside, zero, weight)


def test_samples_follow_one_transform_for_image_mask_and_keypoints(manifest):
    torch.manual_seed(0)
    task = BodyTask(_config(manifest, "unused", resolution=128))
    task.check_data()
    data = task._dataset(rank=0, world_size=1, shuffle=False)
    samples = [s for s, _ in zip(data, range(4))]
    assert len(samples) == 4
    for s in samples:
        cond, pixels = s["condition"], s["pixels"]
        assert cond.shape == (7, 128, 128) and pixels.shape == (3, 128, 128)
        mask = s["hand_mask"][0] > 0.5
        assert torch.equal(cond[6] > 0.5, mask)
        image = (pixels + 1) / 2
        assert torch.allclose(cond[3:6][:, mask], image[:, mask], atol=1 / 255)
        assert torch.count_nonzero(cond[3:6][:, ~mask]) == 0
        # The image under the (eroded) resized mask is the painted hand: the mask moved with the image.
        inner = -torch.nn.functional.max_pool2d(-mask[None, None].float(), 3, 1, 1)[0, 0] > 0.5
        colour = (image[:, inner].mean(dim=1) * 255).numpy()
        assert np.abs(colour - SKIN).max() < 25, colour
    # The keypoints moved with them: hand keypoints sit on the mask, body joints on drawn skeleton pixels.
    raw = next(iter(BodyDataset(str(manifest), resolution=128, crop="hands", status="ok", shuffle=False)))
    mask = raw["hands_mask"][0].numpy() > 0.5
    near = np.pad(mask, 1)
    kps = raw["hand_keypoints"][raw["hand_valid"]].reshape(-1, 3).numpy()
    inside = [
        near[int(y) : int(y) + 3, int(x) : int(x) + 3].any()
        for x, y, _ in kps
        if 0 <= x < 128 and 0 <= y < 128
    ]
    assert len(inside) > 10 and np.mean(inside) > 0.95
    first = samples[0]
    pose = first["condition"][0:3].sum(dim=0).numpy()
    op = raw["openpose"].numpy()
    assert raw["image_id"] == first["image_id"]
    joints = [(round(x), round(y)) for x, y, s in op if s > 0 and 0 <= round(x) < 128 and 0 <= round(y) < 128]
    assert joints and all(pose[y, x] > 0 for x, y in joints)


def _edit_bodies(src, dst, nulls=(), invisible=()):
    def edit(idx, images, hands):
        for row in images:
            if row["image_id"] in nulls:
                row["body_keypoints"] = None
            if row["image_id"] in invisible:
                row["body_keypoints"] = [[x, y, 0.0] for x, y, _ in row["body_keypoints"]]
        return images, hands

    return rewrite(src, dst, edit)


def test_images_without_body_pose_are_skipped_and_counted_or_refused(manifest, tmp_path):
    edited = _edit_bodies(
        manifest, tmp_path / "m", nulls={"synthetic_00000", "synthetic_00002"}, invisible={"synthetic_00003"}
    )
    task = BodyTask(_config(edited, tmp_path / "run"))
    task.check_data()
    # 8 images, one without hands (status no_hands): 7 candidates, 3 without a usable pose.
    assert task.describe() == {"images": 7, "usable_images": 4, "skipped_no_body_pose": 3, "resolution": 64}
    ids = [s["image_id"] for s in task._dataset(rank=0, world_size=1, shuffle=False)]
    assert sorted(ids) == ["synthetic_00001", "synthetic_00005", "synthetic_00006", "synthetic_00007"]

    refuse = BodyTask(_config(edited, tmp_path / "run2", missing_body="refuse"))
    with pytest.raises(DataCheckError, match=r"3 of 7 images have no usable body pose .*synthetic_00000"):
        refuse.check_data()

    all_null = _edit_bodies(manifest, tmp_path / "none", nulls={f"synthetic_{i:05d}" for i in range(8)})
    with pytest.raises(DataCheckError, match="none of 7 images has a usable body pose"):
        BodyTask(_config(all_null, tmp_path / "run3")).check_data()


def test_bad_settings_and_missing_base_model_are_clear_errors(manifest, tmp_path):
    with pytest.raises(ValueError, match="--preset sd needs --pretrained"):
        _config(manifest, tmp_path / "r", preset="sd").validate()
    with pytest.raises(ValueError, match="unknown condition channel group"):
        _config(manifest, tmp_path / "r", condition_channels=("pose", "depth")).validate()
    with pytest.raises(ValueError, match="inpainting needs the 'hands' and 'mask'"):
        _config(manifest, tmp_path / "r", base_kind="inpainting", condition_channels=("pose",)).validate()
    with pytest.raises(ValueError, match="multiple of 16"):
        _config(manifest, tmp_path / "r", resolution=72).validate()
    with pytest.raises(
        ValueError, match="--zero-terminal-snr needs --prediction-type v_prediction or sample"
    ):
        _config(manifest, tmp_path / "r", zero_terminal_snr=True, train_base_unet=True).validate()
    with pytest.raises(ValueError, match="a frozen base keeps the schedule it was trained on"):
        _config(manifest, tmp_path / "r", prediction_type="v_prediction", zero_terminal_snr=True).validate()
    with pytest.raises(DataCheckError, match="cannot serve body training"):
        BodyTask(_config(tmp_path / "no-manifest", tmp_path / "r")).check_data()
    task = BodyTask(_config(manifest, tmp_path / "r", preset="sd", pretrained=str(tmp_path / "no-sd")))
    with pytest.raises(ModelFolderError, match="not found"):
        task.build(Accelerator(cpu=True))
    with pytest.raises(ModelFolderError, match="body model folder not found"):
        BodyOutpaintPipeline.from_pretrained(tmp_path / "no-run")


def test_zero_terminal_snr_trains_the_base_and_is_saved_with_the_pipeline(manifest, tmp_path):
    run = tmp_path / "zsnr"
    cfg = _config(
        manifest,
        run,
        steps=2,
        checkpoint_every=0,
        prediction_type="v_prediction",
        zero_terminal_snr=True,
        train_base_unet=True,
    )
    assert train_body(cfg.validate()).finished
    assert all(np.isfinite(r["loss"]) for r in read_metrics(str(run)) if "loss" in r)
    scheduler = BodyOutpaintPipeline.from_pretrained(run).scheduler
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.rescale_betas_zero_snr and scheduler.config.timestep_spacing == "trailing"
    assert float(scheduler.alphas_cumprod[-1]) == 0.0


def test_tiny_model_overfits_a_fixed_batch(manifest, tmp_path):
    """Same batch, same noise and timesteps every step: only the ControlNet learns, the UNet is frozen.
    Measured: the loss falls to 0.35 of its start after 40 AdamW steps at lr 1e-3."""
    torch.manual_seed(0)
    task = BodyTask(_config(manifest, tmp_path / "run", text_dropout=0.0, condition_dropout=0.0))
    task.check_data()
    task.build(Accelerator(cpu=True))
    batch = task.collate([s for s, _ in zip(task._dataset(rank=0, world_size=1, shuffle=False), range(2))])
    model = task.trainable()
    assert not any(p.requires_grad for p in task.unet.parameters())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(40):
        loss = task.loss(model, batch, torch.Generator().manual_seed(1))["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    print("overfit loss ratio", losses[-1] / losses[0])
    assert losses[-1] < 0.5 * losses[0], losses[::5]


@pytest.mark.parametrize("kind", sorted(BASE_KINDS))
def test_loss_terms_gradients_and_condition_dropout(manifest, tmp_path, kind):
    torch.manual_seed(0)
    task = BodyTask(_config(manifest, tmp_path / "run", base_kind=kind, condition_dropout=0.99))
    task.check_data()
    task.build(Accelerator(cpu=True))
    assert task.unet.config.in_channels == BASE_KINDS[kind].in_channels(4)
    batch = task.collate([s for s, _ in zip(task._dataset(rank=0, world_size=1, shuffle=False), range(2))])
    model = task.trainable()
    terms = task.loss(model, batch, torch.Generator().manual_seed(0))
    assert set(terms) == {"loss", "mse", "condition_kept"}
    assert torch.isfinite(terms["loss"]) and terms["condition_kept"] == 0.0
    terms["loss"].backward()
    # Zero convolutions get gradients first; the frozen UNet gets none.
    assert model.controlnet_down_blocks[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in task.unet.parameters())


def test_latent_cache_matches_the_vae_at_the_framing_and_is_reused(manifest, tmp_path):
    """The cache holds each usable image's posterior at its training framing: the same losses as
    encoding every step (float16 storage), reused by a rerun, rebuilt when the framing changes."""
    plain = train_body(_config(manifest, tmp_path / "plain", checkpoint_every=0, crop="hands"))
    cached = train_body(
        _config(manifest, tmp_path / "cached", checkpoint_every=0, crop="hands", cache_latents=True)
    )
    assert plain.finished and cached.finished
    facts = json.load(open(tmp_path / "cached" / "config.json"))["data"]
    cache_dir = tmp_path / "cached" / "latent_cache"
    assert facts["latent_cache"] == str(cache_dir)
    cache = LatentCache(str(cache_dir))
    assert len(cache) == facts["usable_images"] > 1, facts
    a = [r for r in read_metrics(str(tmp_path / "plain")) if "loss" in r]
    b = [r for r in read_metrics(str(tmp_path / "cached")) if "loss" in r]
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=2e-2)

    # The stored posterior is the VAE's on the sample the trainer draws, up to float16 rounding.
    task = BodyTask(_config(manifest, tmp_path / "probe", crop="hands"))
    task.check_data()
    task.build(Accelerator(cpu=True))
    sample = next(iter(task._dataset(rank=0, world_size=1, shuffle=False)))
    with torch.no_grad():
        expected = encode_moments(task.vae, sample["pixels"][None])
    torch.testing.assert_close(cache.get([sample["image_id"]]), expected, atol=2e-2, rtol=1e-2)

    stamp = (cache_dir / "index.json").stat().st_mtime_ns
    rerun = _config(manifest, tmp_path / "cached", steps=6, crop="hands", cache_latents=True, resume="latest")
    assert train_body(rerun).finished
    assert (cache_dir / "index.json").stat().st_mtime_ns == stamp
    # Another framing gives other latents: the cache is rebuilt, never used for it.
    other = _config(
        manifest, tmp_path / "center", crop="center", cache_latents=True, latent_cache_dir=str(cache_dir)
    )
    assert train_body(other).finished
    assert (cache_dir / "index.json").stat().st_mtime_ns != stamp


def test_mirrored_training_caches_both_orientations_and_validates_unmirrored(manifest, tmp_path, monkeypatch):
    bars = []  # (total the bar was given, batches it counted): the cache's progress bar knows its length

    def recording_bar(items, total=None, **kwargs):
        bars.append([total, 0])
        for item in items:
            bars[-1][1] += 1
            yield item

    monkeypatch.setattr(latent_cache, "progress_bar", recording_bar)
    cfg = _config(manifest, tmp_path / "run", hflip=0.5, cache_latents=True, steps=6)
    assert train_body(cfg).finished
    assert len(bars) == 1 and bars[0][0] == bars[0][1] >= 2, bars
    record = json.load(open(tmp_path / "run" / "config.json"))
    assert record["config"]["hflip"] == 0.5
    cache = LatentCache(str(tmp_path / "run" / "latent_cache"))
    usable = record["data"]["usable_images"]
    ids = cache.index["ids"]
    assert len(ids) == 2 * usable and sum(i.endswith("#mirrored") for i in ids) == usable

    task = BodyTask(cfg)
    task.check_data()
    task.build(Accelerator(cpu=True))
    mirrored = next(iter(task._source_dataset(0, 0, 1, shuffle=False, hflip=1.0)))
    with torch.no_grad():
        expected = encode_moments(task.vae, mirrored["pixels"][None])
    torch.testing.assert_close(
        cache.get([mirrored["image_id"] + "#mirrored"]), expected, atol=2e-2, rtol=1e-2
    )
    # Each batch looks up the orientation it drew.
    data = task._dataset(rank=0, world_size=1)
    data.set_epoch(1)
    batch = task.collate([s for s, _ in zip(data, range(8))])
    assert 0 < int(batch["flipped"].sum()) < 8
    task.caches = [cache]
    moments = task.prepare_batch(batch, torch.device("cpu"))["moments"]
    for k, (image_id, flipped) in enumerate(zip(batch["image_id"], batch["flipped"].tolist())):
        key = image_id + ("#mirrored" if flipped else "")
        assert torch.equal(moments[k], cache.get([key])[0])
    assert not any(s["flipped"] for s in task.validation_samples())


@pytest.fixture
def bf16_accelerator():
    # accelerate keeps one process-wide state: reset it so later tests can use full precision again.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True, mixed_precision="bf16")
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_step_validation_and_full_precision_save(manifest, tmp_path, bf16_accelerator):
    torch.manual_seed(0)
    task = BodyTask(_config(manifest, tmp_path / "run", precision="bf16"))
    task.check_data()
    task.build(bf16_accelerator)
    assert task.unet.dtype == task.vae.dtype == torch.bfloat16
    model = task.trainable()
    assert model.dtype == torch.float32
    batch = task.collate([s for s, _ in zip(task._dataset(rank=0, world_size=1, shuffle=False), range(2))])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = task.loss(model, batch, torch.Generator().manual_seed(0))
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and model.controlnet_mid_block.weight.grad.abs().sum() > 0
    task.validate(model, 1, str(tmp_path / "grid.png"))
    assert (tmp_path / "grid.png").is_file()
    task.save_final(model, str(tmp_path / "final"))
    pipe = BodyOutpaintPipeline.from_pretrained(tmp_path / "final")
    assert pipe.unet.dtype == pipe.controlnet.dtype == torch.float32
    fresh, _ = task._build()  # the saved base is the pristine float32 one, not a bf16 round trip
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.parameters(), fresh.unet.parameters()))


def test_resume_is_exact_and_the_run_folder_is_a_pipeline(manifest, tmp_path):
    torch.manual_seed(0)
    straight = tmp_path / "straight"
    code = gen_main(
        [
            "train-body",
            "--preset",
            "tiny",
            "--manifest",
            str(manifest),
            "--out",
            str(straight),
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--learning-rate",
            "1e-3",
            "--log-every",
            "1",
            "--checkpoint-every",
            "2",
            "--validation-steps",
            "1",
            "--num-validation-images",
            "1",
            "--log-level",
            "WARNING",
        ]
    )
    assert code == 0
    interrupted = tmp_path / "interrupted"
    first = train_body(_config(manifest, interrupted, interrupt_after=2))
    assert not first.finished and first.step == 2
    second = train_body(_config(manifest, interrupted, resume="latest"))
    assert second.finished and second.step == 4

    a, b = read_metrics(str(straight)), read_metrics(str(interrupted))
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-6)
    config = json.loads((straight / "config.json").read_text())
    assert config["task"] == "body" and config["data"]["usable_images"] == 7
    assert (straight / "validation" / "step-000004.png").is_file()

    pipe_a = BodyOutpaintPipeline.from_pretrained(straight)
    pipe_b = BodyOutpaintPipeline.from_pretrained(interrupted)
    inputs = manifest_inputs(str(manifest), "synthetic_00001", resolution=64)
    outs = [
        p(
            **inputs, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
        ).images
        for p in (pipe_a, pipe_b)
    ]
    assert outs[0].shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_sample_body_command_writes_images(manifest, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_body(_config(manifest, run, steps=1, checkpoint_every=0)).finished
    out = tmp_path / "samples"
    code = gen_main(
        [
            "sample-body",
            "--model",
            str(run),
            "--manifest",
            str(manifest),
            "--image-id",
            "synthetic_00001",
            "synthetic_00002",
            "--out",
            str(out),
            "--steps",
            "2",
            "--log-level",
            "WARNING",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "synthetic_00001.png",
        "synthetic_00001_condition.png",
        "synthetic_00002.png",
        "synthetic_00002_condition.png",
    ]
    code = gen_main(
        [
            "sample-body",
            "--model",
            str(run),
            "--manifest",
            str(manifest),
            "--image-id",
            "nope",
            "--out",
            str(out),
            "--log-level",
            "WARNING",
        ]
    )
    assert code == 1 and "no image with image_id 'nope'" in capsys.readouterr().err


def test_train_body_starts_from_a_pretrained_controlnet(manifest, tmp_path, capsys):
    from diffusers import ControlNetModel

    from generation.models.body import controlnet_from_unet
    from generation.models.loading import build_components

    comps = build_components("tiny", resolution=64)
    source = controlnet_from_unet(comps.unet, conditioning_channels=3, scale_factor=8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights no fresh initialisation would have
        for p in source.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    source.save_pretrained(str(tmp_path / "openpose"))
    out = tmp_path / "run"
    args = [
        "train-body",
        "--preset",
        "tiny",
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "0",
        "--validate-every",
        "0",
        "--num-validation-images",
        "0",
        "--init-controlnet",
        str(tmp_path / "openpose"),
    ]
    assert gen_main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["init_controlnet"] == str(tmp_path / "openpose")
    trained = ControlNetModel.from_pretrained(str(out / "controlnet"))
    assert trained.config.conditioning_channels == 7
    # The encoder is the pretrained ControlNet's, not a fresh copy of the UNet's (one step moves it little).
    assert torch.allclose(
        trained.controlnet_cond_embedding.blocks[0].weight,
        source.controlnet_cond_embedding.blocks[0].weight,
        atol=1e-2,
    )
    bad = [*args[:-1], str(tmp_path)]
    bad[bad.index("--out") + 1] = str(tmp_path / "run2")
    assert gen_main(bad) == 1
    assert "is not a diffusers ControlNet folder" in capsys.readouterr().err
