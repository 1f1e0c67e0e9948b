"""`BodyOutpaintPipeline`: stage 2 on its own. Body pose, hand pixels and hand mask in, a full image out.

The denoising loop lives in `BodyOutpaintPipeline.denoise`, with an `on_step_end(i, t, latents)` hook
that may replace the latents after every scheduler step. The two-stage pipeline uses that hook to
blend the known hand latents in (sequential mask expansion) without a second copy of the loop;
`__call__` also accepts diffusers' usual `callback_on_step_end`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from ..guards import DEFAULT_MAX_PIXEL_STEPS, DEFAULT_MAX_PIXELS, check_finite, check_image_cost
from ..models.body import (
    BaseKind,
    infer_base_kind,
    masked_image,
    model_input,
    predict_noise,
    repaint_mask,
    vae_scale_factor,
)
from ..models.loading import CheckedFromPretrained
from ..models.schedulers import sampling_scheduler, scheduler_step_kwargs
from ..models.text import encode_text
from .body_inputs import condition_items, output_size, per_item
from .condition import (
    ConditionConfig,
    ConditionInputs,
    build_condition,
    channel_slices,
    conditioning_channels,
)

log = logging.getLogger(__name__)

StepEndFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]

# What the unconditional branch of classifier-free guidance sees as its condition image.
UNCOND_CONDITIONS = {
    "same": lambda cond: cond,  # guidance on the text only (diffusers' ControlNet default)
    "zero": torch.zeros_like,  # guidance on text and condition (trained by condition dropout)
}


class BodyOutpaintPipeline(CheckedFromPretrained, DiffusionPipeline):
    """Paint the person and the scene around given hands, following a body pose.

    Components: `vae`, `text_encoder`, `tokenizer`, `unet` (frozen SD base, 4- or 9-channel input),
    `controlnet` (its `conditioning_channels` must match the condition config) and `scheduler`.
    The condition settings are pipeline config (saved in model_index.json) so sampling draws the
    condition exactly as training did, and so is ``fit``, how `train-body` framed its images to the
    square (``cover`` or ``contain``, `manifests.transforms`), so generation frames manifest rows at the
    scale the model learned; None when not recorded.
    """

    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"
    folder_kind = "body model"
    saved_by = "a finished train-body run folder, or a folder written by BodyOutpaintPipeline.save_pretrained"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        scheduler: KarrasDiffusionSchedulers,
        condition_channels: str = "pose,hands,mask",
        draw_hand_skeletons: bool = False,
        min_visibility: float = 0.3,
        stick_width: float = 4 / 512,
        joint_radius: float = 4 / 512,
        fit: str | None = None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
        )
        # Strings and scalars only: model_index.json reads a two-element list as a (library, class) pair.
        self.register_to_config(
            condition_channels=condition_channels,
            draw_hand_skeletons=bool(draw_hand_skeletons),
            min_visibility=float(min_visibility),
            stick_width=float(stick_width),
            joint_radius=float(joint_radius),
            fit=fit,
        )
        self.vae_scale_factor = vae_scale_factor(vae)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        want = conditioning_channels(self.condition_config)
        if controlnet.config.conditioning_channels != want:
            raise ValueError(
                f"controlnet takes {controlnet.config.conditioning_channels} condition channels but the condition "
                f"config {self.condition_config.channels} draws {want}"
            )
        self.base_kind: BaseKind = infer_base_kind(unet, vae.config.latent_channels)

    @classmethod
    def from_components(
        cls,
        components,
        controlnet: ControlNetModel,
        condition_config: ConditionConfig | None = None,
        scheduler: str = "ddim",
        unet: UNet2DConditionModel | None = None,
        fit: str | None = None,
    ) -> BodyOutpaintPipeline:
        """Assemble from `generation.models.loading.SDComponents` (training scheduler converted for sampling);
        `unet` replaces the components' base UNet (a fine-tuned one); `fit` is the training framing."""
        cfg = condition_config or ConditionConfig()
        return cls(
            vae=components.vae,
            text_encoder=components.text_encoder,
            tokenizer=components.tokenizer,
            unet=unet or components.unet,
            controlnet=controlnet,
            scheduler=sampling_scheduler(components.scheduler, scheduler),
            condition_channels=",".join(cfg.channels),
            draw_hand_skeletons=cfg.draw_hand_skeletons,
            min_visibility=cfg.min_visibility,
            stick_width=cfg.stick_width,
            joint_radius=cfg.joint_radius,
            fit=fit,
        )

    @property
    def condition_config(self) -> ConditionConfig:
        return ConditionConfig(
            channels=tuple(c for c in self.config.condition_channels.split(",") if c),
            draw_hand_skeletons=self.config.draw_hand_skeletons,
            min_visibility=self.config.min_visibility,
            stick_width=self.config.stick_width,
            joint_radius=self.config.joint_radius,
        )

    # ---------------------------------------------------------------- building blocks (reused by stage 1+2)

    def encode_prompt(self, prompt: list[str], device) -> torch.Tensor:
        """Prompts -> CLIP text embeddings (B, 77, D)."""
        return encode_text(self.tokenizer, self.text_encoder, prompt, device)

    def prepare_condition(self, inputs: Sequence[ConditionInputs]) -> torch.Tensor:
        """Draw one condition image per item -> (B, C, H, W) float32 in [0, 1]."""
        return torch.stack([build_condition(inp, self.condition_config) for inp in inputs])

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor, generator=None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled VAE latents (B, 4, H/f, W/f), from the posterior mode.

        The mode (not a sample) keeps the known hand latents deterministic for blending.
        """
        latents = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist.mode()
        return latents * self.vae.config.scaling_factor

    def prepare_inpaint_inputs(
        self, hand_pixels: torch.Tensor, hand_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For an inpainting base: (repaint mask (B, 1, h, w), masked-image latents (B, 4, h, w))."""
        latents = self.encode_image(masked_image(hand_pixels, hand_mask))
        return repaint_mask(hand_mask, latents.shape[-2:]).to(latents), latents

    def prepare_latents(
        self, batch: int, height: int, width: int, dtype, device, generator, latents=None
    ) -> torch.Tensor:
        shape = (
            batch,
            self.vae.config.latent_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        return latents.to(device, dtype) * self.scheduler.init_noise_sigma

    def denoise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        prompt_embeds: torch.Tensor,
        condition: torch.Tensor,
        guidance_scale: float = 7.5,
        negative_prompt_embeds: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        uncond_condition: str = "same",
        inpaint: tuple[torch.Tensor, torch.Tensor] | None = None,
        on_step_end: StepEndFn | None = None,
        extra_step_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """The denoising loop. Returns the final latents (B, 4, h, w).

        - prompt_embeds / negative_prompt_embeds: (B, 77, D); the negatives are used when
          guidance_scale > 1.
        - condition: (B, C, H, W) in [0, 1] at pixel resolution.
        - inpaint: (repaint mask, masked-image latents) for an inpainting base, else None.
        - on_step_end(i, t, latents) -> latents is called after scheduler step i; the latents it
          receives are at `scheduler.timesteps[i + 1]` (clean after the last step). What it returns
          continues the loop.
        """
        do_cfg = guidance_scale > 1.0
        if do_cfg:
            if negative_prompt_embeds is None:
                raise ValueError("guidance_scale > 1 needs negative_prompt_embeds")
            if uncond_condition not in UNCOND_CONDITIONS:
                raise ValueError(
                    f"unknown uncond_condition {uncond_condition!r}; expected one of {sorted(UNCOND_CONDITIONS)}"
                )
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
            condition = torch.cat([UNCOND_CONDITIONS[uncond_condition](condition), condition])
            if inpaint is not None:
                inpaint = tuple(torch.cat([x, x]) for x in inpaint)
        extra_step_kwargs = extra_step_kwargs or {}
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                sample = torch.cat([latents] * 2) if do_cfg else latents
                sample = self.scheduler.scale_model_input(sample, t)
                sample = model_input(self.base_kind, sample, inpaint)
                noise_pred = predict_noise(
                    self.unet, self.controlnet, sample, t, prompt_embeds, condition, conditioning_scale
                )
                if do_cfg:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[
                    0
                ]
                if on_step_end is not None:
                    latents = on_step_end(i, t, latents)
                bar.update()
        return latents

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, output_type: str = "pil"):
        if output_type == "latent":
            return latents
        image = self.vae.decode(
            latents.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False
        )[0]
        check_finite(image, "the VAE's decoded pixels", self.vae, "vae")
        # Pixels leave in float32 whatever the models' precision (the documented output).
        return self.image_processor.postprocess(image.float(), output_type=output_type)

    # ---------------------------------------------------------------- inputs

    def check_inputs(
        self,
        *,
        prompt,
        prompt_embeds,
        condition_items,
        condition,
        height,
        width,
        guidance_scale,
        negative_prompt_embeds,
        num_inference_steps=1,
        max_pixels=DEFAULT_MAX_PIXELS,
        max_pixel_steps=DEFAULT_MAX_PIXEL_STEPS,
    ):
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("give exactly one of `prompt` and `prompt_embeds`")
        if prompt is not None and not isinstance(prompt, (str, list)):
            raise TypeError(f"`prompt` must be a str or a list of str, got {type(prompt).__name__}")
        if guidance_scale > 1 and prompt_embeds is not None and negative_prompt_embeds is None:
            raise ValueError(
                "with `prompt_embeds` and guidance_scale > 1, also give `negative_prompt_embeds`"
            )
        if condition is None and condition_items is None:
            raise ValueError("give the body pose, hand image and hand mask (or a precomputed `condition`)")
        for name, side in (("height", height), ("width", width)):
            if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or side < 1:
                raise ValueError(f"{name} must be a positive integer, got {side!r}")
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        check_image_cost(width, height, int(num_inference_steps), max_pixels, max_pixel_steps)
        if condition is not None:
            want = self.controlnet.config.conditioning_channels
            if condition.ndim != 4 or condition.shape[1] != want:
                raise ValueError(f"`condition` must be (B, {want}, H, W), got {tuple(condition.shape)}")
            if (condition.shape[-2], condition.shape[-1]) != (height, width):
                raise ValueError(
                    f"`condition` is {condition.shape[-1]}x{condition.shape[-2]} but the output is {width}x{height}"
                )
        for inp in condition_items or []:
            mask, image = np.asarray(inp.hand_mask), np.asarray(inp.hand_image)
            if mask.shape[:2] != (height, width) or image.shape[:2] != (height, width):
                raise ValueError(
                    f"hand image {image.shape[1]}x{image.shape[0]} and hand mask {mask.shape[1]}x{mask.shape[0]} "
                    f"(WxH) must both be the output size {width}x{height}"
                )
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple}, got {width}x{height}")

    # ---------------------------------------------------------------- call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        body_keypoints=None,
        hand_image=None,
        hand_mask=None,
        hand_keypoints=None,
        body_format: str = "mediapipe33",
        condition: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        controlnet_conditioning_scale: float = 1.0,
        uncond_condition: str = "same",
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        on_step_end: StepEndFn | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_pixel_steps: int = DEFAULT_MAX_PIXEL_STEPS,
    ):
        """Generate full images.

        - body_keypoints: (33, 3) MediaPipe or (18, 3) OpenPose (`body_format`) in output pixels, or a
          list with one per prompt.
        - hand_image: (H, W, 3) uint8 RGB (numpy or PIL) holding the hands at their places; only the
          pixels under `hand_mask` are used. hand_mask: (H, W) bool/uint8 or PIL "L". Their size is
          the output size. Either may be a list with one per prompt.
        - hand_keypoints: optional list of (21, >=2) arrays, drawn only if the pipeline's condition
          config draws hand skeletons.
        - condition: instead of the above, a precomputed (B, C, H, W) condition in [0, 1].
        - uncond_condition: ``same`` (guide on text) or ``zero`` (guide on text and condition).
        - on_step_end(i, t, latents) -> latents: see `denoise`.
        - max_pixels / max_pixel_steps: refuse an output over this many pixels, or over this many
          pixels x steps (see `generation.guards.check_image_cost`).

        Returns `ImagePipelineOutput(images=...)`: PIL images, (B, H, W, 3) float numpy in [0, 1],
        (B, 3, H, W) torch in [0, 1] ("pt"), or the latents ("latent").
        """
        if prompt_embeds is not None:
            batch = prompt_embeds.shape[0]
        else:
            batch = 1 if isinstance(prompt, str) else len(prompt or [])
        height, width = output_size(condition, hand_mask, height, width)
        items = condition_items(batch, body_keypoints, hand_image, hand_mask, hand_keypoints, body_format)
        self.check_inputs(
            prompt=prompt,
            prompt_embeds=prompt_embeds,
            condition_items=items,
            condition=condition,
            height=height,
            width=width,
            guidance_scale=guidance_scale,
            negative_prompt_embeds=negative_prompt_embeds,
            num_inference_steps=num_inference_steps,
            max_pixels=max_pixels,
            max_pixel_steps=max_pixel_steps,
        )
        device = self._execution_device
        prompt_embeds, negative_prompt_embeds = self.prompt_embeddings(
            prompt, prompt_embeds, negative_prompt, negative_prompt_embeds, batch, guidance_scale, device
        )
        condition, inpaint = self.condition_inputs(condition, items, batch, device)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.prepare_latents(batch, height, width, prompt_embeds.dtype, device, generator, latents)
        step_fn = on_step_end  # the diffusers-style callback is folded into the step hook
        if callback_on_step_end is not None:
            step_fn = self._wrap_callback(
                on_step_end,
                callback_on_step_end,
                callback_on_step_end_tensor_inputs,
                prompt_embeds,
                negative_prompt_embeds,
            )
        latents = self.denoise(
            latents,
            self.scheduler.timesteps,
            prompt_embeds,
            condition,
            guidance_scale=guidance_scale,
            negative_prompt_embeds=negative_prompt_embeds,
            conditioning_scale=controlnet_conditioning_scale,
            uncond_condition=uncond_condition,
            inpaint=inpaint,
            on_step_end=step_fn,
            extra_step_kwargs=scheduler_step_kwargs(self.scheduler, generator, eta),
        )
        # A NaN model denoises to NaN, which would decode to a black image.
        check_finite(latents, "the body model's denoised latents", self._denoisers(), "unet and controlnet")

        images = self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # ---------------------------------------------------------------- steps of the call

    def prompt_embeddings(
        self,
        prompt,
        prompt_embeds,
        negative_prompt,
        negative_prompt_embeds,
        batch: int,
        guidance_scale,
        device,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prompt's text embeddings (and the negative prompt's, for classifier-free guidance), on
        `device` in the UNet's dtype; given embeddings are used as they are."""
        dtype = self.unet.dtype
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds = self.encode_prompt(prompts, device)
        if guidance_scale > 1 and negative_prompt_embeds is None:
            negatives = per_item(negative_prompt or "", batch, "negative_prompt")
            negative_prompt_embeds = self.encode_prompt([str(n) for n in negatives], device)
        prompt_embeds = prompt_embeds.to(device, dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device, dtype)
        return prompt_embeds, negative_prompt_embeds

    def condition_inputs(self, condition, items, batch: int, device) -> tuple[torch.Tensor, tuple | None]:
        """The (B, C, H, W) condition image (drawn from `items` unless given) and, for an inpainting base,
        its (repaint mask, masked-image latents)."""
        if condition is None:
            condition = self.prepare_condition(items)
        if condition.shape[0] == 1 and batch > 1:
            condition = condition.expand(batch, -1, -1, -1)
        if condition.shape[0] != batch:
            raise ValueError(f"`condition` has batch {condition.shape[0]} for {batch} prompts")
        condition = condition.to(device, self.unet.dtype)
        if not self.base_kind.takes_masked_image:
            return condition, None
        slices = channel_slices(self.condition_config)
        if "hands" not in slices or "mask" not in slices:
            raise ValueError("an inpainting base needs the 'hands' and 'mask' condition channels")
        return condition, self.prepare_inpaint_inputs(
            condition[:, slices["hands"]], condition[:, slices["mask"]]
        )

    def _denoisers(self) -> torch.nn.ModuleDict:
        """The two networks of the denoising loop, as one module for the weight diagnosis."""
        return torch.nn.ModuleDict({"unet": self.unet, "controlnet": self.controlnet})

    def _wrap_callback(
        self, inner, callback, tensor_inputs, prompt_embeds, negative_prompt_embeds
    ) -> StepEndFn:
        unknown = [k for k in tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {unknown} not in {self._callback_tensor_inputs}"
            )
        available = {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_prompt_embeds}

        def step_fn(i, t, latents):
            if inner is not None:
                latents = inner(i, t, latents)
            kwargs = {k: (latents if k == "latents" else available[k]) for k in tensor_inputs}
            out = callback(self, i, t, kwargs) or {}
            return out.get("latents", latents)

        return step_fn
