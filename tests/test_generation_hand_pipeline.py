"""HandGenerationPipeline: outputs, guidance modes, seeds, save/load, and clear errors on bad input."""

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_tester import BatchTesterMixin, PipelineTesterMixin

from generation import HandGenerationPipeline
from generation.models.hand import HandUNet
from generation.models.loading import ModelFolderError, build_components
from generation.models.schedulers import sampling_scheduler
from manifests.geometry import render_heatmap
from manifests.synthetic import synthetic_hand

pytestmark = pytest.mark.slow  # every test here draws hand crops with the hand pipeline


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    c = build_components("tiny", resolution=64)
    unet = HandUNet.from_unet(c.unet, heatmap_sigma=1.0)
    with torch.no_grad():  # a mask head with an opinion, so thresholding has both classes to produce
        unet.mask_head[-1].weight.normal_(0, 0.5)
    p = HandGenerationPipeline(unet, c.vae, c.text_encoder, c.tokenizer, sampling_scheduler(c.scheduler))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def keypoints():
    return synthetic_hand(np.random.default_rng(0), (32, 32), 36)[:, :2]


def test_numpy_output_shapes_dtypes_and_ranges(pipe, keypoints):
    out = pipe(
        ["a hand showing peace"] * 2, keypoints=keypoints, num_inference_steps=2, seed=0, output_type="np"
    )
    assert out.images.shape == (2, 64, 64, 3) and out.images.dtype == np.float32
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0
    assert out.masks.shape == (2, 64, 64) and out.masks.dtype == np.float32
    assert 0.0 <= out.masks.min() and out.masks.max() <= 1.0
    assert out.masks_binary.dtype == bool and out.masks_binary.shape == (2, 64, 64)
    assert out.masks_binary.any() and not out.masks_binary.all()
    np.testing.assert_array_equal(out.masks_binary, out.masks > 0.5)
    assert out.latents.shape == (2, 4, 8, 8)


def test_pil_pt_and_latent_outputs(pipe, keypoints):
    pil = pipe("a hand", keypoints=keypoints, num_inference_steps=2, seed=0)
    assert (
        isinstance(pil.images[0], Image.Image)
        and pil.images[0].size == (64, 64)
        and pil.images[0].mode == "RGB"
    )
    assert pil.masks_binary[0].mode == "L" and set(np.unique(np.asarray(pil.masks_binary[0]))) <= {0, 255}
    pt = pipe("a hand", keypoints=keypoints, num_inference_steps=2, seed=0, output_type="pt")
    assert pt.images.shape == (1, 3, 64, 64) and pt.images.dtype == torch.float32
    assert pt.masks.shape == (1, 1, 64, 64) and pt.masks_binary.dtype == torch.bool
    lat = pipe("a hand", keypoints=keypoints, num_inference_steps=2, seed=0, output_type="latent")
    assert lat.images.shape == (1, 4, 8, 8) and lat.masks.shape == (1, 1, 8, 8)
    # Same seed, same content across output types.
    np.testing.assert_allclose(
        np.asarray(pil.images[0]) / 255.0, pt.images[0].permute(1, 2, 0).numpy(), atol=1 / 255 + 1e-6
    )


def test_heatmaps_and_keypoints_are_the_same_condition(pipe, keypoints):
    heat = torch.from_numpy(render_heatmap(keypoints, 64, 8, sigma=pipe.unet.config.heatmap_sigma))
    a = pipe("a hand", keypoints=keypoints, num_inference_steps=2, seed=3, output_type="pt").images
    b = pipe("a hand", heatmaps=heat, num_inference_steps=2, seed=3, output_type="pt").images
    torch.testing.assert_close(a, b)


def test_seeds_batches_and_guidance_modes(pipe, keypoints):
    kw = dict(keypoints=keypoints, num_inference_steps=2, output_type="pt")
    a = pipe("a hand", seed=1, **kw).images
    assert torch.equal(a, pipe("a hand", seed=1, **kw).images)
    assert not torch.equal(a, pipe("a hand", seed=2, **kw).images)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(a, pipe("a hand", generator=g, **kw).images)
    both = pipe("a hand", seed=1, pose_guidance_scale=2.0, num_images_per_prompt=3, **kw)
    assert both.images.shape == (3, 3, 64, 64)
    no_cfg = pipe("a hand", seed=1, guidance_scale=1.0, **kw).images
    assert not torch.equal(a, no_cfg)  # guidance changes the result
    poses = np.stack([keypoints, keypoints[::-1]])
    out = pipe(
        ["left", "right"],
        keypoints=poses,
        seed=0,
        num_images_per_prompt=2,
        num_inference_steps=2,
        output_type="np",
    )
    assert out.images.shape == (4, 64, 64, 3)


