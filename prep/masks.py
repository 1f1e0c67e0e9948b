"""Hand masks: a registry of methods, each turning (image, hand keypoints, crop box) into a mask in
crop coordinates.

- ``sam``: Segment Anything through `SamPredictor` with the user's checkpoint. The image embedding
  is computed once per image (`set_image`); each hand is prompted with its box (keypoint box grown a
  little, since the outline extends past the keypoints) and positive points on the palm and fingers.
  Of SAM's three multimask outputs the one with the highest predicted IoU x keypoint agreement (share
  of the hand's keypoints inside the mask) wins; the mask is read from SAM's low-resolution logits
  resampled straight into the crop, and `mask_score` is its predicted IoU.
- ``grabcut``: weight-free OpenCV GrabCut on the hand region, seeded by the keypoint skeleton: the
  middle of each bone and the shrunken palm are sure hand, the skeleton dilated to finger width is
  probable hand, the rest of the keypoint box (grown by a rim) is probable background, and outside
  it, beyond the wrist along the forearm, and outside the image is sure background. The keypoints
  themselves are not seeds, so `mask_score` (share of keypoints inside the mask) measures agreement.
- ``auto``: sam when a checkpoint is given, else grabcut; ``none``: no masks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np

from manifests.geometry import CropBox, keypoint_coverage, square_crop_box
from manifests.pose import HAND_EDGES

from .config import PrepConfig
from .crops import warp_crop
from .errors import ModelLoadError
from .hands import Hand

log = logging.getLogger(__name__)

PALM = (0, 5, 9, 13, 17)  # wrist and the four finger bases: always inside the hand
SAM_POINTS = (0, 3, 6, 10, 14, 18)  # wrist, thumb IP and the PIP joints: well inside the outline


@dataclass
class HandMask:
    mask: np.ndarray  # (crop_size, crop_size) bool, True = hand, in the hand's crop coordinates
    method: str  # sam_vit_b / sam_vit_l / sam_vit_h / grabcut
    score: float  # 0..1, see the module docstring


def resample(values: np.ndarray, src: CropBox | None, dst: CropBox, fill: float = 0.0) -> np.ndarray:
    """Bilinearly resample a float map into `dst` crop pixels -> (dst.size, dst.size) float32.

    `values` covers the square `src` at src.size pixels, or the image itself (pixel coordinates)
    when `src` is None.
    """
    if src is None:
        box = dst
    else:
        (u0, v0), (u1, _) = src.to_crop(np.array([dst.box[:2], dst.box[2:]], dtype=np.float64))
        box = CropBox(u0, v0, u1 - u0, dst.size)
    return warp_crop(np.asarray(values, dtype=np.float32), box, fill=fill)


class GrabCutMasker:
    """Weight-free hand masks by OpenCV GrabCut seeded with the keypoint skeleton."""

    name = "grabcut"

    def __init__(self, config: PrepConfig):
        self.config = config

    def set_image(self, image: np.ndarray) -> None:  # nothing is shared between the hands of an image
        pass

    def seeds(self, kps: np.ndarray, size: int) -> np.ndarray:
        """(size, size) uint8 GrabCut label map for (21, 3) keypoints in region pixels."""
        valid = kps[:, 2] > 0
        xy = kps[:, :2]
        x0, y0 = xy[valid].min(axis=0)
        x1, y1 = xy[valid].max(axis=0)
        hand = max(x1 - x0, y1 - y0, 4.0)
        labels = np.full((size, size), cv2.GC_BGD, np.uint8)
        rim = 0.15 * hand  # the outline extends past the keypoints (palm sides, fingertips)
        cv2.rectangle(labels, _pt((x0 - rim, y0 - rim)), _pt((x1 + rim, y1 + rim)), int(cv2.GC_PR_BGD), -1)
        wide = max(3, int(round(0.13 * hand)))  # about a finger's width
        thin = max(1, int(round(0.03 * hand)))
        probable = np.zeros_like(labels)
        sure = np.zeros_like(labels)
        for a, b in HAND_EDGES:
            if not (valid[a] and valid[b]):
                continue
            cv2.line(probable, _pt(xy[a]), _pt(xy[b]), 1, wide, cv2.LINE_8)
            # Only the middle of each bone is sure hand, so the keypoints stay free to be measured.
            pa, pb = xy[a] + 0.25 * (xy[b] - xy[a]), xy[a] + 0.75 * (xy[b] - xy[a])
            cv2.line(sure, _pt(pa), _pt(pb), 1, thin, cv2.LINE_8)
        palm = [i for i in PALM if valid[i]]
        if len(palm) >= 3:
            poly = xy[palm]
            centre = poly.mean(axis=0)
            cv2.fillPoly(probable, [np.round(poly).astype(np.int32)], 1)
            cv2.fillPoly(sure, [np.round(centre + 0.6 * (poly - centre)).astype(np.int32)], 1)
            # The forearm is skin too: beyond the wrist, away from the middle finger's base, is background.
            if valid[0] and valid[9]:
                axis = xy[0] - xy[9]
                axis /= max(np.linalg.norm(axis), 1e-6)
                gy, gx = np.mgrid[0:size, 0:size]
                beyond = ((gx - xy[0, 0]) * axis[0] + (gy - xy[0, 1]) * axis[1]) > 0.12 * hand
                labels[beyond] = cv2.GC_BGD
        labels[probable > 0] = cv2.GC_PR_FGD
        labels[sure > 0] = cv2.GC_FGD
        return labels

    def predict(self, image: np.ndarray, hand: Hand, crop: CropBox) -> HandMask:
        cfg = self.config
        region = square_crop_box(
            hand.keypoints[hand.keypoints[:, 2] > 0], size=cfg.grabcut_size, margin=cfg.grabcut_margin
        )
        # Work at the region's own resolution when that is smaller: upsampling adds no evidence, only time.
        region = CropBox(
            region.x0, region.y0, region.side, int(min(cfg.grabcut_size, max(64, round(region.side))))
        )
        work = warp_crop(image, region)
        kps = region.to_crop(hand.keypoints)
        labels = self.seeds(kps, region.size)
        # Outside the image is padding, not scene: sure background.
        centres = region.to_image(np.column_stack([np.arange(region.size) + 0.5] * 2))
        in_x = (centres[:, 0] >= 0) & (centres[:, 0] < image.shape[1])
        in_y = (centres[:, 1] >= 0) & (centres[:, 1] < image.shape[0])
        labels[~(in_y[:, None] & in_x[None, :])] = cv2.GC_BGD
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(
            0
        )  # GrabCut's k-means draws from OpenCV's global RNG: fix it so reruns give equal masks
        try:
            cv2.grabCut(work, labels, None, bgd, fgd, cfg.grabcut_iters, cv2.GC_INIT_WITH_MASK)
        except cv2.error as exc:  # degenerate seeds (e.g. no background left): keep the skeleton prior
            log.debug("grabcut failed (%s); using the seed mask", exc)
        fg = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
        fg = _components_touching(fg, labels == cv2.GC_FGD)
        soft = cv2.GaussianBlur(fg.astype(np.float32), (0, 0), 0.8)
        mask = resample(soft, region, crop) > 0.5
        score = keypoint_coverage(fg.astype(bool), kps)
        return HandMask(mask, self.name, score)


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _components_touching(fg: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Keep the connected foreground components that contain a sure-hand seed (drops stray blobs)."""
    n, comp = cv2.connectedComponents(fg, connectivity=8)
    if n <= 2:
        return fg
    keep = np.unique(comp[seeds & (fg > 0)])
    keep = keep[keep > 0]
    return np.isin(comp, keep).astype(np.uint8)


