"""Stage-2 training task: fine-tune the body outpainter's ControlNet on full images from a manifest.

Each sample is one `images` row through `manifests.datasets.BodyDataset` (the full image at the
training resolution by an aspect-preserving resize plus crop or pad, with the hands' mask and the
body and hand keypoints moved by the same transform). The condition image is drawn from that
sample's own pose and hands (`generation.pipelines.condition`), so the model learns to paint the image back
around its hands.

Per micro-batch (all randomness from the loop's generator):

1. latents: VAE posterior sample of the image x scaling factor;
2. condition dropout for classifier-free guidance: the caption becomes "" with probability
   ``text_dropout`` and the whole condition image becomes zeros with probability
   ``condition_dropout``, independently;
3. noise and a uniform timestep; for an inpainting base the repaint mask (everything but the hands)
   and the latents of the hand-only image join the input;
4. loss = noise MSE against the scheduler's target, weighted by 1 + ``border_weight`` in a band of
   ``border_width`` latent pixels around the hand borders (where stage 1 and stage 2 meet).

Images without a usable body pose are excluded by a pyarrow filter and counted in config.json
(``missing_body=skip``), or stop the run before any model is loaded (``refuse``).
"""

from __future__ import annotations

import itertools
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from manifests.datasets import BodyDataset, MixtureDataset
from manifests.draw import contact_sheet
from manifests.errors import ManifestError
from manifests.reader import open_manifest

from ..guards import make_generator, offset_seed
from ..models.body import BASE_KINDS, build_body_model, masked_image, model_input, predict_noise, repaint_mask
from ..models.checks import check_controlnet_folder, check_sd_folder, check_unet_inputs
from ..models.hub import find_model
from ..models.loading import SDComponents, build_components, freeze, record_sample_size
from ..models.schedulers import noise_schedule_overrides
from ..models.text import encode_text
from ..pipelines.blending import dilate, erode
from ..pipelines.body import BodyOutpaintPipeline
from ..pipelines.condition import ConditionConfig, build_condition, condition_tiles, inputs_from_body_sample
from .body_config import BodyTrainConfig
from .config import latent_cache_root
from .errors import DataCheckError
from .latent_cache import LatentCache, cached_moments, ensure_caches
from .loop import TrainResult, train, weight_dtype
from .losses import diffusion_target
from .manifest_reads import count_missing_source_captions, log_caption_fallbacks
from .run_folder import read_source_run
from .task import TrainTask

logger = logging.getLogger(__name__)

# MediaPipe landmarks behind the 18 OpenPose points (the neck is drawn from both shoulders).
_OPENPOSE_SOURCES = [0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]


def condition_config_of(config: BodyTrainConfig) -> ConditionConfig:
    return ConditionConfig(
        channels=tuple(config.condition_channels),
        draw_hand_skeletons=config.draw_hand_skeletons,
        min_visibility=config.min_visibility,
    )


# ---------------------------------------------------------------------------------------------------
# Loss pieces


def hand_border_weight(
    hand_mask: torch.Tensor, latent_hw: tuple[int, int], width: int, weight: float
) -> torch.Tensor:
    """Per-latent-pixel loss weight: 1 plus `weight` in a band around the hand borders.

    `hand_mask` (B, 1, H, W) in [0, 1] is area-averaged to the (h, w) latent grid; the band is its
    dilation minus its erosion by `width` latent pixels (with `width` 0, the latent pixels the border
    cuts through). Returns (B, 1, h, w) float32 in [1, 1 + weight].
    """
    soft = F.adaptive_avg_pool2d(hand_mask.float(), latent_hw)
    band = dilate(soft, width) - erode(soft, width) if width > 0 else 4.0 * soft * (1.0 - soft)
    return 1.0 + weight * band.clamp(0.0, 1.0)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum(w * (pred - target)^2) / sum(w), `weight` broadcast over channels; the MSE when w is constant."""
    weight = weight.expand_as(pred)
    return (weight * (pred.float() - target.float()) ** 2).sum() / weight.sum()


def body_pose_usable(column: pa.ChunkedArray | pa.Array, min_visibility: float) -> np.ndarray:
    """images.body_keypoints -> bool per row: a pose is present and at least one skeleton point is drawn."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    present = arr.is_valid().to_numpy(zero_copy_only=False)
    usable = present.copy()
    if present.any():
        values = arr.filter(arr.is_valid()).flatten().flatten().to_numpy(zero_copy_only=False)
        kps = values.reshape(-1, 33, 3)
        usable[present] = (kps[:, _OPENPOSE_SOURCES, 2] >= min_visibility).any(axis=1)
    return usable


