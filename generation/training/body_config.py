"""Settings of stage-2 training (`train-body`): `StageTrainConfig` plus data, model, condition and loss fields.

Kept apart from the task so the CLI can build its options without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from manifests.settings import SettingError

from .config import (
    PRESET_RESOLUTION,
    StageTrainConfig,
    cache_latents_setting,
    init_from_setting,
    latent_cache_dir_setting,
    manifests_setting,
    preset_for,
    setting,
)

# Mirrors of `generation.pipelines.condition.CONDITION_GROUPS` and `generation.models.body.BASE_KINDS` (checked
# equal by the tests) so that building the CLI does not import torch.
CONDITION_GROUP_NAMES = ("pose", "hands", "mask")
BASE_KIND_NAMES = ("standard", "inpainting")
CONDITION_EMBEDDING_INIT_NAMES = ("zero", "kaiming")  # `generation.models.body.CONDITION_EMBEDDING_INITS`
MISSING_BODY = ("skip", "refuse")


@dataclass
class BodyTrainConfig(StageTrainConfig):
    """`StageTrainConfig` plus the body outpainter's settings."""

    out: str = setting(
        "runs/body", "run folder: checkpoints, metrics.jsonl, config.json, validation grids, final pipeline"
    )
    manifest: tuple[str, ...] = manifests_setting("manifest root(s)")
    init_from: str | None = init_from_setting("train-body")
    split: str | None = setting(None, "train only on images of this split (e.g. train); default all")
    pretrained: str | None = setting(
        None,
        "Stable Diffusion to start from: a diffusers folder, a Hub id in the local Hugging Face cache, or a "
        "train-vae run folder; SD-inpainting for --base-kind inpainting",
    )
    resolution: int | None = setting(
        None, f"training side in pixels, a multiple of 16 (default {PRESET_RESOLUTION})", ge=16, le=4096
    )
    init_controlnet: str | None = setting(
        None,
        "start from this diffusers ControlNet (a folder or a cached Hub id, e.g. "
        "lllyasviel/control_v11p_sd15_openpose) instead of a copy of the UNet's encoder; its input is widened "
        "to the condition channels, new channels at zero",
    )
    condition_embedding_init: str = setting(
        "kaiming",
        "how a new ControlNet's conditioning embedding starts: kaiming (scale-keeping; the condition shapes the "
        "first gradient step) or zero (diffusers' default init, last conv at zero: the condition reaches the "
        "features at about 1e-5 of their size, and beside a from-scratch base the ControlNet learned to "
        "ignore it). The zero convolutions start at zero either way, so step 0 draws what the base UNet draws",
        choices=CONDITION_EMBEDDING_INIT_NAMES,
    )
    base_kind: str = setting(
        "standard",
        "base UNet: standard (4-channel) or inpainting (9-channel SD-inpainting)",
        choices=BASE_KIND_NAMES,
    )
    train_base_unet: bool = setting(
        False, "also train the base UNet (default: frozen; only the ControlNet learns)"
    )
    condition_channels: tuple[str, ...] = setting(
        CONDITION_GROUP_NAMES, f"condition channel groups, in order, from {', '.join(CONDITION_GROUP_NAMES)}"
    )
    draw_hand_skeletons: bool = setting(
        False, "also draw the 21-point hand skeletons into the pose channels (ablation)"
    )
    min_visibility: float = setting(0.3, "body landmarks below this visibility are not drawn", ge=0, le=1)
    missing_body: str = setting(
        "skip",
        "images without a usable body pose: skip (counted in config.json) or refuse",
        choices=MISSING_BODY,
    )
    fit: str = setting(
        "cover", "to the square: cover (crop the overflow) or contain (pad)", choices=("cover", "contain")
    )
    crop: str = setting(
        "hands", "with cover, centre the crop on the hands or the image centre", choices=("hands", "center")
    )
    hflip: float = setting(
        0.0,
        "probability of training on the mirrored image, drawn per image and epoch; the body landmarks, "
        "handedness and the caption's left/right swap with it (0: never)",
        ge=0,
        le=1,
    )
    border_weight: float = setting(
        1.0, "extra loss weight in a band around the hand borders, where seams appear (0: plain MSE)", ge=0
    )
    border_width: int = setting(
        1, "half-width of that band in latent pixels (one latent pixel = 8 image pixels)", ge=0, le=64
    )
    cache_latents: bool = cache_latents_setting("training image (at its framing)")
    latent_cache_dir: str | None = latent_cache_dir_setting()
    condition_dropout: float = setting(
        0.05, "probability of training with an all-zero condition image (condition CFG)", ge=0, lt=1
    )
    num_validation_images: int = setting(
        4, "fixed images drawn in each validation grid (the split's first usable ones)", ge=0, le=256
    )
    validation_guidance_scale: float = setting(3.0, "text guidance for validation images", ge=0, le=100)

    @property
    def resolved_resolution(self) -> int:
        return int(self.resolution or PRESET_RESOLUTION[preset_for(self.preset, self.pretrained)])

    def validate(self) -> BodyTrainConfig:
        super().validate()
        res = self.resolved_resolution
        if res % 16:
            raise SettingError(f"resolution (--resolution) must be a multiple of 16, got {res}")
        unknown = [c for c in self.condition_channels if c not in CONDITION_GROUP_NAMES]
        if unknown or not self.condition_channels:
            raise SettingError(
                f"unknown condition channel group(s) {unknown}; expected some of {CONDITION_GROUP_NAMES}"
            )
        if self.init_from and self.init_controlnet:
            raise SettingError(
                "--init-from and --init-controlnet exclude each other (the run brings its own ControlNet)"
            )
        if (self.prediction_type or self.zero_terminal_snr) and not self.train_base_unet:
            raise SettingError(
                "--prediction-type and --zero-terminal-snr change what the base UNet must predict; a frozen "
                "base keeps the schedule it was trained on: add --train-base-unet"
            )
        if self.base_kind == "inpainting" and not {"hands", "mask"} <= set(self.condition_channels):
            raise SettingError("--base-kind inpainting needs the 'hands' and 'mask' condition channels")
        return self
