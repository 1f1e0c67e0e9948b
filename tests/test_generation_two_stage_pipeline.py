"""TwoStageHandBodyPipeline with tiny random components: blending, geometry shared with prep, hand
placement, determinism, save/load and bad inputs."""

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.utils.torch_utils import randn_tensor
from pipeline_tester import PipelineTesterMixin
from two_stage_helpers import PROMPT, H, W, call_two_stage, tiny_two_stage_parts, two_stage_request

from generation import TwoStageHandBodyPipeline
from generation.models.hand import HandUNet
from generation.models.presets import tiny_vae_config
from generation.pipelines import two_stage_batch
from generation.pipelines.blending import BlendConfig, KeepSchedule, area_average
from generation.pipelines.hand_latents import encode_hands
from generation.pipelines.placing import HandTooSmallError, PlacedHand, paste_hands
from generation.pipelines.two_stage import ModelMismatchError
from manifests.geometry import CropBox
from manifests.synthetic import synthetic_hand

pytestmark = pytest.mark.slow  # every test here draws images with the two-stage pipeline


@pytest.fixture(scope="module")
def pipe():
    hand, body = tiny_two_stage_parts()
    p = TwoStageHandBodyPipeline.from_pipelines(hand, body, crop_margin=0.25)
    p.set_progress_bar_config(disable=True)
    return p