# ---------------------------------------------------------------------------------------------------
# Samples


def make_sample(item: dict, condition_config: ConditionConfig) -> dict:
    """One `BodyDataset` sample -> a training sample with its condition image drawn:

    {"pixels": (3, S, S) float32 in [-1, 1], "condition": (C, S, S) float32 in [0, 1],
    "hand_mask": (1, S, S) float32 in {0, 1}, "caption": str, "image_id": str, "flipped": bool}.
    """
    inputs = inputs_from_body_sample(item)
    return {
        "pixels": item["pixel_values"],
        "condition": build_condition(inputs, condition_config),
        "hand_mask": item["hands_mask"],
        "caption": item["caption"],
        "image_id": item["image_id"],
        "flipped": item["flipped"],
    }


def cache_keys(image_ids, flipped) -> list[str]:
    """Latent-cache keys of a batch: the image id, with ``#mirrored`` for a mirrored sample."""
    return [i + "#mirrored" if bool(f) else i for i, f in zip(image_ids, flipped)]


class BodyTrainingDataset(BodyDataset):
    """`BodyDataset` whose samples carry their drawn condition image (see `make_sample`).

    A subclass rather than a wrapper, so the loop's `ManifestDataLoader` resumes it exactly without
    re-reading the consumed rows, and the drawing runs in the DataLoader workers.
    """

    def __init__(self, manifest, condition_config: ConditionConfig, **kwargs):
        super().__init__(manifest, **kwargs)
        self.condition_config = condition_config

    def make_sample(self, row, unit) -> dict:
        return make_sample(super().make_sample(row, unit), self.condition_config)


class BodyDenoiser(torch.nn.Module):
    """Base UNet + ControlNet as one trained module, for runs that also train the base UNet."""

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
# The task


