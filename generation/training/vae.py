"""`train-vae`: train a diffusers `AutoencoderKL` from scratch on a manifest's hand crops and images.

The paper fine-tunes from Stable Diffusion; where no SD weights exist (tests, CPU demos, the
`mini` preset) a random VAE makes every generated image noise. This task gives the chain a real
autoencoder: SD's layout (8x downsampling, 4 latent channels), trained on

- every selected hand crop, at ``resolution`` (the stage-1 side), and
- every ok image, fitted (cover, centred) to ``image_resolution`` (the stage-2 side) and cut into a
  random ``resolution`` square each step, so the VAE also knows the scale stage 2 works at.

Loss: a pixel term (L1 or MSE) on the reconstruction of a posterior sample, plus ``edge_weight`` x the
L1 distance of the Sobel gradients (the from-scratch stand-in for SD's perceptual term: a pixel loss
alone draws blurred hands that prep's detector no longer finds), plus ``kl_weight`` x the KL
divergence to N(0, I), as in SD's VAE. Augmentation:
random horizontal flips. All randomness comes from the loop's generator, so resume is exact.

At the end the run folder becomes a Stable Diffusion folder (``unet/ vae/ text_encoder/ tokenizer/
scheduler/``) that ``--preset mini --pretrained RUN`` (or ``--preset sd``) loads for `train-hand` and
`train-body`. The VAE's ``scaling_factor`` is set to 1 / std of the training latents, as SD's 0.18215
was measured for its own VAE: a from-scratch VAE's latents have another spread, and diffusion assumes
unit-variance latents, so keeping 0.18215 would silently mis-scale every stage-1 and stage-2 run.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from manifests.datasets import BodyDataset, HandCropDataset
from manifests.draw import contact_sheet
from manifests.reader import open_manifest

from ..models.loading import SD_SUBFOLDERS, build_components, save_components
from .errors import DataCheckError
from .loop import TrainResult, train
from .losses import edge_loss, reconstruction_loss
from .task import TrainTask
from .vae_config import VaeTrainConfig

logger = logging.getLogger(__name__)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return (
        ((pixels.detach().float().cpu().permute(0, 2, 3, 1).numpy() + 1.0) * 127.5)
        .round()
        .clip(0, 255)
        .astype(np.uint8)
    )


def from_uint8(images) -> torch.Tensor:
    """(B, H, W, 3) uint8 (an array or a list of same-size images) -> (B, 3, H, W) float32 in [-1, 1];
    `to_uint8` undoes it."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 image arrays (one MSE over all pixels)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