def _labels(pipe, out, request=None):
    """The pasted hands' label map on the work canvas, as the pipeline makes it."""
    req = request or two_stage_request()
    placed, _ = pipe.place_hands(req["hands"], req["handedness"], ["", ""], 64, 16.0, "skip")
    work = tuple(-(-v // pipe.size_multiple) * pipe.size_multiple for v in (req["height"], req["width"]))
    *_, labels = paste_hands(
        placed, np.stack(out.hand_images), np.stack(out.hand_masks), work, "larger_on_top", labels=True
    )
    return labels


def _known(pipe, out, encoding="windows", margin=1):
    """Latents of the pasted hands and the hand mask's area-averaged weights, as the pipeline makes them."""
    hw = out.latents.shape[-2:]
    by_index = dict(zip(out.hand_indices, out.hand_boxes))
    boxes = [by_index[i] for i in out.paste_order] if encoding == "windows" else None
    z_hands = encode_hands(pipe.body_pipeline, out.hand_canvas, out.hand_mask, boxes, margin=margin)
    return z_hands, area_average(out.hand_mask, tuple(hw))


def test_output_size_hands_and_masks(pipe):
    out = call_two_stage(pipe, return_masks=True)
    assert out.images.shape == (1, H, W, 3) and out.images.dtype == np.float32
    assert 0 <= out.images.min() and out.images.max() <= 1
    assert out.hand_indices == [0, 1] and not out.skipped_hands
    assert [m.shape for m in out.hand_masks] == [(64, 64)] * 2 and out.hand_images[0].shape == (64, 64, 3)
    assert out.hand_canvas.shape == (H, W, 3) and out.hand_mask.shape == (H, W) and out.hand_mask.any()
    # Every pasted hand pixel lies inside its own crop box.
    inside = np.zeros((H, W), bool)
    for box in out.hand_boxes:
        x0, y0, x1, y1 = box.box
        inside[max(0, int(np.floor(y0))) : int(np.ceil(y1)), max(0, int(np.floor(x0))) : int(np.ceil(x1))] = (
            True
        )
    assert not (out.hand_mask & ~inside).any()
    assert out.keep_masks.shape == (3, H // 8, W // 8)
    assert set(out.timings) == {"stage1", "stage2", "blend", "decode", "total"}


@pytest.mark.parametrize("encoding", ["windows", "canvas"])
def test_fixed_blending_puts_the_hand_latents_in_exactly(pipe, encoding):
    out = call_two_stage(pipe, blend="fixed", output_type="np", hand_encoding=encoding)
    z_hands, weights = _known(pipe, out, encoding)
    region, outside = weights[0, 0] == 1, weights[0, 0] == 0
    assert region.sum() >= 2, "the test needs latent pixels wholly inside a hand"
    assert torch.equal(out.latents[0][:, region], z_hands[0][:, region])
    assert not torch.allclose(out.latents[0][:, outside], z_hands[0][:, outside], atol=1e-3)
    # A latent pixel partly on the hand is the weighted mix: it is neither.
    rim = (weights[0, 0] > 0) & (weights[0, 0] < 1)
    assert rim.any() and not torch.allclose(out.latents[0][:, rim], z_hands[0][:, rim], atol=1e-3)


def test_sequential_keeps_exactly_the_scheduled_mask_at_every_step(pipe, monkeypatch):
    cfg = BlendConfig(mode="sequential", d0=0.05, band=0.3, expand_start=0.0, expand_end=1.0, min_core=0.2)
    steps, seed = 5, 7
    seen = []
    original = two_stage_batch.blend_hook

    def spy(*args, **kwargs):
        hook = original(*args, **kwargs)

        def wrapped(i, t, latents):
            before = latents.clone()
            after = hook(i, t, latents)
            seen.append((i, before, after.clone()))
            return after

        return wrapped

    monkeypatch.setattr(two_stage_batch, "blend_hook", spy)
    out = call_two_stage(pipe, blend=cfg, num_inference_steps=steps, seed=seed, return_masks=True)
    z_hands, _ = _known(pipe, out, margin=2)
    schedule = KeepSchedule(_labels(pipe, out), cfg, steps, tuple(out.latents.shape[-2:]))
    noise = randn_tensor(z_hands.shape, generator=torch.Generator().manual_seed(seed + 1))
    timesteps = pipe.scheduler.timesteps
    assert [i for i, _, _ in seen] == list(range(steps))
    sizes = []
    for i, before, after in seen:
        k = schedule.weights(i)[0, 0]
        assert torch.equal(out.keep_masks[i], k)
        np.testing.assert_allclose(out.kept_shares[i], schedule.kept_share(k[None, None]), rtol=1e-6)
        kept = k > 0
        sizes.append(float(k.sum()))
        known = (
            z_hands if i == steps - 1 else pipe.scheduler.add_noise(z_hands, noise, timesteps[i + 1 : i + 2])
        )
        torch.testing.assert_close(after[0], k * known[0] + (1 - k) * before[0], rtol=0, atol=1e-5)
        assert torch.equal(after[0][:, ~kept], before[0][:, ~kept])
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1] > 0, sizes
    assert (np.diff(out.kept_shares, axis=0) <= 0).all() and (out.kept_shares[-1] > 0).all()
    np.testing.assert_array_equal(out.keep_weight, _upsampled_last(out))


def _upsampled_last(out):
    from generation.pipelines.blending import upsample

    h, w = out.images.shape[1:3]
    work = tuple(8 * v for v in out.latents.shape[-2:])
    return upsample(out.keep_masks[-1], work)[:h, :w]


def test_hand_windows_cover_every_kept_latent(pipe):
    out = call_two_stage(
        pipe,
        **two_stage_request(hand_size=24.0),
        blend=BlendConfig(mode="sequential", d0=0.2),
        return_masks=True,
    )
    from generation.pipelines.blending import HandRegions

    sizes = HandRegions.from_labels(_labels(pipe, out, two_stage_request(hand_size=24.0))).sizes
    z_windows, _ = _known(pipe, out, "windows", margin=1 + int(np.ceil(0.2 * sizes.max() / 8)))
    covered = (z_windows[0] != 0).any(dim=0)
    assert (out.keep_masks[0] > 0).any() and not (out.keep_masks[0].bool() & ~covered).any()
    assert not covered.all(), "the windows should leave the canvas corners unencoded"
    # Inside the hands, a window's encoding is close to the whole canvas' (the encoder sees the same hand).
    z_canvas, weights = _known(pipe, out, "canvas")
    inside = weights[0, 0] > 0
    diff = (z_windows[0][:, inside] - z_canvas[0][:, inside]).abs().mean()
    assert diff < 0.5 * z_canvas[0][:, inside].abs().mean(), float(diff)


def test_none_never_touches_the_latents(pipe, monkeypatch):
    calls = []
    monkeypatch.setattr(two_stage_batch, "blend_hook", lambda *a, **k: calls.append(1))
    out = call_two_stage(pipe, blend="none", return_masks=True)
    assert calls == [] and out.keep_masks is None and out.timings["blend"] == 0.0
    # Exactly stage 2 alone on the same condition and noise.
    req = two_stage_request()
    condition = pipe.build_condition(
        req["body_keypoints"],
        "mediapipe33",
        out.hand_canvas,
        out.hand_mask,
        [req["hands"][i] for i in out.hand_indices],
    )
    generator = torch.Generator().manual_seed(1)
    noise = randn_tensor(out.latents.shape, generator=generator)
    alone = pipe.body_pipeline(
        PROMPT,
        condition=condition,
        num_inference_steps=3,
        latents=noise,
        generator=generator,
        output_type="latent",
    ).images
    assert torch.equal(out.latents, alone)


def test_same_seed_same_image_other_seed_other_image(pipe):
    a, b = call_two_stage(pipe, seed=5), call_two_stage(pipe, seed=5)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.hand_images[0], b.hand_images[0])
    c = call_two_stage(pipe, seed=6)
    assert np.abs(c.latents - a.latents).max() > 1e-3


def test_crop_geometry_is_prep_s(pipe):
    from prep.config import PrepConfig
    from prep.crops import hand_crop_box

    kps = two_stage_request()["hands"][0].copy()
    kps[[4, 8], 2] = 0.0  # invisible points do not shape the box, in prep or here
    kps[4, :2] = (0.0, 0.0)
    placed, _ = pipe.place_hands([kps], ["right"], ["a hand"], 64, 0.0, "skip")
    box = placed[0].box
    assert box == hand_crop_box(kps, PrepConfig(crop_size=64, crop_margin=0.25))
    np.testing.assert_allclose(box.to_image(placed[0].crop_keypoints), kps, atol=1e-9)
    visible = placed[0].crop_keypoints[kps[:, 2] > 0]
    assert (visible[:, :2] >= 0).all() and (visible[:, :2] <= 64).all()


def test_crop_geometry_matches_a_prep_manifest(hagrid_manifest):
    """The boxes and crop keypoints generation computes for a manifest's hands are the ones prep stored."""
    from manifests.decode import crop_keypoints, hand_keypoints
    from manifests.reader import open_manifest

    hand, body = tiny_two_stage_parts()
    m = open_manifest(str(hagrid_manifest))
    pipe = TwoStageHandBodyPipeline.from_pipelines(hand, body, crop_margin=m.config["crop_margin"])
    rows = m.read("hands", ["hand_id", "keypoints", "crop_box", "crop_size", "crop_keypoints"]).to_pylist()
    assert len(rows) >= 20
    for row in rows:
        kps = hand_keypoints(row).astype(np.float64)
        placed, _ = pipe.place_hands([kps], ["right"], [""], row["crop_size"], 0.0, "skip")
        np.testing.assert_allclose(
            placed[0].box.box, row["crop_box"], rtol=1e-5, atol=1e-2, err_msg=row["hand_id"]
        )
        np.testing.assert_allclose(
            placed[0].crop_keypoints, crop_keypoints(row), atol=0.05, err_msg=row["hand_id"]
        )


def test_overlapping_hands_have_a_defined_order(pipe):
    small = PlacedHand(0, "right", np.zeros((21, 3)), 20.0, CropBox(10, 10, 40, 64), np.zeros((21, 3)))
    large = PlacedHand(1, "left", np.zeros((21, 3)), 30.0, CropBox(30, 20, 50, 64), np.zeros((21, 3)))
    images = np.stack(
        [np.full((64, 64, 3), (255, 0, 0), np.uint8), np.full((64, 64, 3), (0, 0, 255), np.uint8)]
    )
    masks = np.ones((2, 64, 64), bool)
    # Listed larger first; larger_on_top still pastes it last.
    canvas, mask, order = paste_hands([large, small], images[::-1], masks, (96, 128), "larger_on_top")
    assert order == [0, 1]
    assert tuple(canvas[40, 40]) == (0, 0, 255) and tuple(canvas[15, 15]) == (255, 0, 0) and mask[40, 40]
    canvas, _, order = paste_hands([large, small], images[::-1], masks, (96, 128), "given")
    assert order == [1, 0] and tuple(canvas[40, 40]) == (255, 0, 0)


def test_pixel_composite_keeps_the_hand_interiors():
    from generation.pipelines.placing import feathered_alpha

    hand, body = tiny_two_stage_parts()
    p = TwoStageHandBodyPipeline.from_pipelines(hand, body)
    p.set_progress_bar_config(disable=True)
    plain = call_two_stage(p, pixel_composite=False)
    out = call_two_stage(p, pixel_composite=True, feather=2)
    alpha = feathered_alpha(out.hand_mask, 2)
    full, none = alpha >= 1.0, alpha <= 0.0
    assert full.sum() > 10
    np.testing.assert_allclose(out.images[0][full], out.hand_canvas[full] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(out.images[0][none], plain.images[0][none])


def test_non_multiple_size_is_padded_and_cropped(pipe):
    req = {**two_stage_request(), "width": 120, "height": 90}
    req["body_keypoints"][:, 1] *= 88 / 92
    out = pipe(PROMPT, **req, num_inference_steps=2, output_type="pil", seed=0)
    assert out.images[0].size == (120, 90) and out.hand_mask.shape == (90, 120)
    assert out.latents.shape[-2:] == (96 // 8, 128 // 8)


def test_small_hands_are_skipped_or_refused_with_the_size(pipe):
    req = two_stage_request()
    req["hands"][1] = synthetic_hand(np.random.default_rng(1), (92, 48), 10.0)
    out = call_two_stage(pipe, **req, min_hand_size=16.0)
    assert out.hand_indices == [0] and [s["index"] for s in out.skipped_hands] == [1]
    reason = out.skipped_hands[0]["reason"]
    assert reason.startswith("hand 1 (left) spans") and "px less than min_hand_size=16 px" in reason
    with pytest.raises(HandTooSmallError, match=r"hand 1 \(left\) spans [\d.]+ px, [\d.]+ px less"):
        call_two_stage(pipe, **req, min_hand_size=16.0, small_hands="refuse")


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "two_stage")
    loaded = TwoStageHandBodyPipeline.from_pretrained(tmp_path / "two_stage")
    loaded.set_progress_bar_config(disable=True)
    # Identical outputs after save/load are checked for every pipeline by `PipelineTesterMixin`.
    assert loaded.config.crop_margin == 0.25 and isinstance(loaded.hand_unet, HandUNet)


def test_missing_model_folders_are_named(tmp_path):
    from generation.models.loading import ModelFolderError

    with pytest.raises(ModelFolderError, match="two-stage pipeline folder not found"):
        TwoStageHandBodyPipeline.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="has no model_index.json"):
        TwoStageHandBodyPipeline.from_runs(tmp_path / "empty", tmp_path / "empty")


def test_models_with_different_latent_spaces_are_refused():
    hand, body = tiny_two_stage_parts()
    body.vae.register_to_config(scaling_factor=0.13025)
    with pytest.raises(ModelMismatchError, match="VAE scaling factor differs: hand 0.18215, body 0.13025"):
        TwoStageHandBodyPipeline.from_pipelines(hand, body)
    hand, body = tiny_two_stage_parts()
    wide_vae = AutoencoderKL.from_config({**tiny_vae_config(64), "latent_channels": 8})
    with pytest.raises(
        ModelMismatchError, match="hand UNet works on 4-channel latents but the body VAE makes 8"
    ):
        TwoStageHandBodyPipeline(
            hand.unet,
            hand.vae,
            hand.text_encoder,
            hand.tokenizer,
            hand.scheduler,
            wide_vae,
            body.text_encoder,
            body.tokenizer,
            body.unet,
            body.controlnet,
            body.scheduler,
        )


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda r: r["hands"][0].__setitem__((3, 0), np.nan),
            r"hand 0: NaN or infinite values at points \[3\]",
        ),
        (
            lambda r: r["hands"][1].__setitem__((5, 1), 500.0),
            r"hand 1: points \[5\] lie outside the 128x96 canvas",
        ),
        (lambda r: r["hands"].__setitem__(0, r["hands"][0][:20]), r"hand 0: expected 21 points"),
        (lambda r: r.__setitem__("body_format", "coco17"), r"unknown body format 'coco17'"),
        (
            lambda r: r.__setitem__("body_keypoints", np.ones((18, 3))),
            r"body keypoints \(mediapipe33\): expected 33",
        ),
        (lambda r: r.__setitem__("handedness", ["right"]), r"1 handedness values for 2 hands"),
        (lambda r: r.update(hands=[], body_keypoints=None), r"nothing to draw"),
    ],
)
def test_bad_inputs_are_named(pipe, change, message):
    req = {**two_stage_request(), "body_format": "mediapipe33"}
    change(req)
    with pytest.raises(ValueError, match=message):
        pipe(PROMPT, **req, num_inference_steps=1)


