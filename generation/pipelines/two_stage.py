"""`TwoStageHandBodyPipeline`: hands first (stage 1), then the body around them (stage 2), blended.

>>> pipe = TwoStageHandBodyPipeline.from_runs("runs/hand", "runs/body")     # two trained run folders
>>> out = pipe(spec=load_spec("examples/pose.json"), num_inference_steps=30)
>>> out.images[0].save("person.png")

The pipeline holds the components of both models, registered flat (``hand_unet``, ``hand_vae``, ...,
``unet``, ``controlnet``, ...), so `save_pretrained` writes one folder that `from_pretrained` reads
back; the two stages run as `HandGenerationPipeline` and `BodyOutpaintPipeline` views over those same
modules (``self.hand_pipeline`` / ``self.body_pipeline``), so neither loop is copied here.

Blending (sequential mask expansion, explained in ``generation.pipelines.blending``): after every stage-2
scheduler step ``z <- K_i * noised(z_hands, t_next) + (1 - K_i) * z``, where ``z_hands`` is the stage-2
VAE's encoding of the pasted hand canvas and ``noised`` uses the same noise the stage-2 latents started
from (as diffusers' inpainting pipeline does), so the kept region lies on the sampling trajectory. After
the last step ``t_next`` is "clean" and the known latents go in as they are.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from manifests.geometry import (
    CropBox,
)
from manifests.pose import BODY_FORMATS, keypoint_array
from manifests.schema import NUM_HAND_KEYPOINTS

from ..guards import (
    DEFAULT_MAX_PIXEL_STEPS,
    DEFAULT_MAX_PIXELS,
    check_image_cost,
    check_seed,
    make_generator,
    offset_seed,
)
from ..models.body import masked_image, vae_scale_factor
from ..models.hand import HandUNet
from ..models.loading import check_saved_pipeline
from .blending import BlendConfig, KeepSchedule, blend_latents, upsample
from .body import BodyOutpaintPipeline
from .condition import CONDITION_GROUPS, ConditionInputs, build_condition
from .hand import HandGenerationPipeline, keypoints_to_heatmaps
from .placing import (
    MASK_FALLBACKS,
    OVERLAP_ORDERS,
    SMALL_HAND_POLICIES,
    HandTooSmallError,
    PlacedHand,
    feathered_alpha,
    fix_masks,
    paste_hands,
    place_hands,
)

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt")
DEFAULT_HAND_PROMPT = "a {side} hand"
DEFAULT_CROP_MARGIN = 0.25  # prep's default `crop_margin`


class ModelMismatchError(ValueError):
    """The hand generator and the body outpainter do not share a latent space."""


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


class TwoStageHandBodyPipeline(DiffusionPipeline):
    """Stage 1 draws each hand of the target pose as a crop plus mask; stage 2 paints the person around
    the pasted hands with a ControlNet, blending the known hand latents in at every step.

    Components: the hand generator's ``hand_unet`` (`HandUNet`), ``hand_vae``, ``hand_text_encoder``,
    ``hand_tokenizer``, ``hand_scheduler``, and the body outpainter's ``vae``, ``text_encoder``,
    ``tokenizer``, ``unet``, ``controlnet``, ``scheduler``. Config: the body outpainter's condition
    settings (as in `BodyOutpaintPipeline`) and ``crop_margin``, the margin of the square hand crops
    the hand generator was trained on (prep's ``crop_margin``).
    """

    model_cpu_offload_seq = "hand_text_encoder->hand_unet->hand_vae->text_encoder->controlnet->unet->vae"

    def __init__(
        self,
        hand_unet: HandUNet,
        hand_vae: AutoencoderKL,
        hand_text_encoder: CLIPTextModel,
        hand_tokenizer: CLIPTokenizer,
        hand_scheduler,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        scheduler,
        condition_channels: str = "pose,hands,mask",
        draw_hand_skeletons: bool = False,
        min_visibility: float = 0.3,
        stick_width: float = 4 / 512,
        joint_radius: float = 4 / 512,
        crop_margin: float = DEFAULT_CROP_MARGIN,
    ):
        super().__init__()
        self.register_modules(
            hand_unet=hand_unet,
            hand_vae=hand_vae,
            hand_text_encoder=hand_text_encoder,
            hand_tokenizer=hand_tokenizer,
            hand_scheduler=hand_scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
        )
        body_settings = {
            "condition_channels": condition_channels,
            "draw_hand_skeletons": bool(draw_hand_skeletons),
            "min_visibility": float(min_visibility),
            "stick_width": float(stick_width),
            "joint_radius": float(joint_radius),
        }
        self.register_to_config(**body_settings, crop_margin=float(crop_margin))
        if not 0.0 <= crop_margin <= 4.0:
            raise ValueError(f"crop_margin must be in [0, 4], got {crop_margin}")
        self.check_models()
        # Views over the registered modules: the stages' own loops run on the same weights.
        self.hand_pipeline = HandGenerationPipeline(
            hand_unet, hand_vae, hand_text_encoder, hand_tokenizer, hand_scheduler
        )
        self.body_pipeline = BodyOutpaintPipeline(
            vae, text_encoder, tokenizer, unet, controlnet, scheduler, **body_settings
        )
        self.vae_scale_factor = vae_scale_factor(vae)

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_pipelines(
        cls,
        hand: HandGenerationPipeline,
        body: BodyOutpaintPipeline,
        crop_margin: float = DEFAULT_CROP_MARGIN,
    ) -> TwoStageHandBodyPipeline:
        """Compose a loaded hand generator and body outpainter (their modules are shared, not copied)."""
        return cls(
            hand_unet=hand.unet,
            hand_vae=hand.vae,
            hand_text_encoder=hand.text_encoder,
            hand_tokenizer=hand.tokenizer,
            hand_scheduler=hand.scheduler,
            vae=body.vae,
            text_encoder=body.text_encoder,
            tokenizer=body.tokenizer,
            unet=body.unet,
            controlnet=body.controlnet,
            scheduler=body.scheduler,
            crop_margin=crop_margin,
            **{
                k: body.config[k]
                for k in (
                    "condition_channels",
                    "draw_hand_skeletons",
                    "min_visibility",
                    "stick_width",
                    "joint_radius",
                )
            },
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a folder written by `save_pretrained`; a missing local folder is a clear error."""
        path = check_saved_pipeline(
            pretrained_model_name_or_path,
            "two-stage pipeline",
            "written by TwoStageHandBodyPipeline.save_pretrained",
        )
        return super().from_pretrained(path, **kwargs)

    @classmethod
    def from_runs(
        cls, hand_run: str, body_run: str, crop_margin: float | None = None, **load_kwargs
    ) -> TwoStageHandBodyPipeline:
        """Load a `train-hand` run folder and a `train-body` run folder (or any saved pipelines of the two
        kinds). `crop_margin` defaults to the margin recorded in the hand run's training manifest, else
        prep's default 0.25. `load_kwargs` (e.g. ``torch_dtype``) go to both `from_pretrained` calls."""
        hand = HandGenerationPipeline.from_pretrained(hand_run, **load_kwargs)
        body = BodyOutpaintPipeline.from_pretrained(body_run, **load_kwargs)
        if crop_margin is None:
            crop_margin = run_crop_margin(hand_run)
        return cls.from_pipelines(hand, body, crop_margin=crop_margin)

    def set_progress_bar_config(self, **kwargs):
        super().set_progress_bar_config(**kwargs)
        self.hand_pipeline.set_progress_bar_config(**kwargs)
        self.body_pipeline.set_progress_bar_config(**kwargs)

    @property
    def hand_crop_size(self) -> int:
        """The stage-1 crop side in pixels (the hand generator's training size)."""
        return self.hand_pipeline.default_size

    @property
    def size_multiple(self) -> int:
        """Stage 2 works on canvases whose sides are multiples of this (VAE factor x UNet downsampling)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    # ---------------------------------------------------------------- checks

    def check_models(self) -> None:
        """Both stages must share the latent space: channels, spatial factor and scaling factor."""
        hv, bv = self.hand_vae.config, self.vae.config
        problems = []
        if self.hand_unet.config.latent_channels != bv.latent_channels:
            problems.append(
                f"the hand UNet works on {self.hand_unet.config.latent_channels}-channel latents but the body "
                f"VAE makes {bv.latent_channels}"
            )
        if hv.latent_channels != bv.latent_channels:
            problems.append(
                f"latent channels differ: hand VAE {hv.latent_channels}, body VAE {bv.latent_channels}"
            )
        if vae_scale_factor(self.hand_vae) != vae_scale_factor(self.vae):
            problems.append(
                f"VAE downsampling differs: hand {vae_scale_factor(self.hand_vae)}x, body {vae_scale_factor(self.vae)}x"
            )
        if abs(float(hv.scaling_factor) - float(bv.scaling_factor)) > 1e-6:
            problems.append(f"VAE scaling factor differs: hand {hv.scaling_factor}, body {bv.scaling_factor}")
        if problems:
            raise ModelMismatchError(
                "the hand generator and the body outpainter do not fit together: "
                + "; ".join(problems)
                + " (train both from the same base model)"
            )

    def check_inputs(
        self,
        *,
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
    ):
        self.check_models()
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
        m = self.size_multiple
        crop = self.hand_crop_size
        check_image_cost(
            -(-width // m) * m,
            -(-height // m) * m,
            int(num_inference_steps),
            max_pixels,
            max_pixel_steps,
            what="image (stage-2 canvas)",
            extra_pixel_steps=len(hands) * crop * crop * int(hand_num_inference_steps),
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
            raise TypeError(
                f"blend must be a BlendConfig, a dict of its fields or a mode name, got {blend!r}"
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}")
        if small_hands not in SMALL_HAND_POLICIES:
            raise ValueError(f"small_hands must be one of {SMALL_HAND_POLICIES}, got {small_hands!r}")
        if min_hand_size < 0:
            raise ValueError(f"min_hand_size must be >= 0, got {min_hand_size}")
        if overlap_order not in OVERLAP_ORDERS:
            raise ValueError(
                f"unknown overlap_order {overlap_order!r}; expected one of {sorted(OVERLAP_ORDERS)}"
            )
        if feather < 0:
            raise ValueError(f"feather must be >= 0 pixels, got {feather}")
        if hand_encoding not in HAND_ENCODINGS:
            raise ValueError(f"unknown hand_encoding {hand_encoding!r}; expected one of {HAND_ENCODINGS}")
        if mask_fallback not in MASK_FALLBACKS:
            raise ValueError(
                f"unknown mask_fallback {mask_fallback!r}; expected one of {sorted(MASK_FALLBACKS)}"
            )
        if not 0.0 <= min_mask_coverage <= 1.0:
            raise ValueError(f"min_mask_coverage must be in [0, 1], got {min_mask_coverage}")
        if generator is not None and seed is not None:
            raise ValueError("pass `generator` or `seed`, not both")

    # ---------------------------------------------------------------- steps

    def place_hands(
        self,
        hands: Sequence[np.ndarray],
        handedness: Sequence[str | None],
        prompts: Sequence[str],
        crop_size: int,
        min_hand_size: float,
        small_hands: str,
    ) -> tuple[list[PlacedHand], list[dict]]:
        """`placing.place_hands` with the hand model's crop margin."""
        return place_hands(
            hands,
            handedness,
            prompts,
            crop_size,
            self.config.crop_margin,
            min_hand_size,
            small_hands,
            self.vae_scale_factor,
        )

    def build_condition(
        self, body_keypoints, body_format: str, canvas: np.ndarray, mask: np.ndarray, hand_keypoints
    ) -> torch.Tensor:
        """The stage-2 condition (1, C, H, W) in [0, 1], drawn by `generation.pipelines.condition` exactly as in
        training. Without a body pose the pose group is an empty skeleton (hand skeletons are still
        drawn when the model was trained with them)."""
        cfg = self.body_pipeline.condition_config
        if body_keypoints is not None:
            inputs = ConditionInputs(
                np.asarray(body_keypoints, np.float32),
                canvas,
                mask,
                list(hand_keypoints),
                body_format,
                "request",
            )
            return build_condition(inputs, cfg)[None]
        empty = ConditionInputs(
            np.zeros((18, 3), np.float32), canvas, mask, list(hand_keypoints), "openpose18"
        )
        parts = [CONDITION_GROUPS[name][1](empty, cfg) for name in cfg.channels]
        return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=2).transpose(2, 0, 1)))[None]

    @torch.no_grad()
    def encode_hands(
        self, canvas: np.ndarray, mask: np.ndarray, boxes: Sequence[CropBox] | None = None, margin: int = 2
    ) -> torch.Tensor:
        """Stage-2 VAE latents of the hand canvas (off-hand pixels grey, as an inpainting masked image):
        (1, C, H/f, W/f), scaled, from the posterior mode so they are deterministic.

        With `boxes` (the hands' crop boxes, in paste order) only a window around each hand is encoded,
        the box snapped out to the latent grid plus `margin` latent pixels, and its latents are placed at
        their spot (zeros elsewhere; a later hand's window wins where two overlap). The encoder's cost
        then follows the hands' area instead of the canvas'. Blending reads these latents only inside the
        keep-masks, which lie within the boxes grown by the initial dilation, so `margin` must be at least
        that dilation. Without `boxes` the whole canvas is encoded.
        """
        f = self.vae_scale_factor
        pixels = torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255.0
        image = masked_image(pixels, torch.from_numpy(mask)[None, None].float())
        if boxes is None:
            return self.body_pipeline.encode_image(image)
        h, w = mask.shape[0] // f, mask.shape[1] // f
        latents = torch.zeros(
            (1, self.vae.config.latent_channels, h, w), dtype=self.vae.dtype, device=self.vae.device
        )
        for box in boxes:
            x0, y0, x1, y1 = box.box
            lx0, ly0 = max(0, int(np.floor(x0 / f)) - margin), max(0, int(np.floor(y0 / f)) - margin)
            lx1, ly1 = min(w, int(np.ceil(x1 / f)) + margin), min(h, int(np.ceil(y1 / f)) + margin)
            if lx1 > lx0 and ly1 > ly0:
                window = image[..., ly0 * f : ly1 * f, lx0 * f : lx1 * f]
                latents[..., ly0:ly1, lx0:lx1] = self.body_pipeline.encode_image(window)
        return latents

    def blend_hook(
        self,
        hand_latents: torch.Tensor,
        schedule: KeepSchedule,
        noise: torch.Tensor,
        record: dict | None = None,
        clock: dict | None = None,
    ):
        """The `BodyOutpaintPipeline.denoise` step hook: ``z <- K_i * noised(z_hands, t_next) + (1 - K_i) * z``.

        `hand_latents` (1, 4, h, w) scaled latents, `schedule` the `KeepSchedule` giving K_i (1, 1, h, w)
        in [0, 1], `noise` the stage-2 initial noise. `record` collects each K_i (h, w) on the CPU
        ("keep") and each hand's kept share ("shares"); `clock["blend"]` accumulates the seconds spent here.
        """
        scheduler = self.body_pipeline.scheduler
        num_steps = schedule.num_steps

        def on_step_end(i: int, t, latents: torch.Tensor) -> torch.Tensor:
            t0 = time.perf_counter()
            keep = schedule.weights(i)
            if keep is not None:
                known = hand_latents.to(latents)
                if i + 1 < num_steps:
                    t_next = scheduler.timesteps[i + 1 : i + 2]
                    known = scheduler.add_noise(known, noise.to(latents), t_next)
                latents = blend_latents(latents, known, keep.to(latents))
            if record is not None:
                record["keep"].append(None if keep is None else keep[0, 0].float().cpu())
                record["shares"].append(schedule.kept_share(keep))
            if clock is not None:
                clock["blend"] = clock.get("blend", 0.0) + time.perf_counter() - t0
            return latents

        return on_step_end

    # ---------------------------------------------------------------- call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | None = None,
        hands: Sequence[np.ndarray] | None = None,
        handedness: Sequence[str | None] | None = None,
        body_keypoints: np.ndarray | None = None,
        body_format: str = "mediapipe33",
        width: int | None = None,
        height: int | None = None,
        spec=None,
        negative_prompt: str | None = None,
        hand_prompt: str | list[str] | None = None,
        hand_negative_prompt: str | None = None,
        num_inference_steps: int = 30,
        hand_num_inference_steps: int | None = None,
        guidance_scale: float = 7.5,
        hand_guidance_scale: float | None = None,
        pose_guidance_scale: float = 1.0,
        controlnet_conditioning_scale: float = 1.0,
        uncond_condition: str = "same",
        mask_threshold: float = 0.5,
        blend: BlendConfig | dict | str | None = None,
        pixel_composite: bool = False,
        feather: int = 3,
        small_hands: str = "skip",
        min_hand_size: float = 16.0,
        mask_fallback: str = "skeleton",
        min_mask_coverage: float = 0.5,
        overlap_order: str = "larger_on_top",
        hand_encoding: str = "windows",
        seed: int | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_masks: bool = False,
        return_dict: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_pixel_steps: int = DEFAULT_MAX_PIXEL_STEPS,
    ):
        """Generate one image of a person whose hands follow the given hand poses.

        Args:
            prompt / negative_prompt: the image caption (stage 2).
            hands: list of (21, 2|3) hand keypoints [x, y(, score)] in output pixels, MediaPipe order.
            handedness: "left" / "right" / None per hand (used in the default hand prompts).
            body_keypoints: (33, 3) MediaPipe or (18, 3) OpenPose (`body_format`) in output pixels, or None.
            width, height: output size in pixels. Stage 2 works on a canvas rounded up to
                `size_multiple`; the extra right/bottom band is cropped off at the end.
            spec: a `generation.spec.PoseSpec` instead of the above (its prompt, negative prompt and
                seed apply unless given here).
            hand_prompt: a caption for every hand or one per hand; "{side}" is replaced by the
                handedness (default "a {side} hand").
            num_inference_steps / guidance_scale: stage 2; hand_num_inference_steps /
                hand_guidance_scale / pose_guidance_scale: stage 1 (defaults: the stage-2 values, 1).
            blend: a `BlendConfig`, a dict of its fields or a mode name ("none", "fixed",
                "sequential"); default sequential with BlendConfig's defaults.
            pixel_composite / feather: paste the stage-1 hand interiors back over the decoded image
                with a mask eroded and feathered by `feather` px.
            mask_fallback / min_mask_coverage: a stage-1 mask on which fewer than `min_mask_coverage`
                of the hand's keypoints fall is replaced by the `MASK_FALLBACKS` entry (default: a mask
                drawn from the skeleton); `mask_sources` reports which hands it hit.
            small_hands / min_hand_size: a hand whose keypoints span less than `min_hand_size` output
                pixels is skipped (left to stage 2, reported in `skipped_hands`) or refused
                (`HandTooSmallError`).
            overlap_order: `OVERLAP_ORDERS` name deciding which hand is on top where two overlap.
            hand_encoding: "windows" (VAE-encode a window around each hand; the cost follows the hands'
                area) or "canvas" (encode the whole hand canvas); see `encode_hands`.
            seed / generator: randomness. Stage 1 and stage 2 each draw from a CPU generator seeded
                with `seed` (stage 2 with `seed` + 1), so results do not depend on the device or on
                how many hands stage 1 drew. A `generator` given instead serves both stages in turn.
            return_masks: also return the per-step keep masks.
            max_pixels / max_pixel_steps: refuse an image whose stage-2 canvas is over this many pixels,
                or whose canvas x steps plus hand crops x stage-1 steps is over this many pixel-steps
                (`generation.guards.check_image_cost`), before anything is drawn.
        Returns `TwoStageOutput` (or a tuple ``(images, output)`` with ``return_dict=False``).
        """
        t_start = time.perf_counter()
        if spec is not None:
            given = {"width": width, "height": height, "body_keypoints": body_keypoints, "hands": hands}
            given.update(handedness=handedness, prompt=prompt, negative_prompt=negative_prompt)
            width, height, body_keypoints, hands, handedness, prompt, negative_prompt = resolve_spec(
                spec, **given
            ).values()
            body_format = spec.body_format or body_format
            seed = spec.seed if seed is None and generator is None else seed
        hands = list(hands or [])
        blend = as_blend_config(blend)
        hand_steps = num_inference_steps if hand_num_inference_steps is None else hand_num_inference_steps
        self.check_inputs(
            width=width,
            height=height,
            hands=hands,
            handedness=handedness,
            body_keypoints=body_keypoints,
            body_format=body_format,
            hand_prompts=hand_prompt,
            blend=blend,
            output_type=output_type,
            num_inference_steps=num_inference_steps,
            hand_num_inference_steps=hand_steps,
            small_hands=small_hands,
            min_hand_size=min_hand_size,
            overlap_order=overlap_order,
            feather=feather,
            hand_encoding=hand_encoding,
            mask_fallback=mask_fallback,
            min_mask_coverage=min_mask_coverage,
            seed=seed,
            generator=generator,
            max_pixels=max_pixels,
            max_pixel_steps=max_pixel_steps,
        )
        hands = [keypoint_array(k, NUM_HAND_KEYPOINTS, f"hand {i}") for i, k in enumerate(hands)]
        handedness = list(handedness) if handedness is not None else [None] * len(hands)
        if body_keypoints is not None:
            body_keypoints = keypoint_array(body_keypoints, BODY_FORMATS[body_format], "body keypoints")
        seed = 0 if seed is None and generator is None else seed
        hand_generator = generator or make_generator(seed)
        body_generator = generator or make_generator(offset_seed(seed, 1))
        multiple = self.size_multiple
        work_h, work_w = -(-height // multiple) * multiple, -(-width // multiple) * multiple
        limits = {"max_pixels": max_pixels, "max_pixel_steps": max_pixel_steps}

        # Stage 1: a crop box per hand, the hands drawn in one batch, masks that miss their hand replaced.
        prompts = hand_prompts(hand_prompt, handedness)
        placed, skipped = self.place_hands(
            hands, handedness, prompts, self.hand_crop_size, min_hand_size, small_hands
        )
        t0 = time.perf_counter()
        hand_images, hand_masks = self.draw_hands(
            placed,
            num_inference_steps=hand_steps,
            guidance_scale=guidance_scale if hand_guidance_scale is None else hand_guidance_scale,
            pose_guidance_scale=pose_guidance_scale,
            negative_prompt=hand_negative_prompt,
            generator=hand_generator,
            mask_threshold=mask_threshold,
            **limits,
        )
        mask_sources = fix_masks(placed, hand_masks, mask_fallback, min_mask_coverage)
        t_stage1 = time.perf_counter() - t0

        # The hands pasted into the (work-size) canvas, and the stage-2 condition drawn from it.
        canvas, hand_mask, paste_order, labels = paste_hands(
            placed, hand_images, hand_masks, (work_h, work_w), overlap_order, labels=True
        )
        condition = self.build_condition(
            body_keypoints, body_format, canvas, hand_mask, [p.keypoints for p in placed]
        )

        # Stage 2, blending after every scheduler step (through the body pipeline's step hook).
        t0 = time.perf_counter()
        record: dict | None = {"keep": [], "shares": []} if return_masks else None
        clock = {"blend": 0.0}
        latents = self.paint_body(
            prompt or "",
            condition,
            canvas,
            labels,
            [{p.index: p.box for p in placed}[i] for i in paste_order],
            blend=blend,
            hand_encoding=hand_encoding,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            uncond_condition=uncond_condition,
            generator=body_generator,
            record=record,
            clock=clock,
            **limits,
        )
        t_stage2 = time.perf_counter() - t0

        # Decode, crop to the requested size, optionally composite the hand interiors in pixels.
        t0 = time.perf_counter()
        canvas, hand_mask = canvas[:height, :width], hand_mask[:height, :width]
        image = self.decode(latents, height, width, canvas, hand_mask, pixel_composite, feather)
        t_decode = time.perf_counter() - t0

        images = format_images(image, output_type)
        self.maybe_free_model_hooks()
        keeps = record["keep"] if record and record["keep"] and record["keep"][0] is not None else None
        out = TwoStageOutput(
            images=images,
            hand_images=list(hand_images),
            hand_masks=list(hand_masks),
            hand_canvas=canvas,
            hand_mask=hand_mask,
            hand_boxes=[p.box for p in placed],
            hand_indices=[p.index for p in placed],
            paste_order=paste_order,
            skipped_hands=skipped,
            mask_sources=mask_sources,
            keep_masks=torch.stack(keeps) if keeps else None,
            kept_shares=np.stack(record["shares"]).astype(np.float32) if keeps else None,
            keep_weight=upsample(keeps[-1], (work_h, work_w))[:height, :width] if keeps else None,
            latents=latents,
            timings={
                "stage1": t_stage1,
                "stage2": t_stage2,
                "blend": clock["blend"],
                "decode": t_decode,
                "total": time.perf_counter() - t_start,
            },
        )
        if not return_dict:
            return images, out
        return out

    # ---------------------------------------------------------------- steps of the call

    def draw_hands(
        self,
        placed: Sequence[PlacedHand],
        *,
        num_inference_steps: int,
        guidance_scale: float,
        pose_guidance_scale: float,
        negative_prompt: str | None,
        generator,
        mask_threshold: float,
        max_pixels: int,
        max_pixel_steps: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1, batched over the placed hands: (N, S, S, 3) uint8 crops and (N, S, S) bool masks."""
        crop_size = self.hand_crop_size
        if not placed:
            return np.zeros((0, crop_size, crop_size, 3), np.uint8), np.zeros((0, crop_size, crop_size), bool)
        heatmaps = keypoints_to_heatmaps(
            np.stack([p.crop_keypoints for p in placed]),
            crop_size,
            crop_size // self.hand_pipeline.vae_scale_factor,
            self.hand_unet.config.heatmap_sigma,
            self.hand_unet.config.num_keypoints,
        )
        stage1 = self.hand_pipeline(
            [p.prompt for p in placed],
            heatmaps=heatmaps,
            size=crop_size,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            pose_guidance_scale=pose_guidance_scale,
            negative_prompt=[negative_prompt or ""] * len(placed),
            generator=generator,
            output_type="np",
            mask_threshold=mask_threshold,
            max_pixels=max_pixels,
            max_pixel_steps=max_pixel_steps,
        )
        images = (np.clip(stage1.images, 0, 1) * 255).round().astype(np.uint8)
        return images, np.asarray(stage1.masks_binary, bool).copy()

    def paint_body(
        self,
        prompt: str,
        condition: torch.Tensor,
        canvas: np.ndarray,
        labels: np.ndarray,
        boxes: Sequence[CropBox],
        *,
        blend: BlendConfig,
        hand_encoding: str,
        num_inference_steps: int,
        generator,
        record: dict | None,
        clock: dict,
        **body_kwargs,
    ) -> torch.Tensor:
        """Stage 2 on the work canvas: its final latents (1, C, h, w). `labels` (H, W) says which pasted
        hand owns each pixel (-1: none). The known hand latents (the hands' `boxes` in paste order,
        encoded per `hand_encoding`) are blended in after every step unless blending is off or no hand
        was pasted; `record` collects each step's keep weights ("keep", None when not blending) and
        each hand's kept share ("shares")."""
        hand_mask = labels >= 0
        work_h, work_w = hand_mask.shape
        latent_hw = (work_h // self.vae_scale_factor, work_w // self.vae_scale_factor)
        noise = randn_tensor(
            (1, self.vae.config.latent_channels, *latent_hw),
            generator=generator,
            device=self._execution_device,
            dtype=self.unet.dtype,
        )
        hook = None
        if boxes and hand_mask.any() and blend.mode != "none":
            windows = boxes if hand_encoding == "windows" else None
            schedule = KeepSchedule(labels, blend, num_inference_steps, latent_hw, num_hands=len(boxes))
            # The windows must hold every latent pixel a keep-mask touches: the hands grown by d0.
            grow = blend.d0 * float(schedule.regions.sizes.max()) if blend.mode == "sequential" else 0.0
            margin = 1 + math.ceil(grow / self.vae_scale_factor)
            hand_latents = self.encode_hands(canvas, hand_mask, windows, margin=margin)
            hook = self.blend_hook(hand_latents, schedule, noise, record, clock)
        elif record is not None:
            record["keep"].extend([None] * num_inference_steps)
        return self.body_pipeline(
            prompt,
            condition=condition,
            height=work_h,
            width=work_w,
            num_inference_steps=num_inference_steps,
            generator=generator,
            latents=noise,
            output_type="latent",
            on_step_end=hook,
            **body_kwargs,
        ).images

    def decode(
        self,
        latents: torch.Tensor,
        height: int,
        width: int,
        canvas: np.ndarray,
        hand_mask: np.ndarray,
        pixel_composite: bool,
        feather: int,
    ) -> np.ndarray:
        """(H, W, 3) float32 image in [0, 1] cropped to `height` x `width`; with `pixel_composite` the
        hand interiors of the (H, W) `canvas` are feathered back over it."""
        image = self.body_pipeline.decode_latents(latents, "np")[0][:height, :width]
        if pixel_composite and hand_mask.any():
            alpha = feathered_alpha(hand_mask, int(feather))[..., None]
            image = alpha * (canvas.astype(np.float32) / 255.0) + (1.0 - alpha) * image
        return np.clip(image, 0.0, 1.0).astype(np.float32)


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


# ---------------------------------------------------------------------------------------------------
# Run folders


def run_crop_margin(hand_run: str) -> float:
    """The crop margin of the manifest a `train-hand` run was trained on (its `_manifest.json` config),
    or prep's default when the run or the manifest does not say."""
    import json

    try:
        with open(os.path.join(hand_run, "config.json"), encoding="utf-8") as f:
            manifest = json.load(f)["data"]["manifest"]
        from manifests.storage import filesystem, join, read_json

        fs, root = filesystem(str(manifest))
        info = read_json(fs, join(root.rstrip("/"), "_manifest.json"))
        margin = (info.get("config") or {}).get("crop_margin")
        if margin is not None:
            return float(margin)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        logger.info("crop margin of %s not recorded (%s); using %s", hand_run, exc, DEFAULT_CROP_MARGIN)
        return DEFAULT_CROP_MARGIN
    logger.info("the manifest of %s records no crop_margin; using %s", hand_run, DEFAULT_CROP_MARGIN)
    return DEFAULT_CROP_MARGIN


__all__ = [
    "TwoStageHandBodyPipeline",
    "TwoStageOutput",
    "ModelMismatchError",
    "HandTooSmallError",
    "OVERLAP_ORDERS",
    "MASK_FALLBACKS",
    "feathered_alpha",
]
