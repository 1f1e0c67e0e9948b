"""Stage 2 training: fine-tune the body outpainter's ControlNet on full images from a manifest.

Each sample is one `images` row seen through `manifests.datasets.BodyDataset` (the full image at the
training resolution, aspect-preserving resize plus crop or pad, with the hands' mask and the body
and hand keypoints moved by the same transform). The condition image is drawn from that sample's
own pose and hands (`generation.condition`), so the model learns to paint the image back around its
hands. The loss is the noise MSE (epsilon or v, following the scheduler), optionally weighted up in
a band around the hand borders where stage 1 and stage 2 meet.

Images without a body pose are skipped (and counted in config.json) or refused, by
`missing_body`.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from manifests.draw import contact_sheet
from manifests.errors import ManifestError
from manifests.reader import open_manifest

from ..blending import dilate, erode
from ..body_model import (
    BASE_KINDS,
    build_body_model,
    masked_image,
    model_input,
    predict_noise,
    repaint_mask,
    set_trainable,
)
from ..components import PRESETS, build_components
from ..condition import (
    CONDITION_GROUPS,
    ConditionConfig,
    ConditionInputs,
    NoBodyPoseError,
    build_condition,
    channel_slices,
    condition_tiles,
)
from ..pipeline_body import BodyOutpaintPipeline
from .config import TrainConfig, setting
from .errors import DataCheckError
from .loop import weight_dtype
from .losses import diffusion_target
from .task import TrainTask

logger = logging.getLogger(__name__)

MISSING_BODY = ("skip", "refuse")
PRESET_RESOLUTION = {"tiny": 64, "sd": 512}


@dataclass
class BodyTrainConfig(TrainConfig):
    """Settings of `handfirst-gen train-body` (the shared `TrainConfig` fields plus these)."""

    out: str = setting(
        "runs/body", "run folder: checkpoints, metrics.jsonl, config.json, validation grids, final pipeline"
    )
    learning_rate: float = setting(
        1e-5, "peak learning rate (ControlNet's usual 1e-5 for SD; the tiny preset likes 1e-3)"
    )
    manifest: str = setting("", "manifest root (local path or fsspec URL) written by handfirst-prep")
    split: str | None = setting("train", "images split to train on (None: all)")
    preset: str = setting(
        "tiny", f"where the base model comes from: {', '.join(PRESETS)}", choices=tuple(PRESETS)
    )
    pretrained: str | None = setting(
        None,
        "local diffusers Stable Diffusion folder (preset sd); an SD-inpainting folder for --base-kind inpainting",
    )
    resolution: int | None = setting(
        None, f"training side in pixels, a multiple of 16 (default: {PRESET_RESOLUTION})"
    )
    base_kind: str = setting(
        "standard",
        "base UNet: standard (4-channel SD) or inpainting (9-channel SD-inpainting)",
        choices=tuple(BASE_KINDS),
    )
    train_base_unet: bool = setting(
        False, "also train the base UNet (default: frozen, only the ControlNet learns)"
    )
    condition_channels: tuple[str, ...] = setting(
        ("pose", "hands", "mask"), f"condition channel groups, in order, from {list(CONDITION_GROUPS)}"
    )
    draw_hand_skeletons: bool = setting(
        False, "also draw the 21-point hand skeletons into the pose channels (ablation)"
    )
    min_visibility: float = setting(0.3, "body landmarks below this visibility are not drawn")
    missing_body: str = setting(
        "skip",
        "images without a usable body pose: skip (counted) or refuse (stop with the list)",
        choices=MISSING_BODY,
    )
    fit_mode: str = setting(
        "cover",
        "resize to the square: cover (crop the overflow) or contain (pad)",
        choices=("cover", "contain"),
    )
    crop: str = setting(
        "hands",
        "with cover: centre the crop on the hands (hands) or on the image (center)",
        choices=("hands", "center"),
    )
    border_weight: float = setting(
        1.0, "extra loss weight in the band around the hand borders (0: plain MSE)"
    )
    border_width: int = setting(
        1, "half-width of that band, in latent pixels (1 latent pixel = 8 image pixels for SD)"
    )
    text_dropout: float = setting(
        0.1, "probability of training a sample with the empty caption (classifier-free guidance)"
    )
    condition_dropout: float = setting(
        0.05, "probability of training a sample with an all-zero condition image"
    )
    validation_count: int = setting(4, "validation images per grid (the first N usable images of the split)")
    validation_steps: int = setting(20, "sampling steps for validation images")
    validation_guidance: float = setting(3.0, "guidance scale for validation images")

    def validate(self) -> None:
        super().validate()
        res = self.resolved_resolution
        checks = [
            (
                bool(self.manifest),
                "no manifest given: pass --manifest PATH (a root written by handfirst-prep)",
            ),
            (res % 16 == 0 and res > 0, f"resolution must be a positive multiple of 16, got {res}"),
            (self.missing_body in MISSING_BODY, f"missing_body must be one of {MISSING_BODY}"),
            (
                0 <= self.text_dropout <= 1 and 0 <= self.condition_dropout <= 1,
                "dropout probabilities must be in [0, 1]",
            ),
            (
                self.border_weight >= 0 and self.border_width >= 0,
                "border_weight and border_width must be >= 0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.condition_config()  # raises on unknown channel groups

    @property
    def resolved_resolution(self) -> int:
        return int(self.resolution or PRESET_RESOLUTION.get(self.preset, 512))

    def condition_config(self) -> ConditionConfig:
        return ConditionConfig(
            channels=tuple(self.condition_channels),
            draw_hand_skeletons=self.draw_hand_skeletons,
            min_visibility=self.min_visibility,
        )


# ---------------------------------------------------------------------------------------------------
# Loss pieces


def hand_border_weight(
    hand_mask: torch.Tensor, latent_hw: tuple[int, int], width: int, weight: float
) -> torch.Tensor:
    """Per-latent-pixel loss weight: 1 everywhere plus `weight` in a band of half-width `width` around
    the hand borders. `hand_mask` (B, 1, H, W) in [0, 1] -> (B, 1, h, w) in [1, 1 + weight].

    The mask is area-averaged to the latent grid first, so a latent pixel the border cuts through is
    in the band even when `width` is 0.
    """
    soft = F.adaptive_avg_pool2d(hand_mask.float(), latent_hw)
    band = dilate(soft, width) - erode(soft, width)
    if width == 0:
        band = 4 * soft * (1 - soft)  # only the cut pixels; 1 at half coverage
    return 1.0 + weight * band.clamp(0, 1)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean of the squared error; `weight` broadcasts over channels. Equals the MSE when weight is 1."""
    weight = weight.expand_as(pred)
    return (weight * (pred.float() - target.float()) ** 2).sum() / weight.sum()


