"""The pasted hand masks of manifest rows at generate's framing, with the manifest's own hand masks
standing in for stage 1's: what the blending targets (tests/test_generation_blending.py) and
bench/blend_sweep.py measure keep-masks on.

Each row's frame is scaled as ``generate --from-manifest`` scales it for a body model trained at
`side` (`output_size(W, H, side, fit)`); each hand's crop mask goes back into its crop box scaled the
same way, through the pipeline's own `paste_hands` (larger hands on top), on a canvas padded to the VAE
factor, as stage 2's work canvas is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .requests import output_size


@dataclass
class PastedHands:
    image_id: str
    labels: np.ndarray  # (H, W) int32: -1 outside, k for hand k (position in `sizes`)
    sizes: list[float]  # longer side of each hand's keypoint box, output pixels
    frame: tuple[int, int]  # (w, h) of the output frame (the canvas may be padded past it)


def pasted_hands(
    manifest: str, side: int, fit: str = "cover", multiple: int = 8, limit: int | None = None
) -> list[PastedHands]:
    """Every ``ok`` row of `manifest` (all splits, manifest order) with at least one hand mask."""
    import pyarrow.dataset as pads

    from manifests.decode import hand_keypoints, mask_array
    from manifests.geometry import CropBox, keypoint_bbox
    from manifests.reader import open_manifest

    from ..pipelines.placing import PlacedHand, paste_hands
    from ..selection import select_rows

    m = open_manifest(manifest)
    rows = select_rows(m, ["image_id", "width", "height"], "all", ("ok",), limit)
    ids = [r["image_id"] for r in rows]
    columns = ["image_id", "hand_index", "handedness", "keypoints", "crop_box", "crop_size", "mask"]
    columns += ["mask_method", "hand_id"]
    hands: dict[str, list[dict]] = {}
    for hr in m.read("hands", columns, filter=pads.field("image_id").isin(ids)).to_pylist():
        if hr["mask"] is not None and hr["crop_box"] is not None and hr["keypoints"] is not None:
            hands.setdefault(hr["image_id"], []).append(hr)
    out = []
    for row in rows:
        found = sorted(hands.get(row["image_id"], []), key=lambda r: r["hand_index"])
        if not found:
            continue
        w, h = output_size(row["width"], row["height"], side, fit)
        scale = w / float(row["width"])
        placed, masks = [], []
        for k, hr in enumerate(found):
            kps = hand_keypoints(hr).astype(np.float64)
            kps[:, :2] *= scale
            x0, y0, x1, y1 = keypoint_bbox(kps[kps[:, 2] > 0] if (kps[:, 2] > 0).any() else kps)
            mask = mask_array(hr)
            bx0, by0, bx1, _ = (float(v) * scale for v in hr["crop_box"])
            box = CropBox(bx0, by0, bx1 - bx0, mask.shape[0])
            size = float(max(x1 - x0, y1 - y0))
            placed.append(PlacedHand(k, hr["handedness"], kps, size, box, box.to_crop(kps)))
            masks.append(mask)
        work = (-(-h // multiple) * multiple, -(-w // multiple) * multiple)
        crops = np.zeros((len(masks), *masks[0].shape, 3), np.uint8)
        *_, labels = paste_hands(placed, crops, np.stack(masks), work, "larger_on_top", labels=True)
        out.append(PastedHands(row["image_id"], labels, [p.size for p in placed], (w, h)))
    return out
