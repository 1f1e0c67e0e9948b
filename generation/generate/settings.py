"""`GenerateConfig`: every setting of `handfirst-gen generate`, one CLI option each, recorded in each
sidecar so that ``--replay`` redoes an image exactly."""

from __future__ import annotations

from dataclasses import dataclass

from manifests.settings import OLD_PRECISION_NAMES, Settings, precision_setting, setting, setting_like

from ..guards import (
    DEFAULT_HAND_BATCH,
    DEFAULT_MAX_HANDS,
    DEFAULT_MAX_PIXEL_STEPS,
    DEFAULT_MAX_PIXELS,
    MAX_SEED,
)
from ..pipelines.blend_config import BlendConfig
from .requests import FRAMINGS


@dataclass
class GenerateConfig(Settings):
    """Every setting of `handfirst-gen generate` (one CLI option each); recorded in each sidecar.

    A setting passed to the pipeline as it is names the `TwoStageHandBodyPipeline.__call__` argument it
    feeds in its metadata (``call=``); `generate.pipeline.call_arguments` builds the call from those, and
    adds what the request fills in (prompts, seed, blending, the stage-1 steps)."""

    RENAMED = {"dtype": OLD_PRECISION_NAMES["dtype"]}

    steps: int = setting(30, "stage-2 (body) denoising steps", ge=1, le=1000, call="num_inference_steps")
    hand_steps: int | None = setting(None, "stage-1 (hand) denoising steps (default: --steps)", ge=1, le=1000)
    guidance_scale: float = setting(
        7.5, "stage-2 text guidance (1 disables it)", ge=0, le=100, call="guidance_scale"
    )
    hand_guidance_scale: float | None = setting(
        None, "stage-1 text guidance (default: --guidance-scale)", ge=0, le=100, call="hand_guidance_scale"
    )
    pose_guidance_scale: float = setting(
        1.0,
        "stage-1 extra guidance on the hand pose (1 disables it)",
        ge=0,
        le=100,
        call="pose_guidance_scale",
    )
    conditioning_scale: float = setting(
        1.0, "ControlNet residual scale in stage 2", ge=0, le=10, call="controlnet_conditioning_scale"
    )
    uncond_condition: str = setting(
        "same",
        "stage-2 unconditional branch: same condition (guide on text) or zero",
        choices=("same", "zero"),
        call="uncond_condition",
    )
    seed: int | None = setting(
        None, "seed (default: the spec's seed; 0 for manifest rows and photos)", ge=0, le=MAX_SEED
    )
    blend: str = setting_like(BlendConfig, "mode")
    d0: float = setting_like(BlendConfig, "d0")
    band: float = setting_like(BlendConfig, "band")
    expand_start: float = setting_like(BlendConfig, "expand_start")
    expand_end: float = setting_like(BlendConfig, "expand_end")
    min_core: float = setting_like(BlendConfig, "min_core")
    min_kept: float = setting_like(BlendConfig, "min_kept")
    pixel_composite: bool = setting(
        False, "paste the stage-1 hand interiors back over the decoded image", call="pixel_composite"
    )
    feather: int = setting(
        3, "pixel composite: erosion and feathering of the hand mask, pixels", ge=0, le=256, call="feather"
    )
    mask_threshold: float = setting(
        0.5, "stage-1 mask probability above which a pixel is hand", ge=0, le=1, call="mask_threshold"
    )
    mask_fallback: str = setting(
        "skeleton",
        "a stage-1 mask that misses the hand is replaced by one drawn from the skeleton, or kept (none)",
        choices=("skeleton", "none"),
        call="mask_fallback",
    )
    min_mask_coverage: float = setting(
        0.5, "share of a hand's keypoints its stage-1 mask must cover", ge=0, le=1, call="min_mask_coverage"
    )
    small_hands: str = setting(
        "skip",
        "hands under --min-hand-size: skip (stage 2 paints them) or refuse",
        choices=("skip", "refuse"),
        call="small_hands",
    )
    min_hand_size: float = setting(
        16.0, "smallest hand (longer side of its keypoint box) to draw, output px", ge=0, call="min_hand_size"
    )
    overlap_order: str = setting(
        "larger_on_top",
        "which hand covers the other where they overlap",
        choices=("larger_on_top", "given"),
        call="overlap_order",
    )
    hand_encoding: str = setting(
        "windows",
        "VAE-encode a window around each hand (cost follows the hands) or the whole canvas",
        choices=("windows", "canvas"),
        call="hand_encoding",
    )
    crop_margin: float | None = setting(
        None,
        "hand crop margin (default: the one the hand model records, the margin of its training crops)",
        ge=0,
        le=4,
    )
    prompt: str | None = setting(None, "image prompt (default: the spec's, the manifest caption, or built)")
    negative_prompt: str | None = setting(None, "negative prompt (default: the spec's, else empty)")
    hand_prompt: str | None = setting(
        None, "stage-1 caption for every hand, '{side}' becomes left/right (default: built from --gesture)"
    )
    gesture: str | None = setting(None, "gesture label for the default captions (e.g. peace, palm)")
    size: int | None = setting(
        None,
        "manifest rows and photos: longer output side in px (default: manifest rows whole at the body model's "
        "training scale, see docs/fidelity.md 'Framing'; photos at longer side its training size)",
        ge=8,
        le=8192,
    )
    framing: str = setting(
        "whole",
        "manifest rows: draw the whole frame, or (hands) the body model's training square centred on the "
        "hands, the canvas stage 2 was trained on; the sidecar records the window (source.window) and "
        "evaluate maps the frame's targets into it",
        choices=FRAMINGS,
    )
    batch_size: int = setting(
        1,
        "requests of one output size drawn through stage 2 as one batch (stage 1 draws each request's hands "
        "with its own seed); the images equal one-by-one drawing within float rounding",
        ge=1,
        le=256,
    )
    device: str | None = setting(None, "cuda / cpu / mps (default: cuda when available)")
    precision: str = precision_setting()
    detect: bool = setting(True, "detect the pose in the result for the overview sheet (MediaPipe)")
    overwrite: bool = setting(False, "redo images whose PNG and sidecar exist (default: skip them)")
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS,
        "refuse an image whose stage-2 canvas is over this many pixels (2048x2048)",
        ge=1,
        call="max_pixels",
    )
    max_pixel_steps: int = setting(
        DEFAULT_MAX_PIXEL_STEPS,
        "refuse an image whose canvas x --steps plus hand crops x hand steps is over this (2048x2048 x 100)",
        ge=1,
        call="max_pixel_steps",
    )

    max_hands: int = setting(
        DEFAULT_MAX_HANDS,
        "refuse an image that asks for more hands than this",
        ge=1,
        le=100_000,
        call="max_hands",
    )
    hand_batch_size: int = setting(
        DEFAULT_HAND_BATCH,
        "stage 1 draws an image's hands this many at a time (memory)",
        ge=1,
        le=4096,
        call="hand_batch_size",
    )

    def validate(self) -> GenerateConfig:
        super().validate()
        self.blend_config()  # the blending options' own rules (expand_start <= expand_end)
        return self

    def blend_config(self) -> BlendConfig:
        return BlendConfig(
            mode=self.blend,
            d0=self.d0,
            band=self.band,
            expand_start=self.expand_start,
            expand_end=self.expand_end,
            min_core=self.min_core,
            min_kept=self.min_kept,
        )
