"""What the two-stage pipeline is asked and what it returns: the request's checks, its fields from a
pose spec, its arrays, generators and canvas size, the stage-1 hand prompts, the blending config, and
`TwoStageOutput`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput

from manifests.geometry import CropBox
from manifests.pose import BODY_FORMATS, keypoint_array
from manifests.schema import NUM_HAND_KEYPOINTS

from ..guards import (
    DEFAULT_HAND_BATCH,
    DEFAULT_MAX_HANDS,
    DEFAULT_MAX_PIXEL_STEPS,
    DEFAULT_MAX_PIXELS,
    check_hand_count,
    check_image_cost,
    check_seed,
    make_generator,
    offset_seed,
)
from ..models.body import vae_scale_factor
from .blend_config import BlendConfig
from .placing import MASK_FALLBACKS, OVERLAP_ORDERS, SMALL_HAND_POLICIES

OUTPUT_TYPES = ("pil", "np", "pt")


DEFAULT_HAND_PROMPT = "a {side} hand"


HAND_ENCODINGS = ("windows", "canvas")


@dataclass
class TwoStageOutput(BaseOutput):
    """Result of one `TwoStageHandBodyPipeline` call (one image).

    - images: "pil" list of one RGB image; "np" (1, H, W, 3) float32 in [0, 1]; "pt" (1, 3, H, W).
    - hand_images / hand_masks: stage-1 crops, (S, S, 3) uint8 and (S, S) bool, one per generated hand
      in request order (`hand_indices` says which request hand each is).
    - hand_canvas (H, W, 3) uint8 / hand_mask (H, W) bool: the hands pasted into the output frame.
    - hand_boxes: the crop boxes (output pixels) of the generated hands; paste_order: request indices
      in the order they were pasted (later ones on top).
    - skipped_hands: [{"index", "handedness", "reason"}] for hands left to stage 2.
    - mask_sources: per generated hand, "stage1" (the hand generator's mask) or the `MASK_FALLBACKS`
      name that replaced a mask missing the hand.
    - keep_masks: (N, h, w) float32 keep weights K_i in [0, 1] per stage-2 step at latent resolution
      (the image-resolution keep-masks area-averaged), when asked for (None with blending ``none``).
    - kept_shares: (N, hands) float32, per step and generated hand (in `hand_indices` order), the share
      of the hand's mask pixels that K_i keeps, when asked for (None with blending ``none``).
    - keep_weight: (H, W) float32, the last step's K at image resolution (each pixel its latent
      pixel's weight), when asked for (None with blending ``none``).
    - latents: (1, 4, h, w) final stage-2 latents (work canvas, before cropping to H x W).
    - timings: seconds for "stage1", "stage2" (including blending), "blend" (the blending alone),
      "decode" and "total".
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    hand_images: list[np.ndarray]
    hand_masks: list[np.ndarray]
    hand_canvas: np.ndarray
    hand_mask: np.ndarray
    hand_boxes: list[CropBox]
    hand_indices: list[int]
    paste_order: list[int]
    skipped_hands: list[dict] = field(default_factory=list)
    mask_sources: list[str] = field(default_factory=list)
    keep_masks: torch.Tensor | None = None
    kept_shares: np.ndarray | None = None
    keep_weight: np.ndarray | None = None
    latents: torch.Tensor | None = None
    timings: dict = field(default_factory=dict)


def check_request(
    *,
    size_multiple: int,
    hand_crop_size: int,
    width,
    height,
    hands,
    handedness,
    body_keypoints,
    body_format,
    hand_prompts,
    blend,
    output_type,
    num_inference_steps,
    hand_num_inference_steps,
    small_hands,
    min_hand_size,
    overlap_order,
    feather,
    hand_encoding="windows",
    mask_fallback="skeleton",
    min_mask_coverage=0.5,
    seed=None,
    generator=None,
    max_pixels=DEFAULT_MAX_PIXELS,
    max_pixel_steps=DEFAULT_MAX_PIXEL_STEPS,
    max_hands=DEFAULT_MAX_HANDS,
    hand_batch_size=DEFAULT_HAND_BATCH,
):
    """Refuse a two-stage request with one clear error before anything is drawn or allocated: sizes,
    steps, what the image costs, poses, prompts, and every option against its registry."""
    check_hand_count(len(hands), max_hands)
    if isinstance(hand_batch_size, bool) or not isinstance(hand_batch_size, int) or hand_batch_size < 1:
        raise ValueError(f"hand_batch_size must be an integer >= 1, got {hand_batch_size!r}")
    if not (isinstance(width, int) and isinstance(height, int)) or width < 8 or height < 8:
        raise ValueError(f"width and height must be integers >= 8, got {width!r} x {height!r}")
    for name, steps in (
        ("num_inference_steps", num_inference_steps),
        ("hand_num_inference_steps", hand_num_inference_steps),
    ):
        if int(steps) < 1:
            raise ValueError(f"{name} must be >= 1, got {steps}")
    # What this one image costs, before anything is drawn or allocated: the stage-2 canvas (rounded
    # up to the size multiple) times its steps, plus every hand crop times the stage-1 steps.
    work_h, work_w = work_size(width, height, size_multiple)
    check_image_cost(
        work_w,
        work_h,
        int(num_inference_steps),
        max_pixels,
        max_pixel_steps,
        what="image (stage-2 canvas)",
        extra_pixel_steps=len(hands) * hand_crop_size**2 * int(hand_num_inference_steps),
    )
    if seed is not None:
        check_seed(seed)
    if body_format not in BODY_FORMATS:
        raise ValueError(f"unknown body format {body_format!r}; expected one of {sorted(BODY_FORMATS)}")
    if body_keypoints is not None:
        where = f"body keypoints ({body_format})"
        keypoint_array(body_keypoints, BODY_FORMATS[body_format], where, frame=(width, height))
    if body_keypoints is None and not hands:
        raise ValueError("nothing to draw: give a body pose, hands, or both")
    for i, kps in enumerate(hands):
        keypoint_array(kps, NUM_HAND_KEYPOINTS, f"hand {i}", frame=(width, height))
    if handedness is not None and len(handedness) != len(hands):
        raise ValueError(f"{len(handedness)} handedness values for {len(hands)} hands")
    for i, side in enumerate(handedness or []):
        if side not in ("left", "right", None):
            raise ValueError(f"hand {i}: handedness must be 'left', 'right' or None, got {side!r}")
    if isinstance(hand_prompts, list) and len(hand_prompts) != len(hands):
        raise ValueError(f"{len(hand_prompts)} hand prompts for {len(hands)} hands")
    if not isinstance(blend, BlendConfig):
        raise TypeError(f"blend must be a BlendConfig, a dict of its fields or a mode name, got {blend!r}")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}")
    if small_hands not in SMALL_HAND_POLICIES:
        raise ValueError(f"small_hands must be one of {SMALL_HAND_POLICIES}, got {small_hands!r}")
    if min_hand_size < 0:
        raise ValueError(f"min_hand_size must be >= 0, got {min_hand_size}")
    if overlap_order not in OVERLAP_ORDERS:
        raise ValueError(f"unknown overlap_order {overlap_order!r}; expected one of {sorted(OVERLAP_ORDERS)}")
    if feather < 0:
        raise ValueError(f"feather must be >= 0 pixels, got {feather}")
    if hand_encoding not in HAND_ENCODINGS:
        raise ValueError(f"unknown hand_encoding {hand_encoding!r}; expected one of {HAND_ENCODINGS}")
    if mask_fallback not in MASK_FALLBACKS:
        raise ValueError(f"unknown mask_fallback {mask_fallback!r}; expected one of {sorted(MASK_FALLBACKS)}")
    if not 0.0 <= min_mask_coverage <= 1.0:
        raise ValueError(f"min_mask_coverage must be in [0, 1], got {min_mask_coverage}")
    if generator is not None and seed is not None:
        raise ValueError("pass `generator` or `seed`, not both")


