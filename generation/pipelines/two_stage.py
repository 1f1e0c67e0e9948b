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
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from manifests.geometry import (
    CropBox,
)
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
from .blending import BlendConfig, mask_to_latent
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
        limits = {"max_pixels": max_pixels, "max_pixel_steps": max_pixel_steps}

        # Stage 1: a crop box per hand, the hands drawn `hand_batch_size` at a time, masks that miss their hand replaced.
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
            **limits,
        )
        mask_sources = fix_masks(placed, hand_masks, mask_fallback, min_mask_coverage)
        t_stage1 = time.perf_counter() - t0

        # The hands pasted into the (work-size) canvas, and the stage-2 condition drawn from it.
        canvas, hand_mask, paste_order = paste_hands(
            placed, hand_images, hand_masks, (work_h, work_w), overlap_order
        )
        condition = self.build_condition(
            body_keypoints, body_format, canvas, hand_mask, [p.keypoints for p in placed]
        )

        # Stage 2, blending after every scheduler step (through the body pipeline's step hook).
        t0 = time.perf_counter()
        record: list | None = [] if return_masks else None
        clock = {"blend": 0.0}
        latents = self.paint_body(
            prompt or "",
            condition,
            canvas,
            hand_mask,
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
            keep_masks=torch.stack(record) if record and record[0] is not None else None,
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

    def paint_body(
        self,
        prompt: str,
        condition: torch.Tensor,
        canvas: np.ndarray,
        hand_mask: np.ndarray,
        boxes: Sequence[CropBox],
        *,
        blend: BlendConfig,
        hand_encoding: str,
        num_inference_steps: int,
        generator,
        record: list | None,
        clock: dict,
        **body_kwargs,
    ) -> torch.Tensor:
        """Stage 2 on the work canvas: its final latents (1, C, h, w). The known hand latents (the hands'
        `boxes` in paste order, encoded per `hand_encoding`) are blended in after every step unless blending
        is off or no hand was pasted; `record` collects each step's keep-mask (None when not blending)."""
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
            hand_latents = encode_hands(self.body_pipeline, canvas, hand_mask, windows, margin=blend.d0 + 1)
            mask_latent = mask_to_latent(torch.from_numpy(hand_mask)[None, None].float(), latent_hw)
            hook = blend_hook(
                self.body_pipeline.scheduler,
                hand_latents,
                mask_latent.to(self._execution_device),
                noise,
                blend,
                num_inference_steps,
                record,
                clock,
            )
        elif record is not None:
            record.extend([None] * num_inference_steps)
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


__all__ = [
    "TwoStageHandBodyPipeline",
    "TwoStageOutput",
    "ModelMismatchError",
    "HandTooSmallError",
    "OVERLAP_ORDERS",
    "MASK_FALLBACKS",
    "feathered_alpha",
]
