"""Stage-1 training through the shared loop: learning, exact resume, guards, data checks, latent cache."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from generation import HandGenerationPipeline
from generation.training import DataCheckError, NonFiniteLossError, TrainingOOMError, train
from generation.training.checkpoint import list_checkpoints
from generation.training.hand import HandTask, HandTrainConfig, train_hand
from generation.training.latent_cache import LatentCache, encode_moments
from generation.training.losses import dice_loss, diffusion_target, mask_loss
from generation.training.metrics import read_metrics
from manifests.synthetic import make_synthetic_manifest
from manifests.writer import ManifestWriter

pytestmark = pytest.mark.slow  # every test here trains the stage-1 hand generator

# Fast settings for every run here: no periodic checkpoints/validation, 1-step validation sampling.
FAST = dict(
    batch_size=4,
    log_every=1,
    checkpoint_every=0,
    validate_every=0,
    num_validation_poses=2,
    validation_steps=1,
)


@pytest.fixture(scope="module")
def four_hands(tmp_path_factory):
    """3 images, 4 hands: one batch of 4 is the whole epoch, i.e. a fixed batch."""
    return make_synthetic_manifest(str(tmp_path_factory.mktemp("four") / "m"), num_images=3)


def _losses(run):
    return [r for r in read_metrics(run) if "loss" in r]


@pytest.mark.slow
def test_a_fixed_batch_drives_noise_and_mask_loss_down(four_hands, tmp_path):
    run = str(tmp_path / "run")
    result = train_hand(HandTrainConfig(manifest=four_hands, out=run, steps=100, seed=0, **FAST))
    assert result.finished and result.step == 100
    records = _losses(run)
    assert [r["step"] for r in records] == list(range(1, 101))
    assert {"step", "loss", "noise_loss", "mask_loss", "lr", "samples_seen"} <= set(records[0])
    for r in records:
        assert r["loss"] == pytest.approx(r["noise_loss"] + 1.0 * r["mask_loss"], rel=1e-5)
    first = {k: np.mean([r[k] for r in records[:10]]) for k in ("noise_loss", "mask_loss")}
    last = {k: np.mean([r[k] for r in records[-10:]]) for k in ("noise_loss", "mask_loss")}
    # Measured over seeds 0-2 (lr 1e-3, batch 4): noise 0.22-0.32, mask 0.44 of the first ten steps.
    assert last["noise_loss"] < 0.5 * first["noise_loss"]
    assert last["mask_loss"] < 0.6 * first["mask_loss"]
    assert first["mask_loss"] == pytest.approx(np.log(2), abs=0.01)  # the mask head starts at p = 0.5

    config = json.load(open(os.path.join(run, "config.json")))
    assert config["task"] == "hand" and config["config"]["learning_rate"] == 1e-3  # tiny preset default
    assert config["data"]["hands_selected"] == 4 and config["data"]["resolution"] == 64
    assert os.path.isfile(os.path.join(run, "validation", "step-000100.png"))
    pipe = HandGenerationPipeline.from_pretrained(run)
    assert pipe.unet.config.heatmap_sigma == pytest.approx(1.0)
    assert pipe.scheduler.__class__.__name__ == "DDIMScheduler"


def test_resume_gives_the_same_curve_as_an_uninterrupted_run(synthetic_manifest, tmp_path):
    kw = dict(
        FAST,
        manifest=str(synthetic_manifest),
        steps=6,
        batch_size=2,
        gradient_accumulation_steps=2,
        lr_schedule="cosine",
        lr_warmup_steps=2,
        seed=3,
    )
    train_hand(HandTrainConfig(out=str(tmp_path / "whole"), **kw))
    part = train_hand(HandTrainConfig(out=str(tmp_path / "parts"), interrupt_after=4, **kw))
    assert not part.finished and part.step == 4
    assert [s for s, _ in list_checkpoints(str(tmp_path / "parts"))] == [4]
    assert not (tmp_path / "parts" / "model_index.json").exists()  # no final model before the end
    rest = train_hand(HandTrainConfig(out=str(tmp_path / "parts"), resume="latest", **kw))
    assert rest.finished and rest.step == 6

    a, b = _losses(tmp_path / "whole"), _losses(tmp_path / "parts")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        for key in ("loss", "noise_loss", "mask_loss", "lr", "samples_seen", "epoch"):
            assert ra[key] == rb[key], (ra["step"], key)
    # Weights after EMA are identical too.
    wa = HandGenerationPipeline.from_pretrained(str(tmp_path / "whole")).unet.state_dict()
    wb = HandGenerationPipeline.from_pretrained(str(tmp_path / "parts")).unet.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


class _NaNAt(HandTask):
    def __init__(self, config, bad_call):
        super().__init__(config)
        self.calls, self.bad_call = 0, bad_call

    def loss(self, model, batch, generator):
        terms = super().loss(model, batch, generator)
        self.calls += 1
        if self.calls == self.bad_call:
            terms["noise_loss"] = terms["noise_loss"] * float("nan")
            terms["loss"] = terms["noise_loss"] + terms["mask_loss"]
        return terms


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_manifest, tmp_path):
    run = str(tmp_path / "run")
    config = HandTrainConfig(
        manifest=str(synthetic_manifest), out=run, steps=10, **{**FAST, "checkpoint_every": 2}
    )
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite loss at step 3 \(.*noise_loss=nan.*checkpoint-2"
    ):
        train(_NaNAt(config, bad_call=3), config)
    assert [s for s, _ in list_checkpoints(run)] == [2]
    assert [r["step"] for r in _losses(run)] == [1, 2]
    assert not os.path.exists(os.path.join(run, "model_index.json"))


class _OOM(HandTask):
    def loss(self, model, batch, generator):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_names_the_settings_to_lower(synthetic_manifest, tmp_path):
    config = HandTrainConfig(manifest=str(synthetic_manifest), out=str(tmp_path / "run"), steps=3, **FAST)
    with pytest.raises(TrainingOOMError) as info:
        train(_OOM(config), config)
    message = str(info.value)
    for hint in (
        "training step 1",
        "--batch-size (now 4",
        "--gradient-checkpointing",
        "--precision bf16",
        "--cache-latents",
    ):
        assert hint in message


def _rewrite_with_null_masks(src: str, dst: str, every: int) -> str:
    """Copy a manifest, nulling the mask of every `every`-th hand (1 = all of them)."""
    writer = ManifestWriter(dst, row_group_size=4)
    shards = sorted(p for p in os.listdir(os.path.join(src, "hands")) if p.endswith(".parquet"))
    k = 0
    for i, name in enumerate(shards):
        images = pq.read_table(os.path.join(src, "images", name))
        hands = pq.read_table(os.path.join(src, "hands", name)).to_pylist()
        for h in hands:
            if k % every == 0:
                h["mask"] = None
            k += 1
        writer.write_shard(i, {"images": images, "hands": hands})
    writer.finalize({"source": "test"})
    return dst


@pytest.fixture()
def no_models(monkeypatch):
    """Fail the test if any model gets built: data checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the data check")

    monkeypatch.setattr("generation.training.hand.build_components", refuse)


