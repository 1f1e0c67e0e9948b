"""`handfirst-gen train-vae` and the `mini` preset: the autoencoder learns, its folder is a base for both stages."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from generation import HandGenerationPipeline
from generation.cli import main
from generation.generate.pipeline import body_resolution
from generation.models.loading import build_components
from generation.pipelines.body import BodyOutpaintPipeline
from generation.pipelines.two_stage import TwoStageHandBodyPipeline
from generation.training.vae import VaeTask, from_uint8, latent_std, reconstruct, to_uint8
from generation.training.vae_config import VaeTrainConfig

pytestmark = pytest.mark.slow  # every test here trains autoencoders

FAST = ["--checkpoint-every", "0", "--validate-every", "0", "--log-level", "WARNING"]


def _train_vae(manifest, out, *extra) -> int:
    return main(
        [
            "train-vae",
            "--preset",
            "tiny",
            "--manifest",
            str(manifest),
            "--out",
            str(out),
            "--batch-size",
            "4",
            "--image-resolution",
            "64",
            "--num-validation-crops",
            "2",
            *FAST,
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, synthetic_manifest):
    out = tmp_path_factory.mktemp("vae") / "run"
    assert _train_vae(synthetic_manifest, out, "--steps", "30") == 0
    return out


def _crops(manifest) -> torch.Tensor:
    task = VaeTask(VaeTrainConfig(manifest=str(manifest), preset="tiny", image_resolution=0))
    task.check_data()
    return torch.stack(task.crops[:8])


def test_train_vae_lowers_the_reconstruction_loss_on_a_fixed_batch(vae_run, synthetic_manifest):
    from diffusers import AutoencoderKL

    crops = _crops(synthetic_manifest)
    before = build_components("tiny", resolution=64, seed=0).vae.eval()  # what train-vae starts from
    after = AutoencoderKL.from_pretrained(str(vae_run / "vae")).eval()
    mse_before = float(((reconstruct(before, crops) - crops) ** 2).mean())
    mse_after = float(((reconstruct(after, crops) - crops) ** 2).mean())
    assert mse_after < 0.7 * mse_before, (mse_before, mse_after)
    records = [json.loads(line) for line in (vae_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["mse"] for r in records if "mse" in r]
    assert losses[-1] < losses[0]


def test_train_vae_sets_the_scaling_factor_for_unit_variance_latents(tmp_path, synthetic_manifest):
    """SD's 0.18215 belongs to SD's VAE; a from-scratch VAE's latents have another spread, and the
    diffusion stages assume unit variance. The saved factor is 1 / the measured std."""
    from diffusers import AutoencoderKL

    out = tmp_path / "run"
    assert _train_vae(synthetic_manifest, out, "--steps", "3", "--image-resolution", "0") == 0
    vae = AutoencoderKL.from_pretrained(str(out / "vae")).eval()
    crops = _crops(synthetic_manifest)
    task = VaeTask(VaeTrainConfig(manifest=str(synthetic_manifest), preset="tiny", image_resolution=0))
    task.check_data()
    std = latent_std(vae, torch.stack(task.crops))
    assert vae.config.scaling_factor != pytest.approx(0.18215, rel=0.05)
    assert vae.config.scaling_factor * std == pytest.approx(1.0, rel=1e-3)
    assert crops.shape[0] > 0


def test_train_vae_folder_loads_as_pretrained_for_train_hand_and_train_body(
    vae_run, synthetic_manifest, tmp_path
):
    common = [
        "--preset",
        "mini",
        "--pretrained",
        str(vae_run),
        "--manifest",
        str(synthetic_manifest),
        "--steps",
        "2",
        "--batch-size",
        "2",
        *FAST,
    ]
    assert (
        main(
            [
                "train-hand",
                *common,
                "--out",
                str(tmp_path / "hand"),
                "--resolution",
                "32",
                "--num-validation-poses",
                "1",
                "--validation-steps",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train-body",
                *common,
                "--out",
                str(tmp_path / "body"),
                "--resolution",
                "32",
                "--num-validation-images",
                "1",
                "--validation-steps",
                "1",
            ]
        )
        == 0
    )
    trained = load_file(str(vae_run / "vae" / "diffusion_pytorch_model.safetensors"))
    pipe = HandGenerationPipeline.from_pretrained(str(tmp_path / "hand"))
    name = "decoder.conv_out.weight"
    assert torch.equal(pipe.vae.state_dict()[name], trained[name])  # the trained VAE, not a random one
    saved = json.loads((vae_run / "vae" / "config.json").read_text())["scaling_factor"]
    assert pipe.vae.config.scaling_factor == pytest.approx(saved)
    body_vae = load_file(str(tmp_path / "body" / "vae" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(body_vae[name], trained[name])
    # The base folder's UNet says 64 px (its sample size); both runs trained at 32 px, and their saved
    # pipelines must draw at 32 px by default (generate and the two-stage pipeline read these sizes).
    assert json.loads((vae_run / "unet" / "config.json").read_text())["sample_size"] * 8 == 64
    assert pipe.default_size == 32
    body = BodyOutpaintPipeline.from_pretrained(str(tmp_path / "body"))
    assert body_resolution(body) == 32
    two_stage = TwoStageHandBodyPipeline.from_runs(str(tmp_path / "hand"), str(tmp_path / "body"))
    assert two_stage.hand_crop_size == 32


def test_train_vae_resume_continues_exactly(tmp_path, synthetic_manifest):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert (
        _train_vae(synthetic_manifest, whole, "--steps", "4", "--log-every", "1", "--ema-decay", "0.5") == 0
    )
    assert (
        _train_vae(
            synthetic_manifest,
            parts,
            "--steps",
            "4",
            "--log-every",
            "1",
            "--ema-decay",
            "0.5",
            "--interrupt-after",
            "2",
        )
        == 0
    )
    assert not (parts / "vae").exists()
    assert (
        _train_vae(
            synthetic_manifest,
            parts,
            "--steps",
            "4",
            "--log-every",
            "1",
            "--ema-decay",
            "0.5",
            "--resume",
            "latest",
        )
        == 0
    )

    def curve(run):
        return [
            round(json.loads(line)["loss"], 6)
            for line in (run / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line
        ]

    assert curve(parts) == curve(whole) and len(curve(whole)) == 4
    a = load_file(str(whole / "vae" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(parts / "vae" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_vae_bad_inputs_are_one_line_errors(tmp_path, synthetic_manifest, capsys):
    assert _train_vae(tmp_path / "nowhere", tmp_path / "a", "--steps", "1") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("handfirst-gen train-vae: error:") and "nowhere" in err and "\n" not in err
    assert _train_vae(synthetic_manifest, tmp_path / "b", "--steps", "1", "--resolution", "60") == 1
    assert "multiple of 8" in capsys.readouterr().err
    assert _train_vae(synthetic_manifest, tmp_path / "c", "--steps", "1", "--image-resolution", "32") == 1
    assert "image_resolution" in capsys.readouterr().err


def test_mini_preset_has_sd_latent_layout_and_loads_a_folder(vae_run):
    mini = build_components("mini", resolution=64)
    assert mini.vae_scale_factor == 8 and mini.vae.config.latent_channels == 4
    assert mini.vae.config.block_out_channels == (32, 64, 128, 128)
    assert mini.unet.config.cross_attention_dim == mini.text_encoder.config.hidden_size
    loaded = build_components("mini", pretrained=str(vae_run))
    assert loaded.source.endswith("run") and loaded.vae.config.scaling_factor != 0.18215
    x = torch.zeros(1, 3, 64, 64)
    assert tuple(mini.vae.encode(x).latent_dist.mode().shape) == (1, 4, 8, 8)
    with torch.no_grad():
        assert np.isfinite(float(mini.vae.decode(torch.zeros(1, 4, 8, 8)).sample.mean()))


def _step_edge(blur: float = 0.0) -> torch.Tensor:
    """(1, 3, 32, 32) in [-1, 1]: a vertical step edge, optionally blurred (box filter of width `blur`)."""
    x = -torch.ones(1, 3, 32, 32)
    x[..., 16:] = 1.0
    if blur:
        k = int(blur)
        x = torch.nn.functional.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)[
            ..., :32, :32
        ]
    return x


def test_edge_loss_is_zero_on_a_match_and_grows_with_blur():
    from generation.training.losses import edge_loss, image_gradients

    sharp = _step_edge()
    gx, gy = image_gradients(sharp)
    assert float(gy.abs().max()) == 0.0 and float(gx.abs().max()) > 0  # a vertical edge has only an x slope
    assert float(edge_loss(sharp, sharp)) == 0.0
    slight, strong = float(edge_loss(_step_edge(3), sharp)), float(edge_loss(_step_edge(7), sharp))
    assert 0 < slight < strong


def test_edge_term_separates_blur_that_the_pixel_loss_barely_sees():
    """A blurred reconstruction costs little pixel MSE, and a lot more once the edge term is added: the
    reason train-vae carries it (a pixel loss alone trains VAEs whose hands prep no longer detects)."""
    from generation.training.losses import edge_loss, reconstruction_loss

    sharp, blurred = _step_edge(), _step_edge(5)
    pixel = float(reconstruction_loss("mse")(blurred, sharp))
    edges = float(edge_loss(blurred, sharp))
    assert edges > 3 * pixel, (pixel, edges)


def test_reconstruction_loss_kinds_and_their_errors(tmp_path, synthetic_manifest, capsys):
    from generation.training.losses import reconstruction_loss

    a, b = torch.zeros(1, 3, 8, 8), torch.full((1, 3, 8, 8), 0.5)
    assert float(reconstruction_loss("l1")(a, b)) == pytest.approx(0.5)
    assert float(reconstruction_loss("mse")(a, b)) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown reconstruction loss 'ssim'.*'l1', 'mse'"):
        reconstruction_loss("ssim")
    assert _train_vae(synthetic_manifest, tmp_path / "a", "--steps", "1", "--edge-weight", "-1") == 2
    assert "edge_weight (--edge-weight) must be >= 0, got -1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse refuses a value outside the choices
        _train_vae(synthetic_manifest, tmp_path / "b", "--steps", "1", "--reconstruction-loss", "ssim")
    assert exc.value.code == 2 and "invalid choice: 'ssim'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_train_vae_logs_each_loss_term(vae_run):
    records = [json.loads(line) for line in (vae_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    assert train and all({"mse", "pixel", "edge", "kl"} <= set(r) for r in train)
    # the default loss is l1 + 0.5 x edge (+ a tiny KL): the logged total is made of the logged terms
    r = train[-1]
    assert r["loss"] == pytest.approx(r["pixel"] + 0.5 * r["edge"] + 1e-6 * r["kl"], rel=1e-4)


def test_from_uint8_and_to_uint8_undo_each_other():
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 6, 3), dtype=np.uint8)
    pixels = from_uint8(list(images))
    assert pixels.shape == (3, 3, 8, 6) and pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0
    assert (pixels[1, 2] == torch.from_numpy(images[1, :, :, 2]).float() / 127.5 - 1.0).all()  # channel 2
    assert (to_uint8(pixels) == images).all()
