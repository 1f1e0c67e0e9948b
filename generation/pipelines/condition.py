"""The body outpainter's condition image: body skeleton, hand pixels and hand mask, stacked as channels.

The ControlNet of stage 2 sees one (C, H, W) float tensor in [0, 1] at the output resolution. It is a
stack of *channel groups*, chosen by `ConditionConfig.channels` (default all three, 7 channels):

- ``pose`` (3): the body as an OpenPose-18 skeleton in the standard ControlNet limb colours, on black.
  MediaPipe-33 input goes through `manifests.pose`'s 33-to-18 conversion. With `draw_hand_skeletons` the
  21-point hand skeletons are drawn on top (the ablation of the paper's body-only pose).
- ``hands`` (3): the hand pixels (RGB) where the hand mask is set, zeros everywhere else.
- ``mask`` (1): the hand mask, 1 inside the hands and 0 outside.

`conditioning_channels(config)` is the one place that says how many channels that makes; the model
builder and the pipeline read it from there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from manifests.draw import draw_hand, draw_openpose
from manifests.pose import BODY_FORMATS, mediapipe33_to_openpose18, to_openpose18


class NoBodyPoseError(ValueError):
    """An image has no usable body pose, so the body outpainter has nothing to condition on."""


@dataclass
class ConditionConfig:
    """How the condition image is drawn. Saved with the pipeline so sampling matches training.

    - channels: channel groups to stack, in order; names from `CONDITION_GROUPS`.
    - draw_hand_skeletons: also draw the 21-point hand skeletons into the ``pose`` group (ablation).
    - min_visibility: MediaPipe landmarks below this visibility are not drawn.
    - stick_width, joint_radius: limb half-width and joint radius as fractions of the longer image
      side; ControlNet's OpenPose renderer uses 4 px at 512 px. Never below 1 px.
    - hand_line_width, hand_joint_radius: the same for the hand skeletons (the OpenPose annotator's 2 px
      lines and 4 px joints at 512 px, drawn without anti-aliasing like it).
    """

    channels: tuple[str, ...] = ("pose", "hands", "mask")
    draw_hand_skeletons: bool = False
    min_visibility: float = 0.3
    stick_width: float = 4 / 512
    joint_radius: float = 4 / 512
    hand_line_width: float = 2 / 512
    hand_joint_radius: float = 4 / 512

    def __post_init__(self):
        self.channels = tuple(self.channels)
        unknown = [c for c in self.channels if c not in CONDITION_GROUPS]
        if unknown or not self.channels:
            raise ValueError(
                f"unknown condition channel group(s) {unknown}; expected some of {sorted(CONDITION_GROUPS)}"
            )
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"condition channel groups repeat: {self.channels}")


@dataclass
class ConditionInputs:
    """Everything a condition image is drawn from, all in the pixels of the (H, W) output canvas.

    - body_keypoints: (33, 3) MediaPipe or (18, 3) OpenPose [x, y, visibility/score]; None = no body.
    - hand_image: (H, W, 3) uint8 RGB holding the hands; only pixels under `hand_mask` are used, so the
      full photo (training) and a canvas of pasted generated hands (sampling) both work.
    - hand_mask: (H, W) bool or {0, 1} / {0, 255} array.
    - hand_keypoints: a list of (21, >=2) arrays, only drawn with `draw_hand_skeletons`.
    """

    body_keypoints: np.ndarray | None
    hand_image: np.ndarray
    hand_mask: np.ndarray
    hand_keypoints: Sequence[np.ndarray] = field(default_factory=list)
    body_format: str = "mediapipe33"
    source: str = ""  # an image id or file name, for error messages


def inputs_from_body_sample(item: dict) -> ConditionInputs:
    """A `manifests.datasets.BodyDataset` sample -> `ConditionInputs` on its canvas.

    The dataset's uint8 -> [-1, 1] pixel map inverts exactly, so the hand pixels are the photo's.
    """
    pixels = item["pixel_values"]
    image = ((pixels.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    mask = item["hands_mask"][0].numpy() > 0.5
    hands = [k.numpy() for k, ok in zip(item["hand_keypoints"], item["hand_valid"]) if bool(ok)]
    body = item["body_keypoints"].numpy() if item["has_body"] else None
    return ConditionInputs(body, image, mask, hands, "mediapipe33", item["image_id"])


def _pixels(cfg: ConditionConfig, size: int, frac: float) -> int:
    return max(1, int(round(frac * size)))


def _draw_pose(h: int, w: int, body18: np.ndarray | None, hands, cfg: ConditionConfig) -> np.ndarray:
    """(H, W, 3) uint8: the OpenPose-18 body (if any) on black, then the 21-point hand skeletons."""
    side = max(h, w)
    canvas = np.zeros((h, w, 3), np.uint8)
    if body18 is not None:
        canvas = draw_openpose(
            canvas,
            body18,
            stickwidth=_pixels(cfg, side, cfg.stick_width),
            radius=_pixels(cfg, side, cfg.joint_radius),
        )
    for kps in hands:
        canvas = draw_hand(
            canvas,
            np.asarray(kps, np.float64),
            thickness=_pixels(cfg, side, cfg.hand_line_width),
            radius=_pixels(cfg, side, cfg.hand_joint_radius),
            antialias=False,
        )
    return canvas


def _render_pose(inp: ConditionInputs, cfg: ConditionConfig) -> np.ndarray:
    h, w = inp.hand_mask.shape
    hands = inp.hand_keypoints if cfg.draw_hand_skeletons else []
    return _draw_pose(h, w, inp.body_keypoints, hands, cfg).astype(np.float32) / 255.0


def render_openpose(
    width: int,
    height: int,
    body_keypoints,
    body_format: str = "mediapipe33",
    hands=(),
    config: ConditionConfig | None = None,
) -> np.ndarray:
    """The OpenPose-full image a ControlNet openpose model sees: the body (any supported format, drawn
    as OpenPose-18 in the standard colours; none or an unusable one draws no body) and every hand's
    21-point skeleton, on black. (H, W, 3) uint8 RGB; the pose channels of `build_condition` with
    ``draw_hand_skeletons`` are the same drawing."""
    cfg = config or ConditionConfig(draw_hand_skeletons=True)
    try:
        body18 = body_pose18(body_keypoints, body_format, cfg.min_visibility)
    except NoBodyPoseError:
        body18 = None
    return _draw_pose(int(height), int(width), body18, list(hands), cfg)


def _render_hands(inp: ConditionInputs, cfg: ConditionConfig) -> np.ndarray:
    return inp.hand_image.astype(np.float32) / 255.0 * inp.hand_mask[..., None]


def _render_mask(inp: ConditionInputs, cfg: ConditionConfig) -> np.ndarray:
    return inp.hand_mask[..., None].astype(np.float32)


# Channel group name -> (number of channels, renderer returning (H, W, n) float32 in [0, 1]). Renderers
# receive validated inputs: the body already converted to OpenPose 18 and the mask as bool.
CONDITION_GROUPS: dict[str, tuple[int, Callable[[ConditionInputs, ConditionConfig], np.ndarray]]] = {
    "pose": (3, _render_pose),
    "hands": (3, _render_hands),
    "mask": (1, _render_mask),
}


def conditioning_channels(config: ConditionConfig | None = None) -> int:
    """Number of channels of the condition image `config` describes (7 for the default)."""
    config = config or ConditionConfig()
    return sum(CONDITION_GROUPS[name][0] for name in config.channels)


def channel_slices(config: ConditionConfig | None = None) -> dict[str, slice]:
    """Group name -> its slice of the channel axis, e.g. {'pose': 0:3, 'hands': 3:6, 'mask': 6:7}."""
    config = config or ConditionConfig()
    out, start = {}, 0
    for name in config.channels:
        n = CONDITION_GROUPS[name][0]
        out[name] = slice(start, start + n)
        start += n
    return out


def body_pose18(
    body_keypoints, body_format: str = "mediapipe33", min_visibility: float = 0.3, source: str = ""
) -> np.ndarray:
    """Body keypoints in a supported format -> (18, 3) OpenPose, or `NoBodyPoseError` if none is usable."""
    where = f" for {source}" if source else ""
    if body_keypoints is None:
        raise NoBodyPoseError(f"no body pose{where}: body_keypoints is null")
    kps = np.asarray(body_keypoints, dtype=np.float32)
    if body_format not in BODY_FORMATS:
        raise ValueError(
            f"unknown body keypoint format {body_format!r}{where}; expected one of {sorted(BODY_FORMATS)}"
        )
    expected = (BODY_FORMATS[body_format], 3)
    if kps.shape != expected:
        raise ValueError(f"{body_format} body keypoints{where} must have shape {expected}, got {kps.shape}")
    if not np.isfinite(kps).all():
        raise ValueError(f"body keypoints{where} contain NaN or inf")
    if body_format == "mediapipe33":
        pose18 = mediapipe33_to_openpose18(kps, min_visibility=min_visibility)
    else:
        pose18 = to_openpose18(kps, body_format)
    if not (pose18[:, 2] > 0).any():
        raise NoBodyPoseError(f"no body pose{where}: every keypoint is below visibility {min_visibility}")
    return pose18


def _as_mask(mask, source: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"hand mask{' of ' + source if source else ''} must be (H, W), got shape {m.shape}")
    return m > (127 if m.dtype == np.uint8 and m.max(initial=0) > 1 else 0)


def build_condition(inputs: ConditionInputs, config: ConditionConfig | None = None) -> torch.Tensor:
    """Draw the condition image: (C, H, W) float32 in [0, 1], C = `conditioning_channels(config)`.

    Raises `NoBodyPoseError` when the body pose is missing or invisible and `ValueError` when the
    hand image and mask do not share the canvas size.
    """
    config = config or ConditionConfig()
    src = inputs.source
    where = f" for {src}" if src else ""
    image = np.asarray(inputs.hand_image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"hand image{where} must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    mask = _as_mask(inputs.hand_mask, src)
    if mask.shape != image.shape[:2]:
        raise ValueError(
            f"hand mask{where} has size {mask.shape[1]}x{mask.shape[0]} (WxH) but the hand image is "
            f"{image.shape[1]}x{image.shape[0]}; both must be at the output canvas size"
        )
    pose18 = body_pose18(inputs.body_keypoints, inputs.body_format, config.min_visibility, src)
    inp = ConditionInputs(pose18, image, mask, list(inputs.hand_keypoints), "openpose18", src)
    parts = [CONDITION_GROUPS[name][1](inp, config) for name in config.channels]
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=2).transpose(2, 0, 1)))


def request_condition(
    body_keypoints,
    body_format: str,
    canvas: np.ndarray,
    mask: np.ndarray,
    hand_keypoints,
    config: ConditionConfig,
) -> torch.Tensor:
    """The condition (1, C, H, W) of one generate request, drawn exactly as in training. Without a body
    pose the pose group is an empty skeleton (hand skeletons are still drawn when `config` asks for
    them)."""
    if body_keypoints is not None:
        inputs = ConditionInputs(
            np.asarray(body_keypoints, np.float32), canvas, mask, list(hand_keypoints), body_format, "request"
        )
        return build_condition(inputs, config)[None]
    empty = ConditionInputs(np.zeros((18, 3), np.float32), canvas, mask, list(hand_keypoints), "openpose18")
    parts = [CONDITION_GROUPS[name][1](empty, config) for name in config.channels]
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts, axis=2).transpose(2, 0, 1)))[None]


def condition_tiles(condition: torch.Tensor, config: ConditionConfig | None = None) -> list[np.ndarray]:
    """Split a (C, H, W) condition into one (H, W, 3) uint8 RGB tile per group, for grids and previews."""
    tiles = []
    for sl in channel_slices(config).values():
        part = condition[sl].detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)
        if part.shape[2] == 1:
            part = np.repeat(part, 3, axis=2)
        tiles.append((part * 255).round().astype(np.uint8))
    return tiles