def test_bad_settings_are_named(pipe):
    with pytest.raises(ValueError, match="mode must be one of sequential, fixed, none; got 'soft'"):
        call_two_stage(pipe, blend="soft")
    with pytest.raises(ValueError, match="unknown overlap_order 'depth'"):
        call_two_stage(pipe, overlap_order="depth")
    with pytest.raises(ValueError, match="small_hands must be one of"):
        call_two_stage(pipe, small_hands="drop")
    with pytest.raises(ValueError, match="unknown hand_encoding 'latent'"):
        call_two_stage(pipe, hand_encoding="latent")
    with pytest.raises(ValueError, match="pass `generator` or `seed`, not both"):
        call_two_stage(pipe, generator=torch.Generator().manual_seed(0))


def test_a_body_without_hands_and_hands_without_a_body(pipe):
    no_hands = call_two_stage(pipe, hands=[], handedness=[], return_masks=True)
    assert (
        no_hands.images.shape == (1, H, W, 3) and no_hands.hand_indices == [] and not no_hands.hand_mask.any()
    )
    assert no_hands.keep_masks is None and no_hands.timings["stage1"] < no_hands.timings["stage2"]
    no_body = call_two_stage(pipe, body_keypoints=None)
    assert no_body.images.shape == (1, H, W, 3) and no_body.hand_indices == [0, 1]
    # The pose channels of the condition are empty; the hands and mask channels are not.
    cond = pipe.build_condition(None, "mediapipe33", no_body.hand_canvas, no_body.hand_mask, [])
    assert (
        cond.shape == (1, 7, H, W)
        and cond[0, :3].abs().sum() == 0
        and cond[0, 6].sum() == no_body.hand_mask.sum()
    )


