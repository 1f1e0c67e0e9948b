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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from manifests.pose import BODY_FORMATS, keypoint_array
from manifests.schema import NUM_HAND_KEYPOINTS

from ..guards import (
    DEFAULT_HAND_BATCH,
    DEFAULT_MAX_HANDS,
    DEFAULT_MAX_PIXEL_STEPS,
    DEFAULT_MAX_PIXELS,
    make_generator,
    offset_seed,
)
from ..models.body import vae_scale_factor
from ..models.hand import HandUNet
from ..models.loading import CheckedFromPretrained
from .blending import BlendConfig, KeepSchedule, upsample
from .body import BodyOutpaintPipeline
from .condition import CONDITION_GROUPS, ConditionInputs, build_condition
from .hand import HandGenerationPipeline, keypoints_to_heatmaps
from .hand_latents import blend_hook, encode_hands
from .placing import (
    MASK_FALLBACKS,
    OVERLAP_ORDERS,
    HandTooSmallError,
    PlacedHand,
    feathered_alpha,
    fix_masks,
    paste_hands,
    place_hands,
)
from .two_stage_inputs import (
    TwoStageOutput,
    as_blend_config,
    check_request,
    format_images,
    hand_prompts,
    resolve_spec,
)

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Drawn:
    """One request between the stages: what `prepare` made (hands, canvas, condition) and what
    `paint_bodies` adds (its final latents, keep weights and kept shares, blend clock). `labels` (work
    size, int32) says which pasted hand owns each pixel (its position in `placed`; -1: none)."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    work_size: tuple[int, int]
    generator: torch.Generator
    blend: BlendConfig
    hand_encoding: str
    placed: list
    skipped: list
    hand_images: np.ndarray
    hand_masks: np.ndarray
    mask_sources: list
    canvas: np.ndarray
    hand_mask: np.ndarray
    labels: np.ndarray
    paste_order: list
    condition: torch.Tensor
    timings: dict
    latents: torch.Tensor | None = None
    record: dict | None = None
    clock: dict = field(default_factory=lambda: {"blend": 0.0})


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
        crop_margin = hand_unet.config.get("crop_margin") if crop_margin is None else crop_margin
        if crop_margin is None:
            raise ValueError(
                "the hand generator records no crop_margin (the margin of the hand crops it was trained on): "
                "pass crop_margin (--crop-margin), the --crop-margin of its training manifest, or retrain it"
            )
        if not 0.0 <= crop_margin <= 4.0:
            raise ValueError(f"crop_margin must be in [0, 4], got {crop_margin}")
        self.register_to_config(**body_settings, crop_margin=float(crop_margin))
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
            **{
                k: body.config[k]
                for k in (
                    "condition_channels",
                    "draw_hand_skeletons",
                    "min_visibility",
                    "stick_width",
                    "joint_radius",
                    "fit",
                )
            },
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

    def prepare(
        self,
        prompt=None,
        hands=None,
        handedness=None,
        body_keypoints=None,
        body_format: str = "mediapipe33",
        width=None,
        height=None,
        spec=None,
        negative_prompt=None,
        hand_prompt=None,
        hand_negative_prompt=None,
        num_inference_steps: int = 30,
        hand_num_inference_steps=None,
        guidance_scale: float = 7.5,
        hand_guidance_scale=None,
        pose_guidance_scale: float = 1.0,
        mask_threshold: float = 0.5,
        blend=None,
        feather: int = 3,
        small_hands: str = "skip",
        min_hand_size: float = 16.0,
        mask_fallback: str = "skeleton",
        min_mask_coverage: float = 0.5,
        overlap_order: str = "larger_on_top",
        hand_encoding: str = "windows",
        seed=None,
        generator=None,
        output_type: str = "pil",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_pixel_steps: int = DEFAULT_MAX_PIXEL_STEPS,
        max_hands: int = DEFAULT_MAX_HANDS,
        hand_batch_size: int = DEFAULT_HAND_BATCH,
    ) -> _Drawn:
        """One request up to stage 2: inputs checked, its hands drawn (stage 1), pasted, and the stage-2
        condition built; the `_Drawn` state `paint_bodies` and `finish` take."""
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
            max_hands=max_hands,
            hand_batch_size=hand_batch_size,
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

        # Stage 1: a crop box per hand, the hands drawn `hand_batch_size` at a time, masks that miss their
        # hand replaced.
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
            batch_size=hand_batch_size,
            max_pixels=max_pixels,
            max_pixel_steps=max_pixel_steps,
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
        return _Drawn(
            prompt=prompt or "",
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            work_size=(work_h, work_w),
            generator=body_generator,
            blend=blend,
            hand_encoding=hand_encoding,
            placed=placed,
            skipped=skipped,
            hand_images=hand_images,
            hand_masks=hand_masks,
            mask_sources=mask_sources,
            canvas=canvas,
            hand_mask=hand_mask,
            labels=labels,
            paste_order=paste_order,
            condition=condition,
            timings={"start": t_start, "stage1": t_stage1},
        )

    def finish(self, drawn: _Drawn, pixel_composite: bool, feather: int, output_type: str) -> TwoStageOutput:
        """Decode one request's stage-2 latents, crop to its size, optionally composite the hand
        interiors in pixels; its `TwoStageOutput`."""
        t0 = time.perf_counter()
        height, width = drawn.height, drawn.width
        canvas, hand_mask = drawn.canvas[:height, :width], drawn.hand_mask[:height, :width]
        image = self.decode(drawn.latents, height, width, canvas, hand_mask, pixel_composite, feather)
        t_decode = time.perf_counter() - t0
        images = format_images(image, output_type)
        record = drawn.record
        keeps = record["keep"] if record and record["keep"] and record["keep"][0] is not None else None
        return TwoStageOutput(
            images=images,
            hand_images=list(drawn.hand_images),
            hand_masks=list(drawn.hand_masks),
            hand_canvas=canvas,
            hand_mask=hand_mask,
            hand_boxes=[p.box for p in drawn.placed],
            hand_indices=[p.index for p in drawn.placed],
            paste_order=drawn.paste_order,
            skipped_hands=drawn.skipped,
            mask_sources=drawn.mask_sources,
            keep_masks=torch.stack(keeps) if keeps else None,
            kept_shares=np.stack(record["shares"]).astype(np.float32) if keeps else None,
            keep_weight=upsample(keeps[-1], drawn.work_size)[:height, :width] if keeps else None,
            latents=drawn.latents,
            timings={
                "stage1": drawn.timings["stage1"],
                "stage2": drawn.timings["stage2"],
                "blend": drawn.clock["blend"],
                "decode": t_decode,
                "total": time.perf_counter() - drawn.timings["start"],
            },
        )

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
        batch_size: int = DEFAULT_HAND_BATCH,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 over the placed hands, `batch_size` at a time (up to that many, the images of one
        batch): (N, S, S, 3) uint8 crops and (N, S, S) bool masks."""
        crop_size = self.hand_crop_size
        images = [np.zeros((0, crop_size, crop_size, 3), np.uint8)]
        masks = [np.zeros((0, crop_size, crop_size), bool)]
        for start in range(0, len(placed), batch_size):
            chunk = placed[start : start + batch_size]
            heatmaps = keypoints_to_heatmaps(
                np.stack([p.crop_keypoints for p in chunk]),
                crop_size,
                crop_size // self.hand_pipeline.vae_scale_factor,
                self.hand_unet.config.heatmap_sigma,
                self.hand_unet.config.num_keypoints,
            )
            stage1 = self.hand_pipeline(
                [p.prompt for p in chunk],
                heatmaps=heatmaps,
                size=crop_size,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                pose_guidance_scale=pose_guidance_scale,
                negative_prompt=[negative_prompt or ""] * len(chunk),
                generator=generator,
                output_type="np",
                mask_threshold=mask_threshold,
                max_pixels=max_pixels,
                max_pixel_steps=max_pixel_steps,
            )
            images.append((np.clip(stage1.images, 0, 1) * 255).round().astype(np.uint8))
            masks.append(np.asarray(stage1.masks_binary, bool))
        return np.concatenate(images), np.concatenate(masks)

    def paint_bodies(
        self,
        drawn: Sequence[_Drawn],
        *,
        num_inference_steps: int,
        return_masks: bool = False,
        **body_kwargs,
    ) -> None:
        """Stage 2 for requests of one work size, as one batch; each `_Drawn` gets its final latents
        (1, C, h, w), its record (``record``: each step's keep weights under "keep", None when not
        blending, and each hand's kept share under "shares") and its clock.

        Each request starts from its own generator's noise and, unless blending is off or it pasted no
        hand, has its known hand latents (its hands' boxes in paste order, encoded per its
        `hand_encoding`) blended into its own slice of the batch after every step, with keep weights
        built from its own hands (`labels`, which pasted hand owns each pixel)."""
        t0 = time.perf_counter()
        work_h, work_w = drawn[0].work_size
        latent_hw = (work_h // self.vae_scale_factor, work_w // self.vae_scale_factor)
        device = self._execution_device
        hooks, noises = [], []
        for d in drawn:
            noise = randn_tensor(
                (1, self.vae.config.latent_channels, *latent_hw),
                generator=d.generator,
                device=device,
                dtype=self.unet.dtype,
            )
            noises.append(noise)
            d.record = {"keep": [], "shares": []} if return_masks else None
            d.clock = {"blend": 0.0}
            boxes = [{p.index: p.box for p in d.placed}[i] for i in d.paste_order]
            hook = None
            if boxes and d.hand_mask.any() and d.blend.mode != "none":
                windows = boxes if d.hand_encoding == "windows" else None
                schedule = KeepSchedule(
                    d.labels, d.blend, num_inference_steps, latent_hw, num_hands=len(boxes)
                )
                # The windows must hold every latent pixel a keep-mask touches: the hands grown by d0.
                grow = (
                    d.blend.d0 * float(schedule.regions.sizes.max()) if d.blend.mode == "sequential" else 0.0
                )
                margin = 1 + math.ceil(grow / self.vae_scale_factor)
                hand_latents = encode_hands(self.body_pipeline, d.canvas, d.hand_mask, windows, margin=margin)
                hook = blend_hook(
                    self.body_pipeline.scheduler, hand_latents, schedule, noise, d.record, d.clock
                )
            elif d.record is not None:
                d.record["keep"].extend([None] * num_inference_steps)
            hooks.append(hook)

        def on_step_end(i: int, t, latents: torch.Tensor) -> torch.Tensor:
            parts = [
                hook(i, t, latents[k : k + 1]) if hook is not None else latents[k : k + 1]
                for k, hook in enumerate(hooks)
            ]
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        single = len(drawn) == 1
        negatives = [d.negative_prompt or "" for d in drawn]
        latents = self.body_pipeline(
            drawn[0].prompt if single else [d.prompt for d in drawn],
            condition=torch.cat([d.condition for d in drawn]),
            height=work_h,
            width=work_w,
            num_inference_steps=num_inference_steps,
            negative_prompt=drawn[0].negative_prompt if single else negatives,
            generator=drawn[0].generator if single else [d.generator for d in drawn],
            latents=torch.cat(noises),
            output_type="latent",
            on_step_end=None if all(h is None for h in hooks) else on_step_end,
            **body_kwargs,
        ).images
        seconds = time.perf_counter() - t0
        for k, d in enumerate(drawn):
            d.latents = latents[k : k + 1]
            d.timings["stage2"] = seconds / len(drawn)

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