class BodyTask(TrainTask):
    name = "body"
    oom_hints = (
        "--resolution (now the training side)",
        "--cache-latents (frees the VAE encoder's activations)",
    )
    pipeline_class = BodyOutpaintPipeline

    def __init__(self, config: BodyTrainConfig):
        super().__init__(config)
        self.condition_config = condition_config_of(config)
        self.facts: dict = {}
        self._exclude: list[list[str]] = []  # per manifest: image ids without a usable body pose
        self.source_run: dict | None = None
        self._checked = False
        self._validation: list[dict] | None = None
        self.caches: list[LatentCache] = []

    # ---- data ------------------------------------------------------------------------------------
    def _check_manifest(self, url: str) -> tuple[int, list[str], int]:
        """(images with status ok in the split, ids of those without a usable body pose, how many of the
        usable ones have no source caption) of one manifest; refuses per ``missing_body``."""
        c = self.config
        try:
            manifest = open_manifest(url)
            columns = ["image_id", "body_keypoints", "source_caption"]
            table = manifest.read("images", columns, split=c.split, status="ok")
        except (ManifestError, ValueError, OSError) as exc:
            raise DataCheckError(f"{url}: cannot serve body training: {exc}") from exc
        usable = body_pose_usable(table.column("body_keypoints"), c.min_visibility)
        ids = table.column("image_id").to_pylist()
        missing = [i for i, ok in zip(ids, usable) if not ok]
        where = f"{url} (images with status ok" + (f", split {c.split})" if c.split else ")")
        if missing and c.missing_body == "refuse":
            raise DataCheckError(
                f"{where}: {len(missing)} of {len(ids)} images have no usable body pose (none, or every "
                f"landmark below visibility {c.min_visibility}), e.g. {missing[:5]}; "
                "use --missing-body skip to train without them"
            )
        if not usable.any():
            raise DataCheckError(
                f"{where}: none of {len(ids)} images has a usable body pose; nothing to train on"
            )
        if missing:
            logger.warning(
                "%s: skipping %d of %d images without a usable body pose, e.g. %s",
                url,
                len(missing),
                len(ids),
                missing[:3],
            )
        return (
            len(ids),
            missing,
            count_missing_source_captions(table.filter(pa.array(usable)).column("source_caption")),
        )

    def check_data(self) -> None:
        """Count the usable images (a drawable body pose) of every manifest before any model is loaded;
        refuse per setting."""
        c = self.config
        if c.init_from:
            self.source_run = read_source_run(c.init_from, self.name)
        found = [self._check_manifest(url) for url in c.manifest]
        self._exclude = [missing for _, missing, _ in found]
        self._usable = [n - len(missing) for n, missing, _ in found]
        self._checked = True
        images = sum(n for n, _, _ in found)
        skipped = sum(len(m) for _, m, _ in found)
        self.facts.update(
            images=images,
            usable_images=images - skipped,
            skipped_no_body_pose=skipped,
            resolution=c.resolved_resolution,
        )
        if c.cache_latents:
            self.facts["latent_cache"] = latent_cache_root(c)
        if c.caption != "generated":
            self.facts["no_source_caption"] = sum(k for _, _, k in found)
            log_caption_fallbacks("train-body", c.caption, self.facts["no_source_caption"], images - skipped)
        if len(found) > 1:
            self.facts["sources"] = [
                {"manifest": url, "images": n, "skipped_no_body_pose": len(m)}
                | ({"no_source_caption": k} if c.caption != "generated" else {})
                for url, (n, m, k) in zip(c.manifest, found)
            ]
            self.facts["manifest_weights"] = list(c.manifest_weights) if c.manifest_weights else None
        if c.init_from:
            self.facts["init_from"] = os.path.abspath(c.init_from)

    def _source_dataset(
        self,
        source: int,
        rank: int | None,
        world_size: int | None,
        shuffle: bool = True,
        hflip: float | None = None,
    ) -> BodyTrainingDataset:
        """Source `source`'s training samples; `hflip` overrides the setting (validation and the latent
        cache pick the orientation themselves)."""
        c = self.config
        keep = ds.field("body_keypoints").is_valid()
        if self._exclude[source]:
            keep = keep & ~ds.field("image_id").isin(self._exclude[source])
        return BodyTrainingDataset(
            c.manifest[source],
            self.condition_config,
            resolution=c.resolved_resolution,
            fit=c.fit,
            crop=c.crop,
            split=c.split,
            status="ok",
            filter=keep,
            shuffle=shuffle,
            seed=c.seed,
            rank=rank,
            world_size=world_size,
            shuffle_window=c.shuffle_window,
            caption=c.caption,
            hflip=c.hflip if hflip is None else hflip,
        )

    def _dataset(self, rank: int | None, world_size: int | None, shuffle: bool = True):
        """The training data: one manifest's dataset, or several mixed (`MixtureDataset`)."""
        parts = [self._source_dataset(i, rank, world_size, shuffle) for i in range(len(self.config.manifest))]
        if len(parts) == 1:
            return parts[0]
        return MixtureDataset(parts, self.config.manifest_weights, seed=self.config.seed)

    def dataset(self, accelerator):
        if not self._checked:
            self.check_data()
        if self.config.cache_latents:
            self._prepare_cache(accelerator)
        return self._dataset(accelerator.process_index, accelerator.num_processes)

    def _prepare_cache(self, accelerator) -> None:
        """Build (main process) or open the latent cache of every usable image at its training framing,
        one per manifest. The pixels are still read: the hands condition channels are cut from them."""
        c = self.config
        keys = [
            {
                "manifest": manifest.url,
                "manifest_created_at": manifest.info.get("created_at"),
                "skipped": sorted(skipped),
                "resolution": c.resolved_resolution,
                "fit": c.fit,
                "crop": c.crop,
                "split": c.split,
                "mirrored_too": c.hflip > 0,
            }
            for manifest, skipped in zip(map(open_manifest, c.manifest), self._exclude)
        ]

        size = max(c.batch_size, 8)
        orientations = (0.0, 1.0) if c.hflip > 0 else (0.0,)

        def batches(i: int):
            for hflip in orientations:
                data = self._source_dataset(i, 0, 1, shuffle=False, hflip=hflip)
                loader = torch.utils.data.DataLoader(data, batch_size=size, num_workers=c.num_workers)
                for b in loader:
                    yield cache_keys(b["image_id"], b["flipped"]), b["pixels"]

        def counted(i: int):
            return batches(i), len(orientations) * -(-self._usable[i] // size)

        self.caches = ensure_caches(accelerator, latent_cache_root(c), keys, self.vae, counted)

    def validation_samples(self) -> list[dict]:
        """The first manifest's first `num_validation_images` usable images of the split, in manifest
        order, fixed across runs."""
        if self._validation is None:
            data = self._source_dataset(0, rank=0, world_size=1, shuffle=False, hflip=0.0)
            self._validation = list(itertools.islice(iter(data), self.config.num_validation_images))
        return self._validation

    def describe(self) -> dict:
        return dict(self.facts)

    # ---- models ----------------------------------------------------------------------------------
    def check_models(self) -> None:
        """The base folder and ``--init-controlnet`` (Hub ids found in the cache) and their configs: the
        UNet's input channels for ``--base-kind``, an 8x VAE, a ControlNet of the UNet's architecture.
        Nothing to check when building from nothing or from an ``--init-from`` run."""
        c = self.config
        self.base = self.controlnet_folder = None
        unet = None
        if c.init_from:
            return
        if c.pretrained:
            self.base = find_model(c.pretrained, "Stable Diffusion folder", "--pretrained", c.allow_download)
            facts = check_sd_folder(self.base)
            latent = facts.latent_channels
            want = {"standard": latent, "inpainting": 2 * latent + 1}[c.base_kind]
            check_unet_inputs(facts, want, "--pretrained", f"--base-kind {c.base_kind}")
            unet = facts.unet
        if c.init_controlnet:
            self.controlnet_folder = find_model(
                c.init_controlnet, "ControlNet folder", "--init-controlnet", c.allow_download
            )
            check_controlnet_folder(self.controlnet_folder, unet)

    def _build(self):
        """(components, controlnet), deterministic in the seed (a tiny inpainting UNet is rebuilt), or
        those of the finished run ``--init-from`` names."""
        c = self.config
        if c.init_from:
            return self._build_from_run()
        comps = build_components(
            c.preset,
            pretrained=getattr(self, "base", None) or c.pretrained,
            resolution=c.resolved_resolution,
            seed=c.seed,
            prediction_type=c.prediction_type,
            zero_terminal_snr=c.zero_terminal_snr,
        )
        torch.manual_seed(c.seed)
        controlnet = build_body_model(
            comps,
            c.base_kind,
            self.condition_config,
            init_controlnet=getattr(self, "controlnet_folder", None) or c.init_controlnet,
            condition_embedding_init=c.condition_embedding_init,
        )
        return comps, controlnet

    def _build_from_run(self):
        """The saved pipeline of the ``--init-from`` run: its base UNet, VAE and text encoder, and its
        ControlNet to train on. Its condition image and base kind must be this run's."""
        c = self.config
        pipe = BodyOutpaintPipeline.from_pretrained(c.init_from)
        theirs, ours = pipe.condition_config, self.condition_config
        saved = {k: getattr(theirs, k) for k in ("channels", "draw_hand_skeletons", "min_visibility")}
        wanted = {k: getattr(ours, k) for k in saved}
        saved["base_kind"], wanted["base_kind"] = pipe.base_kind.name, c.base_kind
        differ = {k: v for k, v in saved.items() if v != wanted[k]}
        if differ:
            raise DataCheckError(
                f"--init-from {c.init_from}: its model was trained with {differ}, this run asks for "
                f"{ {k: wanted[k] for k in differ} }; pass the run's settings"
            )
        overrides = noise_schedule_overrides(c.prediction_type, c.zero_terminal_snr)
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config, **overrides)
        comps = SDComponents(
            pipe.unet,
            pipe.vae,
            pipe.text_encoder,
            pipe.tokenizer,
            scheduler,
            source=os.path.abspath(c.init_from),
        )
        logger.info("train-body: starting from the weights of %s", c.init_from)
        return comps, pipe.controlnet

    def build(self, accelerator) -> None:
        c = self.config
        comps, controlnet = self._build()
        # The base folder's sample size is its own training side; the saved pipeline draws at this run's.
        record_sample_size(comps.unet, c.resolved_resolution, comps.vae_scale_factor)
        dtype = weight_dtype(accelerator)
        self.dtype = dtype
        self.vae = freeze(comps.vae, accelerator.device, dtype)
        self.text_encoder = freeze(comps.text_encoder, accelerator.device, dtype)
        self.tokenizer, self.scheduler = comps.tokenizer, comps.scheduler
        self.components = comps
        controlnet.requires_grad_(True)
        if c.train_base_unet:
            comps.unet.requires_grad_(True)
            self.unet, self.model = comps.unet, BodyDenoiser(comps.unet, controlnet)
        else:
            self.unet, self.model = freeze(comps.unet, accelerator.device, dtype), controlnet
        self.kind = BASE_KINDS[c.base_kind]
        self.facts.update(
            components=comps.source,
            base_kind=c.base_kind,
            prediction_type=self.scheduler.config.prediction_type,
            conditioning_channels=controlnet.config.conditioning_channels,
        )

    def trainable(self) -> torch.nn.Module:
        return self.model

    def _parts(self, model):
        """(unet, controlnet) of the trained module, wrapped (DDP) or not."""
        inner = getattr(model, "module", model)
        if isinstance(inner, BodyDenoiser):
            return inner.unet, inner.controlnet
        return self.unet, inner

    # ---- loss ------------------------------------------------------------------------------------
    def prepare_batch(self, batch: dict, device) -> dict:
        if self.caches:
            ids = cache_keys(batch["image_id"], batch["flipped"])
            batch = {**batch, "moments": cached_moments(self.caches, ids, batch.get("source"))}
        return super().prepare_batch(batch, device)

    def _latents(
        self, pixels: torch.Tensor, generator: torch.Generator | None, moments: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled float32 latents: a posterior sample, or the mode without a
        generator; from the cached posterior `moments` (B, 2C, h, w) when given (the same draw)."""
        with torch.no_grad():
            if moments is not None:
                z = LatentCache.sample(moments, generator)
            else:
                dist = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist
                z = dist.sample(generator=generator) if generator is not None else dist.mode()
        return z.float() * self.vae.config.scaling_factor

    def loss(self, model, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        c = self.config
        pixels, condition, hand_mask = batch["pixels"], batch["condition"], batch["hand_mask"]
        device, bsz, gdev = pixels.device, pixels.shape[0], generator.device

        latents = self._latents(pixels, generator, batch.get("moments"))
        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        t = torch.randint(
            0, self.scheduler.config.num_train_timesteps, (bsz,), generator=generator, device=gdev
        )
        t = t.to(device)
        noisy = self.scheduler.add_noise(latents, noise, t)

        drop_text = (torch.rand(bsz, generator=generator, device=gdev) < c.text_dropout).tolist()
        keep_cond = (torch.rand(bsz, generator=generator, device=gdev) >= c.condition_dropout).to(device)
        captions = ["" if drop else cap for cap, drop in zip(batch["caption"], drop_text)]
        text = encode_text(self.tokenizer, self.text_encoder, captions, device)
        condition = condition * keep_cond.to(condition.dtype)[:, None, None, None]

        inpaint = None
        if self.kind.takes_masked_image:
            hands = self._latents(masked_image((pixels + 1.0) / 2.0, hand_mask), None)
            inpaint = (repaint_mask(hand_mask, latents.shape[-2:]), hands)
        sample = model_input(self.kind, noisy, inpaint)

        # Frozen parts may run in half precision while the ControlNet trains in float32.
        with torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            if isinstance(getattr(model, "module", model), BodyDenoiser):
                pred = model(sample, t, text, condition)
            else:
                pred = predict_noise(self.unet, model, sample, t, text, condition)

        target = diffusion_target(self.scheduler, latents, noise, t)
        weight = hand_border_weight(hand_mask, latents.shape[-2:], c.border_width, c.border_weight)
        return {
            "loss": weighted_mse(pred, target, weight),
            "mse": F.mse_loss(pred.float(), target.float()).detach(),
            "condition_kept": keep_cond.float().mean(),
        }

    # ---- outputs ---------------------------------------------------------------------------------
    def _pipeline(self, model) -> BodyOutpaintPipeline:
        unet, controlnet = self._parts(model)
        pipe = BodyOutpaintPipeline.from_components(
            self.components,
            controlnet,
            self.condition_config,
            self.config.sampler,
            unet=unet,
            fit=self.config.fit,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def validate(self, model, step: int, path: str) -> dict:
        """One row per validation image: condition groups | generated | target."""
        c = self.config
        pipe = self._pipeline(model)
        device = self.vae.device
        tiles, captions = [], []
        for i, s in enumerate(self.validation_samples()):
            out = pipe(
                s["caption"],
                condition=s["condition"][None].to(device),
                num_inference_steps=c.validation_steps,
                guidance_scale=c.validation_guidance_scale,
                output_type="np",
                generator=make_generator(offset_seed(c.seed, i)),
            ).images[0]
            target = (
                ((s["pixels"].permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
            )
            tiles += [
                *condition_tiles(s["condition"], self.condition_config),
                (out * 255).round().astype(np.uint8),
                target,
            ]
            captions += [*self.condition_config.channels, f"step {step}", s["image_id"]]
        sheet = contact_sheet(
            tiles,
            columns=len(self.condition_config.channels) + 2,
            tile=min(256, max(64, c.resolved_resolution)),
            captions=captions,
        )
        Image.fromarray(sheet).save(path)
        return {}

    def save_final(self, model, out_dir: str) -> None:
        """Save a `BodyOutpaintPipeline` into the run folder, with full-precision base parts."""
        unet, controlnet = self._parts(model)
        comps = self.components
        if self.dtype != torch.float32:
            # The frozen parts were cast to the training dtype: save freshly built / loaded ones instead.
            comps, _ = self._build()
            if not self.config.train_base_unet:
                unet = comps.unet
        pipe = BodyOutpaintPipeline.from_components(
            comps, controlnet, self.condition_config, self.config.sampler, unet=unet, fit=self.config.fit
        )
        if self.dtype != torch.float32:
            pipe.to(torch_dtype=torch.float32)
        pipe.save_pretrained(out_dir)


def train_body(config: BodyTrainConfig) -> TrainResult:
    """Train the stage-2 body outpainter; the run folder ends up loadable by `BodyOutpaintPipeline`."""
    return train(BodyTask(config), config)