class TestTwoStagePipelineCommon(PipelineTesterMixin):
    pipeline_class = TwoStageHandBodyPipeline

    def get_pipeline(self):
        hand, body = tiny_two_stage_parts()
        return TwoStageHandBodyPipeline.from_pipelines(hand, body, crop_margin=0.25)

    def get_inputs(self, seed=0, index=0):
        return {"prompt": PROMPT, **two_stage_request(seed=index), "num_inference_steps": 3, "seed": seed}


def test_hands_per_image_are_bounded_and_stage_1_draws_them_in_batches(pipe, monkeypatch):
    from generation.guards import CostLimitError

    many = [two_stage_request()["hands"][0]] * 65
    with pytest.raises(CostLimitError, match="asks for 65 hands, over max_hands 64"):
        call_two_stage(pipe, hands=many, handedness=None, hand_num_inference_steps=1)
    seen = []
    draw = type(pipe.hand_pipeline).__call__

    def counting(self, prompt, *a, **kw):
        seen.append(len(prompt))
        return draw(self, prompt, *a, **kw)

    monkeypatch.setattr(type(pipe.hand_pipeline), "__call__", counting)
    five = [two_stage_request(seed=s)["hands"][s % 2] for s in range(5)]
    out = call_two_stage(pipe, hands=five, handedness=None, hand_batch_size=2)
    assert seen == [2, 2, 1] and len(out.hand_images) == 5 and out.hand_indices == [0, 1, 2, 3, 4]
    seen.clear()
    whole = call_two_stage(pipe, hand_batch_size=2)  # two hands: one batch, the image of the default call
    assert seen == [2]
    np.testing.assert_array_equal(whole.images, call_two_stage(pipe).images)


