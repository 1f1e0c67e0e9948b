"""Settings of stage-1 training (`train-hand`): `StageTrainConfig` plus data, model and loss fields.

Kept apart from the task so the CLI can build its options without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import (
    StageTrainConfig,
    cache_latents_setting,
    init_from_setting,
    latent_cache_dir_setting,
    manifests_setting,
    setting,
)


@dataclass
class HandTrainConfig(StageTrainConfig):
    """`StageTrainConfig` plus the hand generator's data, model and loss settings."""

    out: str = setting(
        "runs/hand", "run folder: checkpoints, metrics.jsonl, config.json, validation grids, final pipeline"
    )
    manifest: tuple[str, ...] = manifests_setting("manifest root(s), or their hands tables,")
    init_from: str | None = init_from_setting("train-hand")
    pretrained: str | None = setting(
        None,
        "Stable Diffusion to start from: a diffusers folder, a Hub id in the local Hugging Face cache "
        "(e.g. stable-diffusion-v1-5/stable-diffusion-v1-5), or a train-vae run folder",
    )
    resolution: int | None = setting(
        None,
        "crop side in pixels used for training (default: 64 for --preset tiny, else the manifest's crop_size)",
        ge=8,
        le=4096,
    )
    split: str | None = setting(None, "train only on hands of this split (e.g. train); default all")
    labels: tuple[str, ...] | None = setting(None, "train only on these gesture labels")
    min_hand_size: float | None = setting(None, "skip hands smaller than this (original pixels)", ge=0)
    min_mask_score: float | None = setting(None, "skip hands whose mask score is below this", ge=0, le=1)
    mask_loss_weight: float = setting(1.0, "lambda: weight of the mask loss added to the noise MSE", ge=0)
    mask_loss: str = setting("bce", "bce or bce+dice", choices=("bce", "bce+dice"))
    pose_dropout: float = setting(0.1, "probability of training with zero heatmaps (pose CFG)", ge=0, lt=1)
    mask_head_type: str = setting(
        "conv", "mask head: conv (conv3x3-SiLU-conv1x1) or channel (one conv)", choices=("conv", "channel")
    )
    mask_head_channels: int = setting(32, "hidden channels of the conv mask head", ge=1, le=4096)
    cache_latents: bool = cache_latents_setting("crop")
    latent_cache_dir: str | None = latent_cache_dir_setting()
    num_validation_poses: int = setting(
        4, "fixed poses drawn in each validation grid (val split first)", ge=0, le=256
    )
    validation_guidance_scale: float = setting(5.0, "text guidance for validation images", ge=0, le=100)