# --- SAM --------------------------------------------------------------------------------------------


def build_sam_vit_tiny(checkpoint=None):
    """A small SAM (2-block ViT, width 64, 256 px input) from segment_anything's own classes.

    It has no published weights: it exists so the real checkpoint path (build, torch.load with
    weights_only, load_state_dict, SamPredictor) runs in tests and demos in milliseconds.
    """
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    img_size, patch, dim = 256, 16, 32
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=64,
            img_size=img_size,
            mlp_ratio=2,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=[1],
            window_size=4,
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(img_size // patch, img_size // patch),
            input_image_size=(img_size, img_size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def sam_builders() -> dict:
    """model type -> builder(checkpoint=None) returning an un-loaded `Sam`."""
    from segment_anything import sam_model_registry

    return {
        "vit_b": sam_model_registry["vit_b"],
        "vit_l": sam_model_registry["vit_l"],
        "vit_h": sam_model_registry["vit_h"],
        "vit_tiny": build_sam_vit_tiny,
    }


def load_sam(model_type: str, checkpoint: str, device: str = "cpu"):
    """Build the `model_type` architecture and load `checkpoint` (local path or fsspec URL) into it
    with ``torch.load(weights_only=True)``; raises `ModelLoadError` with the reason."""
    import fsspec
    import torch

    builders = sam_builders()
    if model_type not in builders:
        raise ModelLoadError(f"unknown SAM model type {model_type!r}; expected one of {sorted(builders)}")
    sam = builders[model_type](checkpoint=None)
    try:
        with fsspec.open(checkpoint, "rb") as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"SAM checkpoint not found: {checkpoint}") from exc
    except Exception as exc:
        raise ModelLoadError(f"cannot load SAM checkpoint {checkpoint}: {type(exc).__name__}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # checkpoints saved as {"model": state_dict, ...}
    try:
        sam.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelLoadError(
            f"SAM checkpoint {checkpoint} does not fit {model_type}: {str(exc)[:500]}"
        ) from exc
    return sam.to(device).eval()


class SamMasker:
    """Hand masks from `SamPredictor` prompted with the hand box and keypoint points."""

    def __init__(self, config: PrepConfig, sam=None):
        if sam is None and not config.sam_checkpoint:
            raise ModelLoadError("mask_method 'sam' needs a checkpoint (--sam-checkpoint PATH)")
        self.config = config
        self.name = f"sam_{config.sam_model_type}"
        self._sam = sam
        self._predictor = None
        self._image: np.ndarray | None = None  # the image whose embedding the predictor holds

    @property
    def predictor(self):
        if self._predictor is None:
            from segment_anything import SamPredictor

            if self._sam is None:
                self._sam = load_sam(
                    self.config.sam_model_type, self.config.sam_checkpoint, self.config.device
                )
            self._predictor = SamPredictor(self._sam)
        return self._predictor

    def set_image(self, image: np.ndarray) -> None:
        import torch

        with torch.inference_mode():
            self.predictor.set_image(image, image_format="RGB")
        self._image = image

    def prompts(self, hand: Hand) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(box (4,), points (N, 2), labels (N,)) for one hand, in image pixels."""
        kps = hand.keypoints
        valid = kps[:, 2] > 0
        x0, y0 = kps[valid, :2].min(axis=0)
        x1, y1 = kps[valid, :2].max(axis=0)
        rim = 0.1 * max(x1 - x0, y1 - y0)
        box = np.array([x0 - rim, y0 - rim, x1 + rim, y1 + rim])
        idx = [i for i in SAM_POINTS if valid[i]]
        points = kps[idx, :2]
        palm = [i for i in PALM if valid[i]]
        if palm:
            points = np.vstack([points, kps[palm, :2].mean(axis=0, keepdims=True)])
        return box, points, np.ones(len(points), dtype=np.int64)

    def predict(self, image: np.ndarray, hand: Hand, crop: CropBox) -> HandMask:
        import torch

        # Same array object, not just the same size: HaGRID photos share one size, and a stale embedding
        # would silently give another photo's masks.
        if self._image is not image:
            self.set_image(image)
        box, points, labels = self.prompts(hand)
        with torch.inference_mode():
            masks, ious, low_res = self.predictor.predict(
                point_coords=points, point_labels=labels, box=box, multimask_output=True
            )
        agreement = np.array([keypoint_coverage(m, hand.keypoints) for m in masks])
        best = int(np.argmax(ious * agreement)) if agreement.max() > 0 else int(np.argmax(ious))
        # Low-res logits cover the longest image side at low_res.shape[-1] pixels (top-left aligned).
        factor = low_res.shape[-1] / float(max(image.shape[:2]))
        src = CropBox(0.0, 0.0, low_res.shape[-1] / factor, low_res.shape[-1])
        logits = resample(low_res[best], src, crop, fill=-20.0)
        return HandMask(logits > 0.0, self.name, float(np.clip(ious[best], 0.0, 1.0)))


def resolve_mask_method(config: PrepConfig) -> str:
    method = config.resolved_mask_method()
    if method not in MASK_METHODS and method != "none":
        raise ValueError(
            f"unknown mask_method {method!r}; expected auto, none or one of {sorted(MASK_METHODS)}"
        )
    return method


MASK_METHODS = {"grabcut": GrabCutMasker, "sam": SamMasker}


def make_masker(config: PrepConfig):
    """The configured mask method's instance, or None for mask_method 'none'."""
    method = resolve_mask_method(config)
    return None if method == "none" else MASK_METHODS[method](config)
