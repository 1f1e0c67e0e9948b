"""Stage 1's samples: one hand crop per `hands` row, with its heatmaps, mask and caption."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..decode import (
    check_caption_choice,
    choose_caption,
    crop_array,
    crop_keypoints,
    heatmap_array,
    mask_array,
)
from ..geometry import render_heatmap, rescale_sigma
from ..reader import Manifest, RowGroupUnit
from .stream import ManifestIterableDataset, to_mask_tensor, to_pixel_values


class HandCropDataset(ManifestIterableDataset):
    """Hand crops for the stage-1 hand generator.

    Each sample is a dict:
    - ``pixel_values``: (3, R, R) float32 in [-1, 1], the crop at resolution R;
    - ``heatmap``: (21, h, w) float32 in [0, 1]; the stored heatmap, or re-rendered at
      ``heatmap_size`` from the crop keypoints (sigma: ``heatmap_sigma``, else the stored sigma
      scaled to the new heatmap size, so the blobs keep their size relative to the hand);
    - ``mask``: (1, R, R) float32 in {0, 1}, the hand mask;
    - ``keypoints``: (21, 3) float32, [x, y, score] in pixels of the R x R crop;
    - ``caption``, ``label``, ``handedness``, ``hand_id``: str ("" where null). ``caption`` is
      prep's (``caption="generated"``, the default), the source's own (``"source"``: img2dataset's
      text, or the generated one where the row has none) or both joined (``"both"``).

    ``resolution`` (default: the stored crop_size) resizes crop (bicubic), mask (bilinear then
    threshold) and keypoints with the same scale R / crop_size.

    ``load_pixels=False`` leaves ``pixel_values`` out and never reads the ``crop`` column (it is
    projected away in the Parquet read), for trainers that take the crop's latents from a cache:
    decoding and resizing the JPEG is then the largest per-sample cost. Every other key, the sample
    order and the resume position are the same as with ``load_pixels=True``.
    """

    table = "hands"
    columns = [
        "hand_id",
        "crop",
        "crop_size",
        "mask",
        "heatmap",
        "heatmap_shape",
        "heatmap_dtype",
        "heatmap_sigma",
        "crop_keypoints",
        "caption",
        "label",
        "handedness",
    ]

    def __init__(
        self,
        manifest: Manifest | str,
        *,
        resolution: int | None = None,
        heatmap_size: int | None = None,
        heatmap_sigma: float | None = None,
        label=None,
        split=None,
        min_hand_size=None,
        filter=None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_window: int = 4,
        transform=None,
        load_pixels: bool = True,
        caption: str = "generated",
    ):
        super().__init__(
            manifest,
            label=label,
            split=split,
            min_hand_size=min_hand_size,
            filter=filter,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            shuffle_window=shuffle_window,
            transform=transform,
        )
        self.load_pixels = bool(load_pixels)
        self.caption = check_caption_choice(caption)
        self.columns = [c for c in type(self).columns if c != "crop" or self.load_pixels]
        if self.caption != "generated":
            self.columns.append("source_caption")
        self.resolution = resolution
        self.heatmap_size = heatmap_size
        self.heatmap_sigma = heatmap_sigma

    def make_sample(self, row: dict, unit: RowGroupUnit) -> dict:
        crop = crop_array(row) if self.load_pixels else None
        mask, kps = mask_array(row), crop_keypoints(row, finite=True)
        size = int(row["crop_size"])
        res = int(self.resolution or size)
        if res != size:
            if crop is not None:
                crop = np.asarray(Image.fromarray(crop).resize((res, res), Image.BICUBIC))
            mask = (
                np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((res, res), Image.BILINEAR))
                > 127
            )
            kps[:, :2] *= res / size
        if self.heatmap_size is None:
            heatmap = heatmap_array(row)
        else:
            sigma = self.heatmap_sigma
            if sigma is None:
                sigma = rescale_sigma(row["heatmap_sigma"], row["heatmap_shape"][2], self.heatmap_size)
            heatmap = render_heatmap(kps, res, self.heatmap_size, sigma)
        sample = {} if crop is None else {"pixel_values": to_pixel_values(crop)}
        return {
            **sample,
            "heatmap": torch.from_numpy(heatmap),
            "mask": to_mask_tensor(mask),
            "keypoints": torch.from_numpy(kps),
            "caption": choose_caption(row["caption"], row.get("source_caption"), self.caption),
            "label": row["label"] or "",
            "handedness": row["handedness"] or "",
            "hand_id": row["hand_id"],
        }
