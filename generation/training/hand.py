"""Stage-1 training task: the multi-task hand generator, trained from a manifest's hands table.

Per micro-batch (all randomness from the loop's generator):

1. latents: VAE posterior sample of the crop (or of its cached posterior) x scaling factor;
2. condition dropout for classifier-free guidance: the caption becomes "" with probability
   ``text_dropout``, the heatmaps become zeros with probability ``pose_dropout`` (independently, so
   both are dropped together with the product of the two);
3. noise and a uniform timestep; the model sees the noisy latents plus heatmaps and the caption;
4. loss = noise MSE against the scheduler's target (epsilon / v / sample) + ``mask_loss_weight`` x
   mask loss (BCE with logits, or BCE + Dice) against the hand mask area-downsampled to latent size.
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import numpy as np
import pyarrow.dataset as ds
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from manifests.datasets import HandCropDataset, MixtureDataset, choose_caption
from manifests.draw import contact_sheet, draw_hand, overlay_mask
from manifests.geometry import DEFAULT_SIGMA, keypoint_coverage, rescale_sigma
from manifests.reader import open_manifest

from ..models.checks import check_sd_folder, check_unet_inputs
from ..models.hand import HandUNet
from ..models.hub import find_model
from ..models.loading import build_components, freeze
from ..models.schedulers import noise_schedule_overrides, sampling_scheduler
from ..models.text import encode_text
from ..pipelines.hand import HandGenerationPipeline
from .config import PRESET_RESOLUTION, latent_cache_root
from .errors import DataCheckError
from .hand_config import HandTrainConfig
from .latent_cache import LatentCache, cached_moments, ensure_caches
from .loop import TrainResult, train, weight_dtype
from .losses import diffusion_target, mask_loss
from .manifest_reads import count_missing_source_captions, first_rows, log_caption_fallbacks, null_counts
from .run_folder import read_source_run
from .task import TrainTask

logger = logging.getLogger(__name__)

# The binary columns of `HandCropDataset.columns` (what the task reads), which must not be null.
BINARY_COLUMNS = ("crop", "mask", "heatmap")


def prep_crop_margin() -> float:
    """The crop margin prep declares by default, for a manifest that records none."""
    from prep.config import PrepConfig

    return float(PrepConfig.__dataclass_fields__["crop_margin"].default)


class HandTask(TrainTask):
    name = "hand"
    oom_hints = ("--cache-latents (frees the VAE encoder's activations)", "--resolution")
    pipeline_class = HandGenerationPipeline

    def __init__(self, config: HandTrainConfig):
        super().__init__(config)
        self.facts: dict = {}
        # Per manifest, in --manifest order: the filter that skips rows with null binary columns.
        self.extra_filters: list = [None] * len(config.manifest)
        self.caches: list[LatentCache] = []
        self.source_run: dict | None = None

    # ---- data ------------------------------------------------------------------------------------
    def _filter_kwargs(self) -> dict:
        c = self.config
        return {
            "split": c.split,
            "label": list(c.labels) if c.labels else None,
            "min_hand_size": c.min_hand_size,
        }

    def _filter_expression(self, source: int = 0):
        expr = None
        if self.config.min_mask_score is not None:
            expr = ds.field("mask_score") >= float(self.config.min_mask_score)
        extra = self.extra_filters[source]
        if extra is not None:
            expr = extra if expr is None else expr & extra
        return expr

    def _check_manifest(self, source: int) -> dict:
        """Check one manifest's hands table (columns, nulls, the filter); returns what training needs of it."""
        c = self.config
        manifest = open_manifest(c.manifest[source])
        if "hands" not in manifest.tables:
            raise DataCheckError(
                f"{manifest.url}: no hands table; train-hand needs a manifest with hand crops"
            )
        hands = manifest.hands
        missing = [col for col in HandCropDataset.columns if col not in hands.schema.names]
        if missing:
            raise DataCheckError(
                f"{hands.url}: the hands table lacks column(s) {missing} that train-hand needs"
            )
        total = hands.num_rows
        nulls = null_counts(hands, BINARY_COLUMNS)
        full = [col for col, n in nulls.items() if total and n >= total]
        if full:
            raise DataCheckError(
                f"{hands.url}: column(s) {full} are null in every one of the {total} rows (crops/masks/heatmaps not written by prep?)"
            )
        partial = {col: n for col, n in nulls.items() if n}
        if partial:
            logger.warning("%s: rows with null %s are skipped", hands.url, partial)
            valid = [ds.field(col).is_valid() for col in partial]
            extra = valid[0]
            for v in valid[1:]:
                extra = extra & v
            self.extra_filters[source] = extra
        light = [
            "hand_id",
            "crop_size",
            "heatmap_shape",
            "heatmap_sigma",
            "caption",
            "source_caption",
            "split",
        ]
        rows = manifest.read("hands", light, filter=self._filter_expression(source), **self._filter_kwargs())
        if rows.num_rows == 0:
            shown = {
                k: v
                for k, v in {**self._filter_kwargs(), "min_mask_score": c.min_mask_score}.items()
                if v is not None
            }
            raise DataCheckError(
                f"{hands.url}: no hand passes the filter {shown} ({total} hands in the table)"
            )
        first = rows.slice(0, 1).to_pylist()[0]
        return {
            "manifest": manifest.url,
            "hands_total": total,
            "hands_selected": rows.num_rows,
            "null_rows": partial,
            "crop_sizes": sorted(set(rows.column("crop_size").to_pylist())),
            "stored_heatmap_size": int(first["heatmap_shape"][2]),
            "stored_sigma": float(first["heatmap_sigma"] or DEFAULT_SIGMA),
            "manifest_created_at": manifest.info.get("created_at"),
            "crop_margin": (manifest.config or {}).get("crop_margin"),
            "no_source_caption": count_missing_source_captions(rows.column("source_caption")),
        }

    def check_data(self) -> None:
        """Open every manifest, check columns, nulls and the filter, and read the facts training needs."""
        c = self.config
        if c.init_from:
            self.source_run = read_source_run(c.init_from, self.name)
        sources = [self._check_manifest(i) for i in range(len(c.manifest))]
        sizes = sorted({s for src in sources for s in src["crop_sizes"]})
        # The tiny and mini presets have a fixed side; sd defaults to the manifest's own crop size, and a
        # run started from another one to that run's side.
        wanted = c.resolution or (self.source_run or {}).get("data", {}).get("resolution")
        wanted = wanted or (PRESET_RESOLUTION[c.preset] if c.preset != "sd" else None)
        if wanted is None and len(sizes) > 1:
            raise DataCheckError(
                f"{', '.join(src['manifest'] for src in sources)}: crops of several sizes {sizes}; pass "
                "--resolution to resize them to one"
            )
        resolution = int(wanted or sizes[0])
        if resolution % 8:
            raise DataCheckError(
                f"training resolution {resolution} is not a multiple of 8 (the VAE's downsampling)"
            )
        latent = resolution // 8
        # Each dataset re-renders heatmaps at latent size when its stored ones differ, scaling sigma, so
        # the blobs keep their size relative to the hand; every source must then give the same sigma.
        sigmas = [rescale_sigma(src["stored_sigma"], src["stored_heatmap_size"], latent) for src in sources]
        if any(abs(s - sigmas[0]) > 1e-6 * max(1.0, sigmas[0]) for s in sigmas):
            raise DataCheckError(
                "the manifests' heatmaps have different sigmas at the latent size ("
                + ", ".join(f"{src['manifest']}: {s:.4g}" for src, s in zip(sources, sigmas))
                + "); prepare them with the same heatmap sigma and size"
            )
        # The margin sets how large the hand is in its crop; the model records one margin, which generation
        # crops with, so mixed margins would teach other scales.
        margins = {src["crop_margin"] for src in sources} - {None}
        if len(margins) > 1:
            raise DataCheckError(
                "the manifests' hand crops have different margins ("
                + ", ".join(f"{src['manifest']}: {src['crop_margin']}" for src in sources)
                + "); prepare them with the same --crop-margin"
            )
        if margins:
            crop_margin = margins.pop()
        else:
            crop_margin = prep_crop_margin()
            logger.info(
                "train-hand: the manifests record no crop_margin; the model records prep's default %s",
                crop_margin,
            )
        first = sources[0]
        self.facts = {
            "manifest": first["manifest"],
            "hands_total": sum(s["hands_total"] for s in sources),
            "hands_selected": sum(s["hands_selected"] for s in sources),
            "null_rows": first["null_rows"],
            "resolution": resolution,
            "latent_size": latent,
            "stored_heatmap_size": first["stored_heatmap_size"],
            "heatmap_sigma": sigmas[0],
            "rerender_heatmaps": first["stored_heatmap_size"] != latent,
            "manifest_created_at": first["manifest_created_at"],
            "crop_margin": crop_margin,
        }
        if c.cache_latents:
            self.facts["latent_cache"] = latent_cache_root(c)
        skip = {"crop_sizes", "stored_sigma", "crop_margin"}
        if c.caption == "generated":
            skip.add("no_source_caption")
        else:
            missing = self.facts["no_source_caption"] = sum(s["no_source_caption"] for s in sources)
            log_caption_fallbacks("train-hand", c.caption, missing, self.facts["hands_selected"])
        if len(sources) > 1:
            self.facts["sources"] = [{k: v for k, v in src.items() if k not in skip} for src in sources]
            self.facts["manifest_weights"] = list(c.manifest_weights) if c.manifest_weights else None
        if self.source_run is not None:
            self.facts["init_from"] = os.path.abspath(c.init_from)
        logger.info(
            "train-hand data: %d of %d hands, %dpx crops",
            self.facts["hands_selected"],
            self.facts["hands_total"],
            resolution,
        )
        self._sources = sources

    def describe(self) -> dict:
        return dict(self.facts)

    def _source_dataset(
        self, source: int, rank: int, world_size: int, shuffle: bool = True, load_pixels: bool = True
    ) -> HandCropDataset:
        f, stored = self.facts, self._sources[source]["stored_heatmap_size"]
        return HandCropDataset(
            self.config.manifest[source],
            resolution=f["resolution"],
            heatmap_size=f["latent_size"] if stored != f["latent_size"] else None,
            filter=self._filter_expression(source),
            shuffle=shuffle,
            seed=self.config.seed,
            rank=rank,
            world_size=world_size,
            shuffle_window=self.config.shuffle_window,
            load_pixels=load_pixels,
            caption=self.config.caption,
            **self._filter_kwargs(),
        )

    def _dataset(self, rank: int, world_size: int, shuffle: bool = True, load_pixels: bool = True):
        """The training data: one manifest's dataset, or several mixed (`MixtureDataset`)."""
        parts = [
            self._source_dataset(i, rank, world_size, shuffle, load_pixels) for i in range(len(self._sources))
        ]
        if len(parts) == 1:
            return parts[0]
        return MixtureDataset(parts, self.config.manifest_weights, seed=self.config.seed)

    def dataset(self, accelerator):
        if self.config.cache_latents:
            self._prepare_cache(accelerator)
        # With cached latents the crops are never looked at: the dataset does not read or decode them.
        return self._dataset(
            accelerator.process_index, accelerator.num_processes, load_pixels=not self.config.cache_latents
        )

    # ---- models ----------------------------------------------------------------------------------
    def check_models(self) -> None:
        """The base folder (a Hub id found in the cache) and its configs: a 4-channel text-to-image UNet
        over an 8x VAE. Nothing to check when building from nothing or from an ``--init-from`` run."""
        c = self.config
        self.base = None
        if c.pretrained and not c.init_from:
            self.base = find_model(c.pretrained, "Stable Diffusion folder", "--pretrained", c.allow_download)
            facts = check_sd_folder(self.base)
            check_unet_inputs(
                facts, facts.latent_channels, "--pretrained", "train-hand (a text-to-image UNet)"
            )

    def _from_preset(self):
        """(frozen parts, HandUNet) for a new model: the preset's components, the UNet widened."""
        c = self.config
        comps = build_components(
            c.preset,
            pretrained=getattr(self, "base", None) or c.pretrained,
            resolution=self.facts["resolution"],
            prediction_type=c.prediction_type,
            zero_terminal_snr=c.zero_terminal_snr,
            seed=c.seed,
        )
        unet_cfg = comps.unet.config
        if unet_cfg.in_channels != comps.vae.config.latent_channels:
            raise ValueError(
                f"{c.pretrained}: the unet has {unet_cfg.in_channels} input channels; train-hand starts from a 4-channel text-to-image UNet"
            )
        model = HandUNet.from_unet(
            comps.unet,
            mask_head_type=c.mask_head_type,
            mask_head_channels=c.mask_head_channels,
            heatmap_sigma=self.facts["heatmap_sigma"],
        )
        del comps.unet
        return comps, model

    def _from_run(self):
        """(frozen parts, HandUNet) of the finished run ``--init-from`` names, exactly as it saved them:
        its VAE and text encoder are the ones its UNet learned with."""
        c = self.config
        pipe = HandGenerationPipeline.from_pretrained(c.init_from)
        model = pipe.unet
        if abs(model.config.heatmap_sigma - self.facts["heatmap_sigma"]) > 1e-6 * max(
            1.0, self.facts["heatmap_sigma"]
        ):
            raise DataCheckError(
                f"--init-from {c.init_from}: its model was trained on heatmaps of sigma {model.config.heatmap_sigma:.4g} "
                f"latent pixels, these manifests give {self.facts['heatmap_sigma']:.4g} at {self.facts['resolution']} px; "
                "train at the run's --resolution or prepare the manifests with its heatmap settings"
            )
        overrides = noise_schedule_overrides(c.prediction_type, c.zero_terminal_snr)
        # The run saved its sampling scheduler; training draws from the same noise schedule as DDPM.
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config, **overrides)
        comps = SimpleNamespace(
            vae=pipe.vae,
            text_encoder=pipe.text_encoder,
            tokenizer=pipe.tokenizer,
            scheduler=scheduler,
            source=os.path.abspath(c.init_from),
            vae_scale_factor=pipe.vae_scale_factor,
        )
        logger.info("train-hand: starting from the weights of %s", c.init_from)
        return comps, model

    def build(self, accelerator) -> None:
        self.accelerator = accelerator
        comps, self.model = self._from_run() if self.source_run is not None else self._from_preset()
        if comps.vae_scale_factor != 8:
            raise ValueError(
                f"the VAE downsamples by {comps.vae_scale_factor}, but manifest heatmaps assume 8"
            )
        dtype = weight_dtype(accelerator)
        self.vae = freeze(comps.vae, accelerator.device, dtype)
        self.text_encoder = freeze(comps.text_encoder, accelerator.device, dtype)
        self.tokenizer = comps.tokenizer
        self.scheduler = comps.scheduler
        self.source = comps.source
        # The base folder's sample size is its own training side; the saved pipeline draws at this run's.
        self.model.record_sample_size(self.facts["resolution"] // comps.vae_scale_factor)
        self.model.record_crop_margin(self.facts["crop_margin"])
        self.facts["components"] = comps.source
        self.facts["prediction_type"] = self.scheduler.config.prediction_type
        self.empty_embedding = encode_text(self.tokenizer, self.text_encoder, [""])

    def trainable(self) -> torch.nn.Module:
        return self.model

    def _prepare_cache(self, accelerator) -> None:
        """Build (main process) or open the latent cache of the selected hands, one per manifest."""
        c = self.config
        keys = [
            {
                "manifest": src["manifest"],
                "manifest_created_at": src["manifest_created_at"],
                "hands_selected": src["hands_selected"],
                "resolution": self.facts["resolution"],
                **self._filter_kwargs(),
                "min_mask_score": c.min_mask_score,
            }
            for src in self._sources
        ]

        def batches(i: int):
            size = max(c.batch_size, 8)
            data = self._source_dataset(i, 0, 1, shuffle=False)
            loader = torch.utils.data.DataLoader(data, batch_size=size, num_workers=c.num_workers)
            total = -(-self._sources[i]["hands_selected"] // size)
            return ((list(b["hand_id"]), b["pixel_values"]) for b in loader), total

        self.caches = ensure_caches(accelerator, latent_cache_root(c), keys, self.vae, batches)

    # ---- loss ------------------------------------------------------------------------------------
    def prepare_batch(self, batch: dict, device) -> dict:
        if self.caches:
            batch = dict(batch)
            batch.pop("pixel_values", None)  # the cached posterior replaces the crop (not loaded anyway)
            batch["moments"] = cached_moments(self.caches, batch["hand_id"], batch.get("source"))
        return super().prepare_batch(batch, device)

    def latents(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            if "moments" in batch:
                z = LatentCache.sample(batch["moments"], generator)
            else:
                z = self.vae.encode(batch["pixel_values"].to(self.vae.dtype)).latent_dist.sample(
                    generator=generator
                )
        return z.float() * self.vae.config.scaling_factor

    def loss(self, model, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        c = self.config
        latents = self.latents(batch, generator)
        b, device = latents.shape[0], latents.device
        noise = torch.randn(latents.shape, generator=generator, device=device)
        t = torch.randint(
            0, self.scheduler.config.num_train_timesteps, (b,), generator=generator, device=device
        )
        noisy = self.scheduler.add_noise(latents, noise, t)

        drop_text = torch.rand(b, generator=generator, device=device) < c.text_dropout
        drop_pose = torch.rand(b, generator=generator, device=device) < c.pose_dropout
        captions = ["" if d else cap for d, cap in zip(drop_text.tolist(), batch["caption"])]
        embeds = encode_text(self.tokenizer, self.text_encoder, captions).float()
        heatmaps = batch["heatmap"].float() * (~drop_pose).float()[:, None, None, None]

        out = model(noisy, t, embeds, heatmaps)
        target = diffusion_target(self.scheduler, latents, noise, t)
        noise_loss = F.mse_loss(out.sample.float(), target.float())
        mask_target = F.interpolate(batch["mask"].float(), size=latents.shape[-2:], mode="area")
        m_loss = mask_loss(out.mask_logits, mask_target, c.mask_loss)
        return {
            "loss": noise_loss + c.mask_loss_weight * m_loss,
            "noise_loss": noise_loss,
            "mask_loss": m_loss,
        }

    # ---- validation and export -------------------------------------------------------------------
    def pipeline(self, model) -> HandGenerationPipeline:
        pipe = HandGenerationPipeline(
            unet=model,
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            scheduler=sampling_scheduler(self.scheduler, self.config.sampler),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def validation_poses(self) -> list[dict]:
        """Fixed poses for validation grids: the first hands of the val split, else of the training data,
        of the first manifest."""
        if getattr(self, "_poses", None) is None:
            m = open_manifest(self.config.manifest[0])
            cols = ["hand_id", "crop_keypoints", "crop_size", "caption", "source_caption"]
            n = self.config.num_validation_poses
            rows = first_rows(m, "hands", cols, n, split="val") if self.config.split != "val" else []
            if not rows:
                rows = first_rows(
                    m, "hands", cols, n, filter=self._filter_expression(0), **self._filter_kwargs()
                )
            res = self.facts["resolution"]
            self._poses = []
            for r in rows:
                kps = np.asarray(r["crop_keypoints"], np.float64)
                kps[:, :2] *= res / float(r["crop_size"])
                kps[:, :2] = np.clip(kps[:, :2], 0, res)
                self._poses.append(
                    {
                        "keypoints": kps,
                        "caption": choose_caption(r["caption"], r["source_caption"], self.config.caption)
                        or "a hand",
                        "hand_id": r["hand_id"],
                    }
                )
        return self._poses

    # The columns of the validation grid, one row per validation pose.
    VALIDATION_COLUMNS = ("generated hand", "mask (grey: prob.)", "pose condition")

    @torch.no_grad()
    def validate(self, model, step: int, path: str) -> dict:
        from PIL import Image

        poses = self.validation_poses()
        if not poses:
            return {}
        pipe = self.pipeline(model)
        with self.accelerator.autocast():
            out = pipe(
                [p["caption"] for p in poses],
                keypoints=np.stack([p["keypoints"] for p in poses]),
                num_inference_steps=self.config.validation_steps,
                guidance_scale=self.config.validation_guidance_scale,
                seed=self.config.seed,
                output_type="np",
            )
        tiles, coverage = [], []
        for img, prob, binary, pose in zip(out.images, out.masks, out.masks_binary, poses):
            rgb = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
            kps = pose["keypoints"]
            gray = np.repeat((prob[..., None] * 255).round().astype(np.uint8), 3, axis=2)
            # hand | mask probability (grey) with the thresholded mask outlined | conditioning skeleton
            tiles += [rgb, overlay_mask(gray, binary, alpha=0.25), draw_hand(np.zeros_like(rgb), kps)]
            coverage.append(keypoint_coverage(binary, kps, outside="clip"))
        captions = [f"{p['hand_id']}"[:22] for p in poses for _ in range(3)]
        sheet = contact_sheet(
            tiles, columns=3, tile=128, captions=captions, column_titles=self.VALIDATION_COLUMNS
        )
        Image.fromarray(sheet).save(path)
        # Share of the conditioning keypoints that fall inside the predicted mask: 1 when mask and pose agree.
        return {"mask_keypoint_coverage": float(np.mean(coverage))}

    def save_final(self, model, out_dir: str) -> None:
        # Frozen parts may sit in half precision on the device; the saved pipeline is float32 throughout
        # (load it with torch_dtype=torch.float16 for half-precision sampling). This is the run's last use
        # of them, so they are cast in place.
        freeze(self.vae, self.vae.device, torch.float32)
        freeze(self.text_encoder, self.text_encoder.device, torch.float32)
        self.pipeline(model).save_pretrained(out_dir)
        logger.info("saved the hand generation pipeline to %s", out_dir)

    def close(self) -> None:
        self.caches = []


def train_hand(config: HandTrainConfig) -> TrainResult:
    """Train the stage-1 hand generator; the run folder ends up loadable by `HandGenerationPipeline`."""
    return train(HandTask(config), config)
