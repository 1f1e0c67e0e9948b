"""Settings of stage-1 training (`train-hand`): `TrainConfig` plus data, model and loss fields.

Kept apart from the task so the CLI can build its options without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import TrainConfig, check_manifest_and_weights, check_probabilities, setting


@dataclass
class HandTrainConfig(TrainConfig):
    """`TrainConfig` plus the hand generator's data, model and loss settings."""

    learning_rate: float | None = setting(
        None, "peak learning rate (default: 1e-3 for --preset tiny, 1e-5 for sd)"
    )
    out: str = setting(
        "runs/hand", "run folder: checkpoints, metrics.jsonl, config.json, validation grids, final pipeline"
    )
    manifest: str = setting(
        "", "manifest root (or its hands table) written by prep; local path or fsspec URL"
    )
    preset: str = setting(
        "tiny",
        "tiny (small random components, CPU friendly) or sd (load --pretrained)",
        choices=("tiny", "sd"),
    )
    pretrained: str | None = setting(None, "local Stable Diffusion folder (diffusers layout) for --preset sd")
    resolution: int | None = setting(
        None,
        "crop side in pixels used for training (default: 64 for --preset tiny, else the manifest's crop_size)",
    )
    split: str | None = setting(None, "train only on hands of this split (e.g. train); default all")
    labels: tuple[str, ...] | None = setting(None, "train only on these gesture labels")
    min_hand_size: float | None = setting(None, "skip hands smaller than this (original pixels)")
    min_mask_score: float | None = setting(None, "skip hands whose mask score is below this")
    mask_loss_weight: float = setting(1.0, "lambda: weight of the mask loss added to the noise MSE")
    mask_loss: str = setting("bce", "bce or bce+dice", choices=("bce", "bce+dice"))
    text_dropout: float = setting(0.1, "probability of training with an empty caption (text CFG)")
    pose_dropout: float = setting(0.1, "probability of training with zero heatmaps (pose CFG)")
    prediction_type: str | None = setting(None, "epsilon / v_prediction / sample (default: the scheduler's)")
    mask_head_type: str = setting(
        "conv", "mask head: conv (conv3x3-SiLU-conv1x1) or channel (one conv)", choices=("conv", "channel")
    )
    mask_head_channels: int = setting(32, "hidden channels of the conv mask head")
    cache_latents: bool = setting(False, "VAE-encode every crop once and train from the cached posteriors")
    latent_cache_dir: str | None = setting(None, "where to keep the latent cache (default RUN/latent_cache)")
    shuffle_window: int = setting(4, "row groups whose rows are shuffled together")
    num_validation_poses: int = setting(4, "fixed poses drawn in each validation grid (val split first)")
    validation_steps: int = setting(20, "denoising steps for validation images")
    validation_guidance_scale: float = setting(5.0, "text guidance for validation images")
    sampler: str = setting(
        "ddim", "scheduler saved with the final pipeline: ddim or ddpm", choices=("ddim", "ddpm")
    )

    def validate(self) -> None:
        super().validate()
        check_manifest_and_weights(self)
        check_probabilities(self, ("text_dropout", "pose_dropout"))
        if self.mask_loss_weight < 0:
            raise ValueError(f"mask_loss_weight must be >= 0, got {self.mask_loss_weight}")