class BodyDenoiser(torch.nn.Module):
    """UNet + ControlNet as one module, for runs that also train the base UNet."""

    def __init__(self, unet, controlnet):
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet

    def forward(self, sample, timestep, encoder_hidden_states, condition):
        return predict_noise(self.unet, self.controlnet, sample, timestep, encoder_hidden_states, condition)

    def enable_gradient_checkpointing(self):
        self.unet.enable_gradient_checkpointing()
        self.controlnet.enable_gradient_checkpointing()


# ---------------------------------------------------------------------------------------------------
# Samples


def make_sample(item: dict, condition_config: ConditionConfig) -> dict:
    """One `BodyDataset` sample -> one training sample with its condition image drawn.

    Returns {"pixels": (3, S, S) float32 in [-1, 1], "condition": (C, S, S) float32 in [0, 1],
    "hand_mask": (1, S, S) float32 {0, 1}, "caption": str, "image_id": str}.
    """
    pixels = item["pixel_values"]
    # The dataset's uint8 -> [-1, 1] map is exactly invertible, so the hands keep their pixel values.
    image = ((pixels.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    mask = item["hands_mask"][0].numpy() > 0.5
    valid = np.asarray(item["hand_valid"], bool)
    hands = [k.numpy() for k, ok in zip(item["hand_keypoints"], valid) if ok]
    body = item["body_keypoints"].numpy() if item["has_body"] else None
    inputs = ConditionInputs(body, image, mask, hands, "mediapipe33", item["image_id"])
    return {
        "pixels": pixels,
        "condition": build_condition(inputs, condition_config),
        "hand_mask": item["hands_mask"],
        "caption": item["caption"],
        "image_id": item["image_id"],
    }


class BodySamples(torch.utils.data.IterableDataset):
    """A `BodyDataset` stream mapped through `make_sample` (in the DataLoader workers)."""

    def __init__(self, dataset, condition_config: ConditionConfig):
        super().__init__()
        self.dataset = dataset
        self.condition_config = condition_config

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        for item in self.dataset:
            yield make_sample(item, self.condition_config)


def body_pose_usable(column: pa.ChunkedArray, min_visibility: float) -> np.ndarray:
    """images.body_keypoints column -> bool per row: a pose is present and some landmark is drawn."""
    arr = column.combine_chunks()
    present = arr.is_valid().to_numpy(zero_copy_only=False)
    usable = present.copy()
    if present.any():
        values = arr.filter(arr.is_valid()).flatten().flatten().to_numpy(zero_copy_only=False)
        kps = values.reshape(-1, 33, 3)
        # The 18 OpenPose points come from these MediaPipe landmarks (the neck from both shoulders).
        drawn = (kps[:, _OPENPOSE_SOURCES, 2] >= min_visibility).any(axis=1)
        usable[present] = drawn
    return usable


_OPENPOSE_SOURCES = [0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]


# ---------------------------------------------------------------------------------------------------
# The task


class BodyTask(TrainTask):
    name = "body"
    oom_hints = ("--resolution", "--gradient-checkpointing", "--mixed-precision bf16")

    def __init__(self, config: BodyTrainConfig):
        super().__init__(config)
        self.condition_config = config.condition_config()
        self.stats: dict = {}
        self.components = None
        self.controlnet = None
        self.weight_dtype = torch.float32
        self._manifest = None
        self._exclude: list[str] = []
        self._validation: list[dict] | None = None

    # -- data --------------------------------------------------------------------------------------
    def check_data(self) -> None:
        """Count usable images (with a drawable body pose) before any model is loaded; refuse per setting.

        The skipped images are excluded by a pyarrow filter, so the stream never meets them.
        """
        c = self.config
        try:
            manifest = open_manifest(c.manifest)
            table = manifest.read("images", ["image_id", "body_keypoints"], split=c.split, status="ok")
        except (ManifestError, ValueError, OSError) as exc:
            raise DataCheckError(f"manifest {c.manifest!r} cannot serve body training: {exc}") from exc
        usable = body_pose_usable(table.column("body_keypoints"), c.min_visibility)
        ids = table.column("image_id").to_pylist()
        missing = [i for i, ok in zip(ids, usable) if not ok]
        self.stats = {"images": len(ids), "usable": int(usable.sum()), "skipped_no_body_pose": len(missing)}
        where = f"{c.manifest!r} (split {c.split}, status ok)"
        if missing and c.missing_body == "refuse":
            raise DataCheckError(
                f"{len(missing)} of {len(ids)} images in {where} have no usable body pose, e.g. {missing[:5]}; "
                "skip them with --missing-body skip"
            )
        if missing:
            logger.warning(
                "skipping %d of %d images without a usable body pose, e.g. %s",
                len(missing),
                len(ids),
                missing[:3],
            )
        if not usable.any():
            raise DataCheckError(f"no usable images in {where}: {len(ids)} images, none with a body pose")
        self._manifest = manifest
        self._exclude = missing

    def _body_dataset(self, shuffle: bool = True, rank: int | None = None, world_size: int | None = None):
        from manifests.datasets import BodyDataset

        c = self.config
        keep = ds.field("body_keypoints").is_valid()
        if self._exclude:
            keep = keep & ~ds.field("image_id").isin(self._exclude)
        return BodyDataset(
            self._manifest, resolution=c.resolved_resolution, fit=c.fit_mode, crop=c.crop, split=c.split,
            status="ok", filter=keep, shuffle=shuffle, seed=c.seed, rank=rank, world_size=world_size,
        )  # fmt: skip

    def dataset(self, accelerator):
        if self._manifest is None:
            self.check_data()
        body = self._body_dataset(rank=accelerator.process_index, world_size=accelerator.num_processes)
        return BodySamples(body, self.condition_config)

    def validation_samples(self) -> list[dict]:
        """The first `validation_count` usable images of the split, in manifest order (fixed across runs)."""
        if self._validation is None:
            stream = BodySamples(
                self._body_dataset(shuffle=False, rank=0, world_size=1), self.condition_config
            )
            self._validation = list(itertools.islice(iter(stream), self.config.validation_count))
        return self._validation

    def describe(self) -> dict:
        return {**self.stats, "base": self.config.pretrained or self.config.preset}

    # -- model -------------------------------------------------------------------------------------
    def _build_components(self):
        c = self.config
        comps = build_components(
            c.preset, resolution=c.resolved_resolution, pretrained=c.pretrained, seed=c.seed
        )
        torch.manual_seed(c.seed)  # a tiny inpainting base is rebuilt; same seed, same weights
        controlnet = build_body_model(comps, c.base_kind, self.condition_config)
        return comps, controlnet

    def build(self, accelerator) -> None:
        c = self.config
        self.components, self.controlnet = self._build_components()
        comps = self.components
        self.weight_dtype = weight_dtype(accelerator)
        set_trainable(
            comps.unet, self.controlnet, comps.vae, comps.text_encoder, train_base_unet=c.train_base_unet
        )
        # Frozen parts run in the mixed-precision dtype; trained weights stay float32.
        for module in [comps.vae, comps.text_encoder] + ([] if c.train_base_unet else [comps.unet]):
            module.to(accelerator.device)
            if self.weight_dtype != torch.float32:
                module.to(dtype=self.weight_dtype)
        self._trainable = BodyDenoiser(comps.unet, self.controlnet) if c.train_base_unet else self.controlnet

    def trainable(self) -> torch.nn.Module:
        return self._trainable

    def _parts(self, model):
        """(unet, controlnet) of the trained module, wrapped (DDP) or not."""
        inner = getattr(model, "module", model)
        if isinstance(inner, BodyDenoiser):
            return inner.unet, inner.controlnet
        return self.components.unet, inner

    # -- loss --------------------------------------------------------------------------------------
    def _encode_text(self, captions: list[str], device) -> torch.Tensor:
        tok = self.components.tokenizer
        ids = tok(
            captions,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            return self.components.text_encoder(ids.input_ids.to(device))[0]

    def _encode_image(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latents, float32; sampled with `generator`, else the mode."""
        vae = self.components.vae
        with torch.no_grad():
            dist = vae.encode(pixels.to(self.weight_dtype)).latent_dist
            latents = dist.sample(generator=generator) if generator is not None else dist.mode()
        return latents.float() * vae.config.scaling_factor

    def loss(self, model, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Noise MSE weighted up around the hand borders. Terms: loss (weighted), mse (plain)."""
        c, comps = self.config, self.components
        pixels, condition, hand_mask = batch["pixels"], batch["condition"], batch["hand_mask"]
        device, bsz, gdev = pixels.device, pixels.shape[0], generator.device

        latents = self._encode_image(pixels, generator)
        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        steps = comps.scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (bsz,), generator=generator, device=gdev).to(device)
        noisy = comps.scheduler.add_noise(latents, noise, t)

        # Classifier-free guidance: drop the caption and / or the whole condition image per sample.
        drop_text = (torch.rand(bsz, generator=generator, device=gdev) < c.text_dropout).tolist()
        keep_cond = (torch.rand(bsz, generator=generator, device=gdev) >= c.condition_dropout).to(device)
        text = self._encode_text(["" if d else cap for cap, d in zip(batch["caption"], drop_text)], device)
        condition = condition * keep_cond.to(condition.dtype)[:, None, None, None]

        kind = BASE_KINDS[c.base_kind]
        inpaint = None
        if kind.takes_masked_image:
            masked = self._encode_image(masked_image((pixels + 1.0) / 2.0, hand_mask), None)
            inpaint = (repaint_mask(hand_mask, latents.shape[-2:]), masked)
        sample = model_input(kind, noisy, inpaint)

        # The frozen UNet may be in half precision while the ControlNet trains in float32.
        autocast = torch.autocast(
            device.type, dtype=self.weight_dtype, enabled=self.weight_dtype != torch.float32
        )
        with autocast:
            if isinstance(getattr(model, "module", model), BodyDenoiser):
                pred = model(sample, t, text, condition)
            else:
                pred = predict_noise(self.components.unet, model, sample, t, text, condition)

        target = diffusion_target(comps.scheduler, latents, noise, t)
        weight = hand_border_weight(hand_mask, latents.shape[-2:], c.border_width, c.border_weight)
        return {
            "loss": weighted_mse(pred, target, weight),
            "mse": F.mse_loss(pred.float(), target.float()).detach(),
            "condition_kept": keep_cond.float().mean(),
        }

    # -- outputs -----------------------------------------------------------------------------------
    def _pipeline(self, model) -> BodyOutpaintPipeline:
        unet, controlnet = self._parts(model)
        pipe = BodyOutpaintPipeline.from_components(
            self.components, controlnet, self.condition_config, unet=unet
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def validate(self, model, step: int, path: str) -> dict:
        """Grid per validation image: pose | hands | mask | generated | target."""
        c = self.config
        samples = self.validation_samples()
        pipe = self._pipeline(model)
        device = next(getattr(model, "module", model).parameters()).device
        tiles, captions = [], []
        # Frozen parts may be in half precision while the ControlNet trains in float32.
        autocast = torch.autocast(
            device.type, dtype=self.weight_dtype, enabled=self.weight_dtype != torch.float32
        )
        for i, s in enumerate(samples):
            with autocast:
                out = pipe(
                    s["caption"],
                    condition=s["condition"][None].to(device),
                    num_inference_steps=c.validation_steps,
                    guidance_scale=c.validation_guidance,
                    generator=torch.Generator(device="cpu").manual_seed(c.seed + i),
                    output_type="np",
                ).images[0]
            target = (
                ((s["pixels"].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
            )
            row = [
                *condition_tiles(s["condition"], self.condition_config),
                (out * 255).round().astype(np.uint8),
                target,
            ]
            tiles += row
            captions += [*channel_slices(self.condition_config), f"step {step}", s["image_id"]]
        columns = len(self.condition_config.channels) + 2
        sheet = contact_sheet(
            tiles, columns=columns, tile=min(256, max(64, c.resolved_resolution)), captions=captions
        )
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        Image.fromarray(sheet).save(path)
        return {}

    def save_final(self, model, out_dir: str) -> None:
        """Save a `BodyOutpaintPipeline` into `out_dir`, base parts at full precision."""
        unet, controlnet = self._parts(model)
        comps = self.components
        if self.weight_dtype != torch.float32:
            # The frozen parts were cast to the training dtype; save pristine ones instead.
            comps, _ = self._build_components()
            if not self.config.train_base_unet:
                unet = comps.unet
        pipe = BodyOutpaintPipeline.from_components(comps, controlnet, self.condition_config, unet=unet)
        pipe.to(torch.float32)
        pipe.save_pretrained(out_dir)


__all__ = [
    "BodyDenoiser",
    "BodySamples",
    "BodyTask",
    "BodyTrainConfig",
    "NoBodyPoseError",
    "hand_border_weight",
    "make_sample",
    "weighted_mse",
]