def test_data_problems_fail_before_any_model_is_loaded(synthetic_manifest, tmp_path, no_models):
    kw = dict(FAST, steps=2)
    with pytest.raises(
        DataCheckError, match=r"no hand passes the filter \{.*'label': \['nope'\].*\} \(\d+ hands"
    ):
        train_hand(
            HandTrainConfig(manifest=str(synthetic_manifest), out=str(tmp_path / "a"), labels=("nope",), **kw)
        )
    null = _rewrite_with_null_masks(str(synthetic_manifest), str(tmp_path / "null"), every=1)
    with pytest.raises(DataCheckError, match=r"\['mask'\] are null in every one of the \d+ rows"):
        train_hand(HandTrainConfig(manifest=null, out=str(tmp_path / "b"), **kw))
    with pytest.raises(ValueError, match="--manifest is required"):
        train_hand(HandTrainConfig(out=str(tmp_path / "c"), **kw))
    with pytest.raises(FileNotFoundError, match="no such manifest directory"):
        train_hand(HandTrainConfig(manifest=str(tmp_path / "nowhere"), out=str(tmp_path / "d"), **kw))


def test_rows_with_null_crops_are_counted_and_skipped(synthetic_manifest, tmp_path):
    partial = _rewrite_with_null_masks(str(synthetic_manifest), str(tmp_path / "partial"), every=3)
    task = HandTask(HandTrainConfig(manifest=partial, out=str(tmp_path / "run"), steps=1, **FAST))
    task.check_data()
    total = task.facts["hands_total"]
    assert task.facts["null_rows"] == {"mask": (total + 2) // 3}
    assert task.facts["hands_selected"] == total - (total + 2) // 3
    result = train(task, task.config)  # trains on the rest without tripping over a null mask
    assert result.finished


def test_latent_cache_matches_the_vae_and_is_reused(synthetic_manifest, tmp_path):
    kw = dict(FAST, manifest=str(synthetic_manifest), steps=2, seed=0)
    plain = train_hand(HandTrainConfig(out=str(tmp_path / "plain"), **kw))
    cached = train_hand(HandTrainConfig(out=str(tmp_path / "cached"), cache_latents=True, **kw))
    assert plain.finished and cached.finished
    cache_dir = tmp_path / "cached" / "latent_cache"
    cache = LatentCache(str(cache_dir))
    facts = json.load(open(tmp_path / "cached" / "config.json"))["data"]
    assert len(cache) == facts["hands_selected"] and facts["latent_cache"] == str(cache_dir)
    # Same draws from the generator: the cached posterior (float16) gives nearly the same losses.
    a, b = _losses(tmp_path / "plain"), _losses(tmp_path / "cached")
    for ra, rb in zip(a, b):
        assert rb["noise_loss"] == pytest.approx(ra["noise_loss"], rel=2e-2)
        assert rb["mask_loss"] == pytest.approx(ra["mask_loss"], rel=1e-4)

    # The stored posterior is the VAE's, up to float16 rounding.
    task = HandTask(HandTrainConfig(out=str(tmp_path / "probe"), **kw))
    task.check_data()
    task.build(type("Acc", (), {"device": torch.device("cpu"), "mixed_precision": "no"})())
    sample = next(iter(task._dataset(0, 1, shuffle=False)))
    with torch.no_grad():
        expected = encode_moments(task.vae, sample["pixel_values"][None])
    torch.testing.assert_close(cache.get([sample["hand_id"]]), expected, atol=2e-2, rtol=1e-2)

    # A second run with the same data and VAE reuses the cache instead of re-encoding.
    stamp = os.path.getmtime(cache_dir / "index.json")
    train_hand(
        HandTrainConfig(
            out=str(tmp_path / "cached"), cache_latents=True, **{**kw, "steps": 3}, resume="latest"
        )
    )
    assert os.path.getmtime(cache_dir / "index.json") == stamp


class _CachedWithPixels(HandTask):
    """The cached task as it was before the dataset could leave the crops out: it loads them anyway."""

    def _dataset(self, rank, world_size, shuffle=True, load_pixels=True):
        return super()._dataset(rank, world_size, shuffle, load_pixels=True)


def test_cached_training_reads_no_crops_and_keeps_the_loss_curve(synthetic_manifest, tmp_path, monkeypatch):
    torch.manual_seed(0)
    kw = dict(
        FAST,
        manifest=str(synthetic_manifest),
        steps=3,
        seed=1,
        cache_latents=True,
        latent_cache_dir=str(tmp_path / "latents"),
    )
    config = HandTrainConfig(out=str(tmp_path / "pixels"), **kw)
    assert train(_CachedWithPixels(config), config).finished  # builds the cache, then trains reading crops

    reads, real = [], pq.ParquetFile.read_row_group

    def spy(self, i, columns=None, **kwargs):
        reads.append(None if columns is None else list(columns))
        return real(self, i, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    assert train_hand(HandTrainConfig(out=str(tmp_path / "no_pixels"), **kw)).finished  # reuses the cache
    assert any(c and "mask" in c for c in reads)  # the training samples were read here ...
    assert all(c is not None and "crop" not in c for c in reads)  # ... without their crops
    a, b = _losses(tmp_path / "pixels"), _losses(tmp_path / "no_pixels")
    assert [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("loss", "noise_loss", "mask_loss", "samples_seen"):
            assert ra[key] == rb[key], (ra["step"], key)


def test_v_prediction_target_and_training(synthetic_manifest, tmp_path):
    run = str(tmp_path / "v")
    train_hand(
        HandTrainConfig(
            manifest=str(synthetic_manifest), out=run, steps=2, prediction_type="v_prediction", **FAST
        )
    )
    pipe = HandGenerationPipeline.from_pretrained(run)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    sched = pipe.scheduler
    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    torch.testing.assert_close(
        diffusion_target(sched, latents, noise, t), sched.get_velocity(latents, noise, t)
    )


def test_zero_terminal_snr_schedule_is_trained_and_saved(synthetic_manifest, tmp_path):
    from generation.models.loading import build_components

    # SD's schedule leaves 6.8% of the image in the last training step's input; sampling starts from
    # pure noise, so the starting noise's low frequencies are read as the image's brightness.
    sd_like = build_components("tiny").scheduler
    assert float(sd_like.alphas_cumprod[-1]) ** 0.5 == pytest.approx(0.068, abs=0.001)

    run = str(tmp_path / "zsnr")
    result = train_hand(
        HandTrainConfig(
            manifest=str(synthetic_manifest),
            out=run,
            steps=2,
            prediction_type="v_prediction",
            zero_terminal_snr=True,
            **FAST,
        )
    )
    assert result.finished
    assert all(np.isfinite(r["loss"]) for r in _losses(run))
    pipe = HandGenerationPipeline.from_pretrained(run)
    config = pipe.scheduler.config
    assert config.rescale_betas_zero_snr and config.timestep_spacing == "trailing"
    assert config.prediction_type == "v_prediction"
    assert float(pipe.scheduler.alphas_cumprod[-1]) == 0.0  # no signal left at t = T
    pipe.scheduler.set_timesteps(5)
    assert int(pipe.scheduler.timesteps[0]) == 999  # sampling starts where training saw pure noise
    image = pipe(
        "a hand", keypoints=np.full((1, 21, 3), 0.5), num_inference_steps=2, seed=0, output_type="np"
    )
    assert np.isfinite(image.images).all()


@pytest.mark.parametrize("prediction", [[], ["--prediction-type", "epsilon"]])
def test_zero_terminal_snr_refuses_epsilon_prediction(synthetic_manifest, tmp_path, capsys, prediction):
    from generation.cli import main

    run = tmp_path / "r"
    argv = ["train-hand", "--manifest", str(synthetic_manifest), "--out", str(run), "--steps", "1"]
    assert main(argv + ["--zero-terminal-snr", *prediction]) == 2  # settings that do not go together
    err = capsys.readouterr().err.strip()
    assert "--zero-terminal-snr needs --prediction-type v_prediction or sample" in err
    assert len(err.splitlines()) == 1 and not run.exists()


def test_mask_losses():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    perfect = (target * 2 - 1) * 20  # confident, correct logits
    assert dice_loss(perfect, target) < 1e-3
    assert mask_loss(perfect, target, "bce+dice") < mask_loss(-perfect, target, "bce+dice")
    with pytest.raises(ValueError, match="unknown mask loss 'l2'"):
        mask_loss(perfect, target, "l2")


def test_8bit_adam_without_bitsandbytes_is_a_clear_error(monkeypatch):
    from generation.training.loop import make_optimizer

    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)  # import fails as if not installed
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ImportError, match="--use-8bit-adam needs bitsandbytes"):
        make_optimizer(HandTrainConfig(use_8bit_adam=True, learning_rate=1e-4), params)
    assert isinstance(make_optimizer(HandTrainConfig(learning_rate=1e-4), params), torch.optim.AdamW)


def test_the_optimizer_is_fused_on_cpu_and_stays_fused_after_resuming_an_unfused_checkpoint():
    """torch's default AdamW on CPU loops over the tensors (slower than the fused kernel:
    bench/optimizer_step.py), and a resumed checkpoint's param groups would bring that loop back; the
    fused update equals the loop's."""
    from generation.training.loop import apply_settings_after_resume, make_optimizer

    config = HandTrainConfig(learning_rate=1e-2)
    torch.manual_seed(0)
    weights = [torch.randn(3, 4), torch.randn(5)]
    grads = [torch.randn_like(w) for w in weights]

    def stepped(optimizer_of):
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        optimizer = optimizer_of(params)
        for _ in range(3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
        return optimizer, params

    fused, fused_params = stepped(lambda params: make_optimizer(config, params))
    assert fused.defaults["fused"] is True
    looped, looped_params = stepped(lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2))
    for a, b in zip(fused_params, looped_params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    fused.load_state_dict(looped.state_dict())  # a checkpoint saved by the unfused optimizer
    assert fused.param_groups[0]["fused"] is None
    apply_settings_after_resume(config, fused, None, None)
    assert fused.param_groups[0]["fused"] is True
    fused.step()  # the restored CPU step counters suit the fused kernel


def test_full_size_path_loads_a_local_sd_folder(synthetic_manifest, tmp_path):
    """--preset sd goes through from_pretrained(path, subfolder=...); a tiny folder stands in for SD 1.5."""
    from diffusers import PNDMScheduler

    from generation.models.loading import ModelFolderError, build_components, save_components

    tiny = build_components("tiny", seed=5)
    folder = save_components(tiny, str(tmp_path / "sd"))
    # Real SD folders ship a PNDM scheduler config; training reads it as DDPM with the same betas.
    PNDMScheduler.from_config(tiny.scheduler.config).save_pretrained(tmp_path / "sd" / "scheduler")
    loaded = build_components("sd", pretrained=folder)
    assert loaded.scheduler.__class__.__name__ == "DDPMScheduler" and loaded.source == folder
    assert all(
        torch.equal(a, b) for a, b in zip(tiny.unet.state_dict().values(), loaded.unet.state_dict().values())
    )

    run = str(tmp_path / "run")
    result = train_hand(
        HandTrainConfig(
            manifest=str(synthetic_manifest), out=run, preset="sd", pretrained=folder, steps=2, **FAST
        )
    )
    assert result.finished
    assert json.load(open(os.path.join(run, "config.json")))["data"]["components"] == folder
    # Step-0 invariance on real loading: the widened UNet starts from the folder's weights.
    pipe = HandGenerationPipeline.from_pretrained(run)
    assert pipe.unet.unet.conv_in.weight.shape[1] == 25

    import shutil

    shutil.rmtree(tmp_path / "sd" / "vae")
    with pytest.raises(ModelFolderError, match=r"lacks subfolder\(s\) \['vae'\]"):
        build_components("sd", pretrained=folder)


def test_metrics_log_survives_a_cut_off_last_line(tmp_path):
    from generation.training.metrics import MetricsLog, read_metrics

    log = MetricsLog(str(tmp_path))
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1.0 / step})
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 4, "lo')  # killed mid-write
    log.truncate_after(2)
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_metrics(str(tmp_path))


