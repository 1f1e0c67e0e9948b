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
import time
from collections.abc import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from ..guards import DEFAULT_HAND_BATCH, DEFAULT_MAX_HANDS, DEFAULT_MAX_PIXEL_STEPS, DEFAULT_MAX_PIXELS
from ..models.body import vae_scale_factor
from ..models.hand import HandUNet
from ..models.loading import CheckedFromPretrained
from .blending import BlendConfig
from .body import BodyOutpaintPipeline
from .condition import request_condition
from .hand import HandGenerationPipeline
from .placing import (
    MASK_FALLBACKS,
    OVERLAP_ORDERS,
    HandTooSmallError,
    PlacedHand,
    feathered_alpha,
    place_hands,
)
from .two_stage_batch import Drawn, paint_bodies, request_output
from .two_stage_inputs import TwoStageOutput, check_request, hand_crop_margin, latent_mismatches
from .two_stage_request import draw_hands, prepare_request

logger = logging.getLogger(__name__)


# The body outpainter's condition settings and framing, which the pipeline config carries as well.
BODY_SETTINGS = (
    "condition_channels",
    "draw_hand_skeletons",
    "min_visibility",
    "stick_width",
    "joint_radius",
    "fit",
)


class ModelMismatchError(ValueError):
    """The hand generator and the body outpainter do not share a latent space."""


