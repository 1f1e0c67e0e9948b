"""What the body outpainter is given: per-item inputs broadcast to the batch, the output size, the
condition inputs of each item, and the inputs that regenerate one manifest image."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .condition import ConditionInputs, inputs_from_body_sample


def as_array(x, name: str) -> np.ndarray:
    if isinstance(x, Image.Image):
        x = x.convert("L" if name == "hand_mask" else "RGB")
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _ndim(x) -> int:
    return -1 if x is None else np.asarray(x).ndim


# Per input: does this value hold one entry per batch item (True) or a single entry to broadcast?
_IS_PER_ITEM = {
    "body_keypoints": lambda v: (
        isinstance(v, (list, tuple)) and len(v) > 0 and (v[0] is None or _ndim(v[0]) == 2)
    ),
    "hand_image": lambda v: isinstance(v, (list, tuple)),
    "hand_mask": lambda v: isinstance(v, (list, tuple)),
    # One item is a list of (21, k) hands; a batch is a list of such lists (possibly empty ones).
    "hand_keypoints": lambda v: (
        isinstance(v, (list, tuple))
        and len(v) > 0
        and isinstance(v[0], (list, tuple))
        and (len(v[0]) == 0 or _ndim(v[0][0]) == 2)
    ),
    "negative_prompt": lambda v: isinstance(v, (list, tuple)),
}


def per_item(value, batch: int, name: str) -> list:
    """A single value broadcast to `batch`, or a list with one value per item."""
    if _IS_PER_ITEM[name](value):
        if len(value) != batch:
            raise ValueError(f"{name} has {len(value)} entries for a batch of {batch} prompts")
        return list(value)
    return [value] * batch


def output_size(condition, hand_mask, height, width) -> tuple[int | None, int | None]:
    """The output size: as given, else the condition's, else the (first) hand mask's."""
    if condition is not None:
        return (condition.shape[-2] if height is None else height), (
            condition.shape[-1] if width is None else width
        )
    if hand_mask is not None:
        first = hand_mask[0] if isinstance(hand_mask, (list, tuple)) else hand_mask
        h0, w0 = as_array(first, "hand_mask").shape[:2]
        return (h0 if height is None else height), (w0 if width is None else width)
    return height, width


def condition_items(batch, body_keypoints, hand_image, hand_mask, hand_keypoints, body_format):
    """One `ConditionInputs` per batch item (each input broadcast or given per item), or None when the
    call gives a precomputed condition instead."""
    if hand_image is None or hand_mask is None:
        if body_keypoints is None and hand_image is None and hand_mask is None:
            return None
        raise ValueError("give the body pose together with both `hand_image` and `hand_mask`")
    bodies = per_item(body_keypoints, batch, "body_keypoints")
    images = per_item(hand_image, batch, "hand_image")
    masks = per_item(hand_mask, batch, "hand_mask")
    hands = per_item(hand_keypoints if hand_keypoints is not None else [], batch, "hand_keypoints")
    return [
        ConditionInputs(
            b, as_array(img, "hand_image"), as_array(m, "hand_mask"), h, body_format, f"batch item {i}"
        )
        for i, (b, img, m, h) in enumerate(zip(bodies, images, masks, hands))
    ]


def manifest_inputs(
    manifest, image_id: str, resolution: int | tuple[int, int] = 512, fit: str = "cover", crop: str = "hands"
) -> dict:
    """Pipeline inputs that regenerate one manifest image around its own hands.

    The image goes through the same `BodyDataset` transform as in training. Returns keyword
    arguments for `BodyOutpaintPipeline.__call__`: ``prompt`` (the caption), ``body_keypoints``
    ((33, 3) canvas pixels, None without a body), ``hand_image`` ((H, W, 3) uint8, the photo),
    ``hand_mask`` ((H, W) bool) and ``hand_keypoints`` (a list of (21, 3)).
    """
    import pyarrow.dataset as ds

    from manifests.datasets import BodyDataset, EmptySelectionError

    try:
        data = BodyDataset(
            manifest,
            resolution=resolution,
            fit=fit,
            crop=crop,
            status=None,
            filter=ds.field("image_id") == image_id,
            shuffle=False,
            rank=0,
            world_size=1,
        )
    except EmptySelectionError:
        raise ValueError(f"{manifest}: no image with image_id {image_id!r}") from None
    item = next(iter(data))
    inputs = inputs_from_body_sample(item)
    return {
        "prompt": item["caption"],
        "body_keypoints": inputs.body_keypoints,
        "hand_image": inputs.hand_image,
        "hand_mask": inputs.hand_mask,
        "hand_keypoints": list(inputs.hand_keypoints),
    }