def test_validation_poses_read_only_the_row_groups_they_need(tmp_path, monkeypatch):
    """The first hands of the val split (else of the training filter), without a pass over the table."""
    import generation.training.hand as hand_module
    from manifests.reader import open_manifest

    root = make_synthetic_manifest(str(tmp_path / "m"), num_images=40, row_group_size=2)
    m = open_manifest(root)
    read = []
    real = m.hands.read_unit
    monkeypatch.setattr(
        m.hands, "read_unit", lambda unit, *a, **k: read.append(unit.key) or real(unit, *a, **k)
    )
    monkeypatch.setattr(hand_module, "open_manifest", lambda *a, **k: m)
    cols = ["hand_id"]
    expected = m.read("hands", cols, split="val")  # a val run takes them through its own filter
    for split in ("train", "val"):
        task = HandTask(HandTrainConfig(manifest=root, out=str(tmp_path / "run"), split=split, **FAST))
        task.facts = {"resolution": 64}
        read.clear()
        poses = task.validation_poses()
        wanted = expected.column("hand_id").to_pylist()[:2]
        assert [p["hand_id"] for p in poses] == wanted and poses[0]["keypoints"].shape == (21, 3)
        # Reading stops at the row group holding the last pose taken.
        units = m.hands.units()
        last = max(
            i for i, u in enumerate(units) if set(real(u, cols).column("hand_id").to_pylist()) & set(wanted)
        )
        assert read == [u.key for u in units[: last + 1]] and last + 1 < len(units), (read, last)