def test_a_batch_blends_each_request_with_its_own_hands(pipe):
    """call_batch: each request's keep weights and kept shares come from its own hands (two hand sizes,
    so the schedules differ) and equal its single call's; the latents agree to float rounding."""
    cfg = BlendConfig(mode="sequential", band=0.3, expand_start=0.0, expand_end=1.0, min_core=0.2)
    requests = [
        {**two_stage_request(hand_size=48.0), "prompt": PROMPT, "seed": 3},
        {**two_stage_request(hand_size=28.0, seed=1), "prompt": PROMPT, "seed": 4},
    ]
    shared = dict(blend=cfg, num_inference_steps=4, output_type="np", return_masks=True)
    batch = pipe.call_batch(requests, **shared)
    singles = [pipe(**r, **shared) for r in requests]
    assert not torch.equal(batch[0].keep_masks, batch[1].keep_masks)
    for b, s in zip(batch, singles):
        assert b.kept_shares.shape == (4, len(s.hand_indices)) and (b.kept_shares[-1] > 0).all()
        assert torch.equal(b.keep_masks, s.keep_masks)
        np.testing.assert_array_equal(b.kept_shares, s.kept_shares)
        np.testing.assert_array_equal(b.keep_weight, s.keep_weight)
        torch.testing.assert_close(b.latents, s.latents, rtol=0, atol=1e-4)