def work_size(width: int, height: int, multiple: int) -> tuple[int, int]:
    """(height, width) of the stage-2 canvas: the output size rounded up to `multiple`."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def request_arrays(
    hands, handedness, body_keypoints, body_format: str
) -> tuple[list, list, np.ndarray | None]:
    """A checked request's hands as keypoint arrays, its handedness one per hand (None: not given) and
    its body keypoints as an array (or None)."""
    hands = [keypoint_array(k, NUM_HAND_KEYPOINTS, f"hand {i}") for i, k in enumerate(hands)]
    handedness = list(handedness) if handedness is not None else [None] * len(hands)
    if body_keypoints is not None:
        body_keypoints = keypoint_array(body_keypoints, BODY_FORMATS[body_format], "body keypoints")
    return hands, handedness, body_keypoints


def request_generators(seed: int | None, generator) -> tuple[torch.Generator, torch.Generator]:
    """(stage 1, stage 2) generators: `generator` for both in turn, else CPU generators seeded with
    `seed` (default 0) and `seed` + 1."""
    seed = 0 if seed is None and generator is None else seed
    return generator or make_generator(seed), generator or make_generator(offset_seed(seed, 1))


def hand_crop_margin(hand_unet, crop_margin: float | None = None) -> float:
    """The margin of the square hand crops: `crop_margin`, else the one the hand generator records."""
    crop_margin = hand_unet.config.get("crop_margin") if crop_margin is None else crop_margin
    if crop_margin is None:
        raise ValueError(
            "the hand generator records no crop_margin (the margin of the hand crops it was trained on): "
            "pass crop_margin (--crop-margin), the --crop-margin of its training manifest, or retrain it"
        )
    if not 0.0 <= crop_margin <= 4.0:
        raise ValueError(f"crop_margin must be in [0, 4], got {crop_margin}")
    return float(crop_margin)


def latent_mismatches(hand_unet, hand_vae, vae) -> list[str]:
    """What keeps the hand generator (`hand_unet`, `hand_vae`) and the body outpainter's `vae` from
    sharing one latent space: channels, spatial factor and scaling factor (empty when they do)."""
    hv, bv = hand_vae.config, vae.config
    problems = []
    if hand_unet.config.latent_channels != bv.latent_channels:
        problems.append(
            f"the hand UNet works on {hand_unet.config.latent_channels}-channel latents but the body "
            f"VAE makes {bv.latent_channels}"
        )
    if hv.latent_channels != bv.latent_channels:
        problems.append(
            f"latent channels differ: hand VAE {hv.latent_channels}, body VAE {bv.latent_channels}"
        )
    if vae_scale_factor(hand_vae) != vae_scale_factor(vae):
        problems.append(
            f"VAE downsampling differs: hand {vae_scale_factor(hand_vae)}x, body {vae_scale_factor(vae)}x"
        )
    if abs(float(hv.scaling_factor) - float(bv.scaling_factor)) > 1e-6:
        problems.append(f"VAE scaling factor differs: hand {hv.scaling_factor}, body {bv.scaling_factor}")
    return problems


def resolve_spec(spec, **given) -> dict:
    """A request's width, height, body_keypoints, hands, handedness, prompt and negative_prompt (in that
    order): each from `given` unless None there, else from the `generation.spec.PoseSpec`."""
    from_spec = {
        "width": spec.width,
        "height": spec.height,
        "body_keypoints": spec.body,
        "hands": [h.keypoints for h in spec.hands],
        "handedness": [h.handedness for h in spec.hands],
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
    }
    return {k: v if given.get(k) is None else given[k] for k, v in from_spec.items()}


def as_blend_config(blend: BlendConfig | dict | str | None) -> BlendConfig:
    """A `BlendConfig` from itself, a dict of its fields, a mode name or None (the defaults)."""
    if isinstance(blend, str):
        return BlendConfig(mode=blend)
    if isinstance(blend, dict):
        return BlendConfig(**blend)
    return BlendConfig() if blend is None else blend


def hand_prompts(hand_prompt: str | list[str] | None, handedness: Sequence[str | None]) -> list[str]:
    """One stage-1 caption per hand: `hand_prompt` (one for all or one each, default
    `DEFAULT_HAND_PROMPT`) with "{side}" replaced by the hand's side."""
    templates = (
        hand_prompt
        if isinstance(hand_prompt, list)
        else [hand_prompt or DEFAULT_HAND_PROMPT] * len(handedness)
    )
    return [" ".join(t.replace("{side}", side or "").split()) for t, side in zip(templates, handedness)]


def format_images(image: np.ndarray, output_type: str):
    """One (H, W, 3) float image in [0, 1] as `output_type`: a list of one PIL image, (1, H, W, 3) numpy,
    or a (1, 3, H, W) tensor."""
    if output_type == "pil":
        return [PIL.Image.fromarray((image * 255).round().astype(np.uint8))]
    if output_type == "np":
        return image[None]
    return torch.from_numpy(image).permute(2, 0, 1)[None]
