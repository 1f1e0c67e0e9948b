"""`HandGenerationPipeline`: hand crops and their masks from a hand pose and a caption (stage 1).

>>> pipe = HandGenerationPipeline.from_pretrained("runs/hand")          # a train-hand run folder
>>> out = pipe("a hand showing a peace gesture, right hand", keypoints=kps, num_inference_steps=30, seed=0)
>>> out.images[0].save("hand.png"); out.masks_binary[0].save("hand_mask.png")

Keypoints are (21, 2) or (21, 3) ``[x, y, score]`` in crop pixels (MediaPipe order); they are rendered
into Gaussian heatmaps at latent resolution with the sigma the model was trained with. Precomputed
heatmaps (B, 21, size/8, size/8), such as a manifest's ``heatmap`` column, can be passed instead.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from manifests.geometry import render_heatmap

from ..guards import (
    DEFAULT_MAX_PIXEL_STEPS,
    DEFAULT_MAX_PIXELS,
    check_finite,
    check_image_cost,
    check_seed,
    make_generator,
)
from ..models.hand import HandUNet
from ..models.loading import CheckedFromPretrained
from ..models.schedulers import scheduler_step_kwargs
from ..models.text import encode_text

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class HandGenerationPipelineOutput(BaseOutput):
    """Per `output_type`:

    - images: "pil" list of RGB images; "np" (B, S, S, 3) float32 in [0, 1]; "pt" (B, 3, S, S) float32
      in [0, 1]; "latent" the (B, 4, S/8, S/8) latents.
    - masks: hand probability. "pil" list of mode-L images (0..255); "np" (B, S, S) float32 in [0, 1];
      "pt" (B, 1, S, S) float32; "latent" (B, 1, S/8, S/8) at latent resolution.
    - masks_binary: ``masks > mask_threshold``. "pil" mode-L images with values 0/255; "np" (B, S, S)
      bool; "pt" (B, 1, S, S) bool; "latent" at latent resolution.
    - latents: (B, 4, S/8, S/8) final denoised latents (unscaled by the VAE factor), for blending.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    masks: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    masks_binary: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    latents: torch.Tensor