@torch.no_grad()
def reconstruct(vae, pixels: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> the VAE's reconstruction of the posterior mode, clamped to [-1, 1]."""
    out = []
    for chunk in pixels.split(batch_size):
        chunk = chunk.to(vae.device, vae.dtype)
        z = vae.encode(chunk).latent_dist.mode()
        out.append(vae.decode(z).sample.float().clamp(-1, 1).cpu())
    return torch.cat(out)


def reconstruction_psnr(vae, pixels: torch.Tensor) -> float:
    """PSNR (dB, 8-bit) of the VAE's reconstructions of `pixels` (B, 3, H, W) in [-1, 1]."""
    return psnr(to_uint8(pixels), to_uint8(reconstruct(vae, pixels)))


@torch.no_grad()
def latent_std(vae, pixels: torch.Tensor, batch_size: int = 16) -> float:
    """Standard deviation of the unscaled posterior means of `pixels`: 1 / this is the scaling factor
    that gives the diffusion models unit-variance latents."""
    means = [
        vae.encode(c.to(vae.device, vae.dtype)).latent_dist.mean.float() for c in pixels.split(batch_size)
    ]
    return float(torch.cat(means).std())


class AutoencoderStep(torch.nn.Module):
    """The trained module: one encode, posterior sample, decode in `forward`, so that a multi-GPU run's
    DDP wrapper sees the whole step (calling ``vae.encode`` on the unwrapped model would skip its
    gradient synchronisation)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, generator: torch.Generator | None = None):
        """(B, 3, H, W) in [-1, 1] -> (reconstruction, KL divergence to N(0, I) per sample)."""
        posterior = self.vae.encode(pixels).latent_dist
        return self.vae.decode(posterior.sample(generator=generator)).sample, posterior.kl()

    def enable_gradient_checkpointing(self) -> None:
        self.vae.enable_gradient_checkpointing()


class _Samples(torch.utils.data.Dataset):
    """In-memory (3, S, S) tensors in [-1, 1]: the hand crops (S = resolution) and the fitted images."""

    def __init__(self, items: list[torch.Tensor]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return {"pixels": self.items[i]}


class VaeTask(TrainTask):
    name = "vae"
    oom_hints = ("--resolution", "--image-resolution")

    def __init__(self, config: VaeTrainConfig):
        super().__init__(config)
        self.facts: dict = {}
        self.crops: list[torch.Tensor] = []
        self.images: list[torch.Tensor] = []

    # ---- data ------------------------------------------------------------------------------------
    def check_data(self) -> None:
        """Read every selected hand crop and image into memory (small manifests: a CPU demo's data)."""
        c = self.config
        manifest = open_manifest(c.manifest)
        res = c.resolved_resolution
        if "hands" in manifest.tables:
            data = HandCropDataset(
                manifest, resolution=res, split=c.split, shuffle=False, rank=0, world_size=1
            )
            self.crops = [s["pixel_values"] for s in data]
        if c.image_resolution:
            data = BodyDataset(
                manifest,
                resolution=c.image_resolution,
                fit="cover",
                crop="center",
                split=c.split,
                status="ok",
                shuffle=False,
                rank=0,
                world_size=1,
            )
            self.images = [s["pixel_values"] for s in data]
        if len(self.crops) + len(self.images) < c.batch_size:
            raise DataCheckError(
                f"{manifest.url}: {len(self.crops)} hand crops and {len(self.images)} images (split {c.split}); "
                f"train-vae needs at least --batch-size {c.batch_size} samples"
            )
        self.facts = {
            "manifest": manifest.url,
            "hand_crops": len(self.crops),
            "images": len(self.images),
            "resolution": res,
            "image_resolution": c.image_resolution,
        }
        logger.info("train-vae data: %d hand crops, %d images", len(self.crops), len(self.images))

    def describe(self) -> dict:
        return dict(self.facts)

    def dataset(self, accelerator):
        return _Samples(self.crops + self.images)

    def collate(self, samples: list[dict]) -> dict:
        # Crops and fitted images differ in size: they are cut to one side in `loss`, with the generator.
        return {"pixels": [s["pixels"] for s in samples]}

    def prepare_batch(self, batch: dict, device) -> dict:
        return {"pixels": [p.to(device, non_blocking=True) for p in batch["pixels"]]}

    def validation_crops(self) -> torch.Tensor:
        return torch.stack(self.crops[: self.config.num_validation_crops] or self.images[:1])

    # ---- models ----------------------------------------------------------------------------------
    def build(self, accelerator) -> None:
        c = self.config
        res = self.facts["resolution"]
        preset = "sd" if c.pretrained else c.preset
        self.components = build_components(preset, pretrained=c.pretrained, resolution=res, seed=c.seed)
        if self.components.vae_scale_factor != 8 or self.components.vae.config.latent_channels != 4:
            raise ValueError(
                f"{c.pretrained}: the VAE downsamples by {self.components.vae_scale_factor} with "
                f"{self.components.vae.config.latent_channels} latent channels; SD's layout (8x, 4) is needed"
            )
        self.vae = self.components.vae
        self.vae.requires_grad_(True)
        self.step = AutoencoderStep(self.vae)
        self.facts.update(
            components=self.components.source, vae_parameters=sum(p.numel() for p in self.vae.parameters())
        )

    def trainable(self) -> torch.nn.Module:
        return self.step

    # ---- loss ------------------------------------------------------------------------------------
    def augment(self, pixels: list[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
        """Cut each sample to a random ``resolution`` square and mirror it with probability 1/2 (hflip)."""
        res = self.facts["resolution"]
        out = []
        for p in pixels:
            h, w = p.shape[-2:]
            y = int(torch.randint(0, h - res + 1, (1,), generator=generator, device=generator.device))
            x = int(torch.randint(0, w - res + 1, (1,), generator=generator, device=generator.device))
            p = p[:, y : y + res, x : x + res]
            flip = bool(torch.rand(1, generator=generator, device=generator.device) < 0.5)
            out.append(p.flip(-1) if self.config.hflip and flip else p)
        return torch.stack(out)

    def loss(self, model, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        x = self.augment(batch["pixels"], generator)
        rec, kl = model(x, generator)
        c = self.config
        pixel = reconstruction_loss(c.reconstruction_loss)(rec, x)
        edges = edge_loss(rec, x) if c.edge_weight else rec.new_zeros(())
        kl = kl.mean() / x[0].numel()  # per pixel value, so kl_weight does not depend on the size
        with torch.no_grad():
            mse = F.mse_loss(rec.float(), x.float())  # logged whatever the loss: the PSNR's measure
        return {
            "loss": pixel + c.edge_weight * edges + c.kl_weight * kl,
            "mse": mse,
            "pixel": pixel,
            "edge": edges,
            "kl": kl,
        }

    # ---- validation and export -------------------------------------------------------------------
    @torch.no_grad()
    def validate(self, model, step: int, path: str) -> dict:
        from PIL import Image

        crops = self.validation_crops()
        rec = reconstruct(model.vae, crops)
        originals, recs = to_uint8(crops), to_uint8(rec)
        n = len(originals)
        tiles = list(originals) + list(recs)
        captions = ["crop"] * n + [f"step {step}"] * n
        Image.fromarray(contact_sheet(tiles, columns=n, tile=64, captions=captions)).save(path)
        return {"psnr": psnr(originals, recs)}

    def final_entries(self, run: str) -> list[str]:
        return list(SD_SUBFOLDERS)  # `save_final` writes a Stable Diffusion folder, one subfolder per part

    def save_final(self, model, out_dir: str) -> None:
        """The run folder becomes a Stable Diffusion folder; the VAE's scaling factor is measured."""
        vae = model.vae.float().eval()
        pixels = torch.stack(
            self.crops
            + [img[:, : self.facts["resolution"], : self.facts["resolution"]] for img in self.images]
        )
        std = latent_std(vae, pixels)
        vae.register_to_config(scaling_factor=1.0 / std)
        self.components.vae = vae
        save_components(self.components, out_dir)
        logger.info(
            "saved the SD folder (%s) to %s; latent std %.3f -> scaling_factor %.4f",
            ", ".join(SD_SUBFOLDERS),
            out_dir,
            std,
            1.0 / std,
        )


def train_vae(config: VaeTrainConfig) -> TrainResult:
    """Train the autoencoder; the run folder ends up a Stable Diffusion folder for ``--pretrained``."""
    return train(VaeTask(config), config)