class TwoStageHandBodyPipeline(CheckedFromPretrained, DiffusionPipeline):
    """Stage 1 draws each hand of the target pose as a crop plus mask; stage 2 paints the person around
    the pasted hands with a ControlNet, blending the known hand latents in at every step.

    Components: the hand generator's ``hand_unet`` (`HandUNet`), ``hand_vae``, ``hand_text_encoder``,
    ``hand_tokenizer``, ``hand_scheduler``, and the body outpainter's ``vae``, ``text_encoder``,
    ``tokenizer``, ``unet``, ``controlnet``, ``scheduler``. Config: the body outpainter's condition
    settings and ``fit`` (as in `BodyOutpaintPipeline`) and ``crop_margin``, the margin of the square hand
    crops: by default the one the hand generator records (`HandUNet` ``crop_margin``, the margin of the
    crops it was trained on).
    """

    model_cpu_offload_seq = "hand_text_encoder->hand_unet->hand_vae->text_encoder->controlnet->unet->vae"
    folder_kind = "two-stage pipeline"
    saved_by = "written by TwoStageHandBodyPipeline.save_pretrained"

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
        fit: str | None = None,
        crop_margin: float | None = None,
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
            "fit": fit,
        }
        self.register_to_config(**body_settings, crop_margin=hand_crop_margin(hand_unet, crop_margin))
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
        crop_margin: float | None = None,
    ) -> TwoStageHandBodyPipeline:
        """Compose a loaded hand generator and body outpainter (their modules are shared, not copied);
        `crop_margin` defaults to the one the hand generator records."""
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
            **{k: body.config[k] for k in BODY_SETTINGS},
        )

    @classmethod
    def from_runs(
        cls, hand_run: str, body_run: str, crop_margin: float | None = None, **load_kwargs
    ) -> TwoStageHandBodyPipeline:
        """Load a `train-hand` run folder and a `train-body` run folder (or any saved pipelines of the two
        kinds). `crop_margin` defaults to the one the hand model records. `load_kwargs` (e.g.
        ``torch_dtype``) go to both `from_pretrained` calls."""
        hand = HandGenerationPipeline.from_pretrained(hand_run, **load_kwargs)
        body = BodyOutpaintPipeline.from_pretrained(body_run, **load_kwargs)
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
        problems = latent_mismatches(self.hand_unet, self.hand_vae, self.vae)
        if problems:
            raise ModelMismatchError(
                "the hand generator and the body outpainter do not fit together: "
                + "; ".join(problems)
                + " (train both from the same base model)"
            )

    def check_inputs(self, **request) -> None:
        """The models fit together, and the request passes `two_stage_inputs.check_request`."""
        self.check_models()
        check_request(size_multiple=self.size_multiple, hand_crop_size=self.hand_crop_size, **request)

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
        """The stage-2 condition (1, C, H, W) in [0, 1]: `condition.request_condition` with the body
        outpainter's condition settings."""
        return request_condition(
            body_keypoints, body_format, canvas, mask, hand_keypoints, self.body_pipeline.condition_config
        )

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
        max_hands: int = DEFAULT_MAX_HANDS,
        hand_batch_size: int = DEFAULT_HAND_BATCH,
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
            max_hands / hand_batch_size: refuse an image with more than `max_hands` hands; stage 1
                draws them `hand_batch_size` at a time (one batch, the same images, up to that many).
        Returns `TwoStageOutput` (or a tuple ``(images, output)`` with ``return_dict=False``).
        """
        drawn = self.prepare(
            prompt=prompt,
            hands=hands,
            handedness=handedness,
            body_keypoints=body_keypoints,
            body_format=body_format,
            width=width,
            height=height,
            spec=spec,
            negative_prompt=negative_prompt,
            hand_prompt=hand_prompt,
            hand_negative_prompt=hand_negative_prompt,
            num_inference_steps=num_inference_steps,
            hand_num_inference_steps=hand_num_inference_steps,
            guidance_scale=guidance_scale,
            hand_guidance_scale=hand_guidance_scale,
            pose_guidance_scale=pose_guidance_scale,
            mask_threshold=mask_threshold,
            blend=blend,
            feather=feather,
            small_hands=small_hands,
            min_hand_size=min_hand_size,
            mask_fallback=mask_fallback,
            min_mask_coverage=min_mask_coverage,
            overlap_order=overlap_order,
            hand_encoding=hand_encoding,
            seed=seed,
            generator=generator,
            output_type=output_type,
            max_pixels=max_pixels,
            max_pixel_steps=max_pixel_steps,
            max_hands=max_hands,
            hand_batch_size=hand_batch_size,
        )
        self.paint_bodies(
            [drawn],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            uncond_condition=uncond_condition,
            return_masks=return_masks,
            max_pixels=max_pixels,
            max_pixel_steps=max_pixel_steps,
        )
        out = self.finish(drawn, pixel_composite, feather, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return out.images, out
        return out

    # Arguments of `__call__` that describe one request; `call_batch` takes them per request and every
    # other argument once for the whole batch.
    REQUEST_ARGUMENTS = (
        "prompt",
        "hands",
        "handedness",
        "body_keypoints",
        "body_format",
        "width",
        "height",
        "spec",
        "negative_prompt",
        "hand_prompt",
        "seed",
    )

    @torch.no_grad()
    def call_batch(
        self,
        requests: Sequence[dict],
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        controlnet_conditioning_scale: float = 1.0,
        uncond_condition: str = "same",
        pixel_composite: bool = False,
        feather: int = 3,
        output_type: str = "pil",
        return_masks: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_pixel_steps: int = DEFAULT_MAX_PIXEL_STEPS,
        **shared,
    ) -> list[TwoStageOutput]:
        """Several requests of one output size, stage 2 drawn as one batch: one `TwoStageOutput` per
        request, equal to ``self(**request, **shared)`` within float rounding.

        Each dict of `requests` holds `REQUEST_ARGUMENTS` (its pose, size, prompts and seed); the other
        `__call__` arguments are given once and apply to all. Stage 1 draws each request's hands with
        its own seed as a single call does; stage 2 starts each image from its own seed's noise and
        blends each with its own hands, in one batch through the UNet and ControlNet."""
        unknown = sorted({k for r in requests for k in r} - set(self.REQUEST_ARGUMENTS))
        if unknown:
            raise ValueError(f"per-request arguments must be among {self.REQUEST_ARGUMENTS}; got {unknown}")
        steps = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        limits = dict(max_pixels=max_pixels, max_pixel_steps=max_pixel_steps)
        drawn = [
            self.prepare(**r, **shared, **steps, **limits, feather=feather, output_type=output_type)
            for r in requests
        ]
        sizes = {d.work_size for d in drawn}
        if len(sizes) > 1:
            raise ValueError(f"a batch draws one canvas size; these requests need {sorted(sizes)}")
        self.paint_bodies(
            drawn,
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            uncond_condition=uncond_condition,
            return_masks=return_masks,
            **steps,
            **limits,
        )
        outs = [self.finish(d, pixel_composite, feather, output_type) for d in drawn]
        self.maybe_free_model_hooks()
        return outs

    def prepare(self, **request) -> Drawn:
        """One request up to stage 2 (`two_stage_request.prepare_request`, with the arguments of `__call__`
        that shape one request): its hands drawn (stage 1), pasted, and the stage-2 condition built; the
        `Drawn` state `paint_bodies` and `finish` take."""
        return prepare_request(self, **request)

    def finish(self, drawn: Drawn, pixel_composite: bool, feather: int, output_type: str) -> TwoStageOutput:
        """Decode one request's stage-2 latents, crop to its size, optionally composite the hand
        interiors in pixels; its `TwoStageOutput`."""
        t0 = time.perf_counter()
        height, width = drawn.height, drawn.width
        canvas, hand_mask = drawn.canvas[:height, :width], drawn.hand_mask[:height, :width]
        image = self.decode(drawn.latents, height, width, canvas, hand_mask, pixel_composite, feather)
        t_decode = time.perf_counter() - t0
        return request_output(drawn, image, canvas, hand_mask, t_decode, output_type)

    # ---------------------------------------------------------------- steps of the call

    def draw_hands(self, placed: Sequence[PlacedHand], **options) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 over the placed hands (`two_stage_request.draw_hands`): (N, S, S, 3) uint8 crops and
        (N, S, S) bool masks."""
        return draw_hands(self, placed, **options)

    def paint_bodies(self, drawn: Sequence[Drawn], **options) -> None:
        """Stage 2 for requests of one work size, as one batch (`two_stage_batch.paint_bodies`): each
        `Drawn` gets its final latents, its record of keep weights and kept shares, and its clock."""
        paint_bodies(self, drawn, **options)

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


__all__ = [
    "TwoStageHandBodyPipeline",
    "TwoStageOutput",
    "ModelMismatchError",
    "HandTooSmallError",
    "OVERLAP_ORDERS",
    "MASK_FALLBACKS",
    "feathered_alpha",
]