def _is_count(value) -> bool:
    """An integer (Python or numpy), not a bool or a float."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def keypoints_to_heatmaps(
    keypoints, size: int, heatmap_size: int, sigma: float, num_keypoints: int = 21
) -> torch.Tensor:
    """(K, 2|3) or (B, K, 2|3) crop-pixel keypoints -> (B, K, heatmap_size, heatmap_size) float32.

    Keypoints with a score column equal to 0 are treated as absent (empty channel) and are not range
    checked; every other point must lie inside the ``size x size`` crop.
    """
    kps = np.asarray(keypoints.detach().cpu() if torch.is_tensor(keypoints) else keypoints, dtype=np.float64)
    if kps.ndim == 2:
        kps = kps[None]
    if kps.ndim != 3 or kps.shape[1] != num_keypoints or kps.shape[2] not in (2, 3):
        raise ValueError(
            f"keypoints must be ({num_keypoints}, 2|3) or (B, {num_keypoints}, 2|3) crop pixels, got shape {kps.shape}"
        )
    present = kps[..., 2] > 0 if kps.shape[2] == 3 else np.ones(kps.shape[:2], bool)
    xy = kps[..., :2]
    if not np.isfinite(xy[present]).all():
        raise ValueError("keypoints contain NaN or inf")
    outside = present & ((xy < 0) | (xy > size)).any(axis=-1)
    if outside.any():
        b, k = np.argwhere(outside)[0]
        raise ValueError(
            f"keypoint {k} of pose {b} is at {xy[b, k].tolist()}, outside the {size}x{size} crop "
            f"({int(outside.sum())} point(s) out of range); keypoints are crop pixels in [0, {size}]"
        )
    maps = [render_heatmap(p, size, heatmap_size, sigma) for p in kps]
    return torch.from_numpy(np.stack(maps))


class HandGenerationPipeline(CheckedFromPretrained, DiffusionPipeline):
    """Stage 1: denoise hand-crop latents conditioned on pose heatmaps and text; read out the mask.

    Components: `HandUNet` unet, `AutoencoderKL` vae, `CLIPTextModel` text_encoder, `CLIPTokenizer`
    tokenizer, and any diffusers scheduler (DDIM by default after training).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    folder_kind = "hand model"
    saved_by = (
        "a finished train-hand run folder, or a folder written by HandGenerationPipeline.save_pretrained"
    )

    def __init__(
        self,
        unet: HandUNet,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler,
    ):
        super().__init__()
        self.register_modules(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @property
    def default_size(self) -> int:
        return int(self.unet.config.unet_config["sample_size"]) * self.vae_scale_factor

    # ------------------------------------------------------------------------------------------------
    def check_inputs(
        self,
        *,
        prompt,
        heatmaps,
        keypoints,
        size,
        num_inference_steps,
        guidance_scale,
        pose_guidance_scale,
        negative_prompt,
        output_type,
        mask_threshold,
        generator,
        seed,
        num_images_per_prompt=1,
        max_pixels=DEFAULT_MAX_PIXELS,
        max_pixel_steps=DEFAULT_MAX_PIXEL_STEPS,
    ):
        if (heatmaps is None) == (keypoints is None):
            raise ValueError(
                "pass exactly one of `heatmaps` (B, 21, h, w) or `keypoints` (21, 2) / (B, 21, 2)"
            )
        if prompt is None or not (
            isinstance(prompt, str)
            or (isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt))
        ):
            raise ValueError(
                f"`prompt` must be a string or a non-empty list of strings, got {type(prompt).__name__}"
            )
        f = self.vae_scale_factor
        if not _is_count(size) or size < f or size % f:
            raise ValueError(f"size must be a positive multiple of {f} pixels, got {size!r}")
        if int(num_inference_steps) < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if not _is_count(num_images_per_prompt) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
        # Before anything is rendered or allocated: a huge size would otherwise fill the memory.
        check_image_cost(size, size, int(num_inference_steps), max_pixels, max_pixel_steps, what="hand crop")
        if guidance_scale < 0 or pose_guidance_scale < 0:
            raise ValueError("guidance scales must be >= 0")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; expected one of {OUTPUT_TYPES}")
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold}")
        if generator is not None and seed is not None:
            raise ValueError("pass `generator` or `seed`, not both")
        if seed is not None:
            check_seed(seed)
        if heatmaps is not None:
            k = self.unet.config.num_keypoints
            hm = heatmaps if torch.is_tensor(heatmaps) else torch.as_tensor(np.asarray(heatmaps))
            latent = size // self.vae_scale_factor
            if hm.ndim not in (3, 4) or hm.shape[-3] != k:
                raise ValueError(
                    f"heatmaps must be ({k}, h, w) or (B, {k}, h, w), got shape {tuple(hm.shape)}"
                )
            if tuple(hm.shape[-2:]) != (latent, latent):
                raise ValueError(
                    f"heatmaps are {tuple(hm.shape[-2:])} but a {size}px crop has {latent}x{latent} latents; "
                    "render them at size / 8, or pass keypoints"
                )
            if not torch.isfinite(hm).all():
                raise ValueError("heatmaps contain NaN or inf")
        if negative_prompt is not None and isinstance(negative_prompt, list) and isinstance(prompt, list):
            if len(negative_prompt) != len(prompt):
                raise ValueError(f"{len(negative_prompt)} negative prompts for {len(prompt)} prompts")

    def encode_prompt(self, prompts: list[str], device) -> torch.Tensor:
        """(B,) strings -> (B, 77, D) text embeddings."""
        return encode_text(self.tokenizer, self.text_encoder, prompts, device=device)

    def prepare_latents(self, batch: int, size: int, dtype, device, generator, latents=None) -> torch.Tensor:
        shape = (
            batch,
            self.unet.config.latent_channels,
            size // self.vae_scale_factor,
            size // self.vae_scale_factor,
        )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] = "a hand",
        heatmaps=None,
        keypoints=None,
        size: int | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        pose_guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        mask_threshold: float = 0.5,
        return_dict: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_pixel_steps: int = DEFAULT_MAX_PIXEL_STEPS,
    ):
        """Generate hand crops and masks.

        Args:
            prompt: one caption, or one per pose.
            heatmaps: (K, h, w) or (B, K, h, w) float in [0, 1] at latent resolution (size / 8).
            keypoints: (K, 2|3) or (B, K, 2|3) crop pixels in [0, size]; rendered to heatmaps.
            size: crop side in pixels (default: the model's training size).
            guidance_scale: classifier-free guidance on the text (1 disables it).
            pose_guidance_scale: extra guidance on the pose (1 disables it; >1 adds a third branch with
                neither text nor pose, as the model saw with condition dropout).
            num_images_per_prompt: samples per (pose, prompt) pair.
            generator / seed: randomness; `seed` builds a generator on the execution device.
            output_type: "pil", "np", "pt" or "latent" (see `HandGenerationPipelineOutput`).
            mask_threshold: probability above which a pixel is hand in `masks_binary`.
            max_pixels / max_pixel_steps: refuse a crop over this many pixels, or over this many
                pixels x steps (see `generation.guards.check_image_cost`).
        """
        size = self.default_size if size is None else size  # 0 is an error, not the default
        self.check_inputs(
            prompt=prompt,
            heatmaps=heatmaps,
            keypoints=keypoints,
            size=size,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            pose_guidance_scale=pose_guidance_scale,
            negative_prompt=negative_prompt,
            output_type=output_type,
            mask_threshold=mask_threshold,
            generator=generator,
            seed=seed,
            num_images_per_prompt=num_images_per_prompt,
            max_pixels=max_pixels,
            max_pixel_steps=max_pixel_steps,
        )
        device = self._execution_device
        dtype = self.unet.dtype
        heatmaps, prompts, negatives = self.batch_inputs(
            prompt, heatmaps, keypoints, negative_prompt, size, num_images_per_prompt
        )
        heatmaps = heatmaps.to(device=device, dtype=dtype)
        embeds, poses = self.guidance_branches(
            prompts, negatives, heatmaps, guidance_scale, pose_guidance_scale, device
        )

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if seed is not None:
            generator = make_generator(seed, device)
        latents = self.prepare_latents(len(prompts), size, dtype, device, generator, latents)
        latents, mask_logits = self.denoise(
            latents, embeds, poses, guidance_scale, pose_guidance_scale, generator
        )
        # A NaN model denoises to NaN, which would decode to black crops and empty masks.
        check_finite(latents, "the hand model's denoised latents", self.unet, "unet")
        check_finite(mask_logits, "the hand model's mask logits", self.unet, "unet")
        images, masks, binary = self.decode(latents, mask_logits, size, output_type, mask_threshold)

        self.maybe_free_model_hooks()
        if not return_dict:
            return images, masks, binary
        return HandGenerationPipelineOutput(images=images, masks=masks, masks_binary=binary, latents=latents)

    # ---------------------------------------------------------------- steps of the call

    def batch_inputs(
        self, prompt, heatmaps, keypoints, negative_prompt, size: int, num_images_per_prompt: int
    ) -> tuple[torch.Tensor, list[str], list[str]]:
        """Pose heatmaps (keypoints rendered at latent size), prompts and negative prompts, broadcast to
        the batch that poses and prompts agree on and repeated `num_images_per_prompt` times."""
        if keypoints is not None:
            heatmaps = keypoints_to_heatmaps(
                keypoints,
                size,
                size // self.vae_scale_factor,
                self.unet.config.heatmap_sigma,
                self.unet.config.num_keypoints,
            )
        heatmaps = heatmaps if torch.is_tensor(heatmaps) else torch.as_tensor(np.asarray(heatmaps))
        heatmaps = heatmaps[None] if heatmaps.ndim == 3 else heatmaps
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n_pose, n_prompt = heatmaps.shape[0], len(prompts)
        if n_pose != n_prompt and 1 not in (n_pose, n_prompt):
            raise ValueError(
                f"mismatched batch sizes: {n_pose} poses but {n_prompt} prompts (use 1 of either, or equal counts)"
            )
        batch = max(n_pose, n_prompt)
        heatmaps = heatmaps.expand(batch, -1, -1, -1) if n_pose == 1 else heatmaps
        prompts = prompts * batch if n_prompt == 1 else prompts
        negatives = (
            [negative_prompt or ""] * batch
            if not isinstance(negative_prompt, list)
            else list(negative_prompt)
        )
        if len(negatives) != batch:
            raise ValueError(f"{len(negatives)} negative prompts for a batch of {batch}")
        heatmaps = heatmaps.repeat_interleave(num_images_per_prompt, dim=0)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        negatives = [p for p in negatives for _ in range(num_images_per_prompt)]
        return heatmaps, prompts, negatives

    def guidance_branches(
        self, prompts, negatives, heatmaps, guidance_scale: float, pose_guidance_scale: float, device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings and poses stacked with the guidance branches: [cond] / [uncond, cond] /
        [no text + no pose, no text + pose, text + pose]."""
        dtype = heatmaps.dtype
        cond = self.encode_prompt(prompts, device).to(dtype)
        if pose_guidance_scale > 1.0:
            uncond = self.encode_prompt(negatives, device).to(dtype)
            return torch.cat([uncond, uncond, cond]), torch.cat(
                [torch.zeros_like(heatmaps), heatmaps, heatmaps]
            )
        if guidance_scale > 1.0:
            uncond = self.encode_prompt(negatives, device).to(dtype)
            return torch.cat([uncond, cond]), torch.cat([heatmaps, heatmaps])
        return cond, heatmaps

    def denoise(
        self, latents, embeds, poses, guidance_scale: float, pose_guidance_scale: float, generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The denoising loop over the scheduler's timesteps: final latents, and the mask logits of the
        fully conditioned branch at the last step. A stochastic sampler (DDPM) draws its step noise from
        the same generator, so the seed decides it."""
        branches = embeds.shape[0] // latents.shape[0]
        step_kwargs = scheduler_step_kwargs(self.scheduler, generator)
        mask_logits = None
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(torch.cat([latents] * branches), t)
            noise, mask_all = self.unet(model_in, t, embeds, poses, return_dict=False)
            chunks = noise.chunk(branches)
            if branches == 3:
                noise = (
                    chunks[0]
                    + pose_guidance_scale * (chunks[1] - chunks[0])
                    + guidance_scale * (chunks[2] - chunks[1])
                )
            elif branches == 2:
                noise = chunks[0] + guidance_scale * (chunks[1] - chunks[0])
            else:
                noise = chunks[0]
            mask_logits = mask_all.chunk(branches)[-1]
            latents = self.scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]
        return latents, mask_logits

    def decode(self, latents, mask_logits, size: int, output_type: str, mask_threshold: float):
        """Images, mask probabilities and binary masks at `size` in the `output_type` layout."""
        mask_prob = torch.sigmoid(mask_logits.float())
        if output_type == "latent":
            images, masks = latents, mask_prob
        else:
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
            check_finite(decoded, "the VAE's decoded hand pixels", self.vae, "vae")
            # Pixels leave in float32 whatever the models' precision (the documented output).
            images = self.image_processor.postprocess(decoded.float(), output_type=output_type)
            masks = F.interpolate(mask_prob, size=(size, size), mode="bilinear", align_corners=False)
            masks = masks.clamp(0, 1)
        binary = masks > mask_threshold
        masks, binary = _format_masks(masks, binary, output_type)
        return images, masks, binary


def _format_masks(masks: torch.Tensor, binary: torch.Tensor, output_type: str):
    """(B, 1, H, W) probabilities and booleans -> the `output_type` layout (see the output class)."""
    if output_type in ("pt", "latent"):
        return masks.cpu(), binary.cpu()
    prob = masks[:, 0].cpu().numpy().astype(np.float32)
    hard = binary[:, 0].cpu().numpy()
    if output_type == "np":
        return prob, hard
    to_pil = PIL.Image.fromarray
    return (
        [to_pil(np.round(p * 255).astype(np.uint8)) for p in prob],
        [to_pil(h.astype(np.uint8) * 255) for h in hard],
    )