def test_the_seed_decides_a_stochastic_samplers_step_noise(pipe, keypoints):
    """DDPM's ancestral step draws fresh noise every step: it must come from the caller's seed, not
    torch's global RNG (before, two runs with one seed differed whenever anything else drew numbers)."""
    from diffusers import DDPMScheduler

    ddpm = HandGenerationPipeline(
        pipe.unet,
        pipe.vae,
        pipe.text_encoder,
        pipe.tokenizer,
        DDPMScheduler.from_config(pipe.scheduler.config),
    )
    ddpm.set_progress_bar_config(disable=True)
    kw = dict(keypoints=keypoints, num_inference_steps=3, output_type="pt")
    torch.manual_seed(0)
    a = ddpm("a hand", seed=5, **kw).images
    torch.manual_seed(1)  # another global state: the same seed must give the same sample
    assert torch.equal(a, ddpm("a hand", seed=5, **kw).images)
    assert not torch.equal(a, ddpm("a hand", seed=6, **kw).images)


def test_a_saved_pipeline_loads_its_hand_unet(pipe, tmp_path):
    # Identical outputs after save/load are checked for every pipeline by `PipelineTesterMixin`.
    pipe.save_pretrained(tmp_path / "hand")
    loaded = HandGenerationPipeline.from_pretrained(tmp_path / "hand")
    assert isinstance(loaded.unet, HandUNet) and loaded.unet.config.heatmap_sigma == 1.0


def test_bad_inputs_raise_clear_errors(pipe, keypoints, tmp_path):
    kw = dict(num_inference_steps=1)
    with pytest.raises(
        ValueError, match=r"heatmaps must be \(21, h, w\) or \(B, 21, h, w\), got shape \(1, 20, 8, 8\)"
    ):
        pipe("a hand", heatmaps=torch.zeros(1, 20, 8, 8), **kw)
    with pytest.raises(ValueError, match="a 64px crop has 8x8 latents"):
        pipe("a hand", heatmaps=torch.zeros(1, 21, 16, 16), **kw)
    far = keypoints.copy()
    far[7] = [80.0, 10.0]
    with pytest.raises(
        ValueError, match=r"keypoint 7 of pose 0 is at \[80.0, 10.0\], outside the 64x64 crop"
    ):
        pipe("a hand", keypoints=far, **kw)
    with pytest.raises(ValueError, match=r"keypoints must be \(21, 2\|3\)"):
        pipe("a hand", keypoints=keypoints[:20], **kw)
    with pytest.raises(ValueError, match="mismatched batch sizes: 2 poses but 3 prompts"):
        pipe(["a", "b", "c"], keypoints=np.stack([keypoints, keypoints]), **kw)
    with pytest.raises(ValueError, match="exactly one of `heatmaps`"):
        pipe("a hand", **kw)
    with pytest.raises(ValueError, match="`generator` or `seed`, not both"):
        pipe("a hand", keypoints=keypoints, seed=0, generator=torch.Generator(), **kw)
    with pytest.raises(ValueError, match="size must be a positive multiple of 8 pixels, got 60"):
        pipe("a hand", keypoints=keypoints, size=60, **kw)
    with pytest.raises(ModelFolderError, match="hand model folder not found"):
        HandGenerationPipeline.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="no model_index.json"):
        HandGenerationPipeline.from_pretrained(tmp_path / "empty")


def test_absent_keypoints_are_not_range_checked(pipe, keypoints):
    kps = np.concatenate([keypoints, np.ones((21, 1))], axis=1)
    kps[3] = [500.0, -40.0, 0.0]  # score 0: not detected, empty heatmap channel
    out = pipe("a hand", keypoints=kps, num_inference_steps=1, seed=0, output_type="np")
    assert out.images.shape == (1, 64, 64, 3)


class TestHandPipelineCommon(PipelineTesterMixin, BatchTesterMixin):
    pipeline_class = HandGenerationPipeline

    def get_pipeline(self):
        torch.manual_seed(0)
        c = build_components("tiny", resolution=64)
        unet = HandUNet.from_unet(c.unet, heatmap_sigma=1.0)
        with torch.no_grad():  # a pose that matters: the widened input channels get weight
            unet.unet.conv_in.weight.normal_(0, 0.05)
        return HandGenerationPipeline(
            unet, c.vae, c.text_encoder, c.tokenizer, sampling_scheduler(c.scheduler)
        )

    def get_inputs(self, seed=0, index=0):
        kps = synthetic_hand(np.random.default_rng(index), (32, 32), 36)[:, :2]
        return {"prompt": "a hand showing peace", "keypoints": kps, "num_inference_steps": 2, "seed": seed}

    def batch_inputs(self, items):
        # One call draws image i from prompt i, pose i and a generator seeded as the single call's.
        return {
            "prompt": [i["prompt"] for i in items],
            "keypoints": np.stack([i["keypoints"] for i in items]),
            "num_inference_steps": 2,
            "generator": [torch.Generator().manual_seed(i["seed"]) for i in items],
        }
