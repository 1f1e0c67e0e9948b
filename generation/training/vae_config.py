"""Settings of `train-vae`: `TrainConfig` plus the autoencoder's data and loss fields.

Kept apart from the task so the CLI can build its options without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import PRESET_RESOLUTION, TrainConfig, check_manifest_and_weights, setting

VAE_PRESETS = ("mini", "tiny")


@dataclass
class VaeTrainConfig(TrainConfig):
    """`TrainConfig` plus what `train-vae` trains on and how."""

    out: str = setting(
        "runs/vae",
        "run folder: checkpoints, metrics.jsonl, config.json, validation grids and, at the end, a Stable "
        "Diffusion folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/) for --pretrained",
    )
    steps: int = setting(800, "optimizer steps in total (a resumed run continues up to this count)", ge=1)
    batch_size: int = setting(8, "samples per device per micro-batch", ge=1)
    # 1e-3 with AdamW brought the 3.9M mini VAE past 22 dB on hagrid_mini crops fastest in short CPU runs.
    learning_rate: float = setting(1e-3, "peak learning rate", gt=0, le=10)
    checkpoint_every: int = setting(
        200, "save a resumable checkpoint every N optimizer steps (0: only at the end)", ge=0
    )
    validate_every: int = setting(200, "write a reconstruction grid every N steps (0: only at the end)", ge=0)
    manifest: str = setting("", "manifest root written by prep; local path or fsspec URL")
    preset: str = setting(
        "mini",
        "component sizes to start from: mini (3.9M-parameter VAE) or tiny (0.4M); ignored with --pretrained",
        choices=VAE_PRESETS,
    )
    pretrained: str | None = setting(
        None, "start from this Stable Diffusion folder instead: its VAE is trained on, its other parts copied"
    )
    resolution: int | None = setting(
        None, "training side in pixels, a multiple of 8 (default: the preset's, 64)", ge=8, le=4096
    )
    image_resolution: int = setting(
        128,
        "full images are fitted (cover) to this side and cut into random --resolution squares, so the VAE "
        "also learns the scale stage 2 works at (0: hand crops only)",
        ge=0,
        le=4096,
    )
    split: str | None = setting(None, "train only on rows of this split (e.g. train); default all")
    kl_weight: float = setting(
        1e-6, "weight of the KL term (SD's VAE used 1e-6): small, so reconstructions stay sharp", ge=0
    )
    reconstruction_loss: str = setting(
        "l1",
        "pixel term of the reconstruction loss: l1 (sharper than mse at the same steps) or mse",
        choices=("l1", "mse"),
    )
    # SD's VAE adds a perceptual (LPIPS) term, which needs a pretrained network; the gradient term is
    # the from-scratch stand-in. On hagrid_mini at 64 px, 6 CPU minutes: mse alone 25.1 dB with prep's
    # detector finding 9 of 46 reconstructed hands; l1 + 0.5 x edge 24.1 dB and 25 of 46.
    edge_weight: float = setting(
        0.5,
        "weight of the edge term (L1 distance of Sobel image gradients), which keeps edges the pixel "
        "loss blurs away (0: pixel loss only)",
        ge=0,
        le=100,
    )
    hflip: bool = setting(True, "mirror half of the samples (hands of both sides look alike mirrored)")
    num_validation_crops: int = setting(
        8, "hand crops shown and scored (PSNR) in each validation grid", ge=1, le=256
    )

    @property
    def resolved_resolution(self) -> int:
        return int(self.resolution or PRESET_RESOLUTION[self.preset])

    def validate(self):
        result = super().validate()
        check_manifest_and_weights(self)
        res = self.resolved_resolution
        if res % 8:
            raise ValueError(
                f"resolution (--resolution) must be a multiple of 8 (the VAE's downsampling), got {res}"
            )
        if self.image_resolution and self.image_resolution < res:
            raise ValueError(
                f"image_resolution (--image-resolution) {self.image_resolution} is below --resolution {res}: "
                "the random squares are cut from the fitted image (0 leaves full images out)"
            )
        return result
