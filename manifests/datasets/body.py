"""Stage 2's samples: one full image per `images` row, framed at a training resolution, with its hands."""

from __future__ import annotations

import re
import zlib

import numpy as np
import torch

from ..decode import (
    body_keypoints,
    check_caption_choice,
    choose_caption,
    hand_keypoints,
    hands_mask_array,
    image_array,
    image_size,
)
from ..errors import ManifestError
from ..partition import epoch_rng
from ..pose import MEDIAPIPE_POSE_MIRROR, to_openpose18
from ..reader import Manifest, RowGroupUnit
from ..storage import url_for
from ..transforms import FitTransform, hands_focus
from .stream import ManifestIterableDataset, to_mask_tensor, to_pixel_values

HANDEDNESS_CODES = {"left": 0, "right": 1}
MIRRORED_SIDE = {"left": "right", "right": "left"}
_SIDE_WORD = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def mirror_caption(text: str) -> str:
    """The caption of the mirrored image: the words "left" and "right" swapped, their case kept."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = MIRRORED_SIDE[word.lower()]
        return other.upper() if word.isupper() else other.capitalize() if word[0].isupper() else other

    return _SIDE_WORD.sub(swap, text)


class BodyDataset(ManifestIterableDataset):
    """Full images for the stage-2 body outpainter, at a training resolution.

    One `FitTransform` (aspect-preserving resize, then crop (``fit="cover"``) or pad
    (``fit="contain"``)) maps the original image's pixel frame to the (H, W) canvas; it is applied
    identically to the image, the hands mask and every keypoint. With ``crop="hands"`` the cover
    crop is centred on the hands instead of the image centre. Each sample is a dict:
    - ``pixel_values``: (3, H, W) float32 in [-1, 1];
    - ``hands_mask``: (1, H, W) float32 in {0, 1};
    - ``body_keypoints``: (33, 3) float32 MediaPipe Pose [x, y, visibility] in canvas pixels
      (all zero with ``has_body`` False when no body was found);
    - ``openpose``: (18, 3) float32 OpenPose [x, y, score] in canvas pixels (score 0 = not drawn);
    - ``hand_keypoints``: (max_hands, 21, 3) float32 in canvas pixels; ``hand_valid`` (max_hands,)
      bool; ``handedness`` (max_hands,) int64 (0 left, 1 right, -1 unknown or padding);
    - ``transform``: (3,) float32 [scale, tx, ty]: canvas = scale * original + t (before the mirror of a
      flipped sample);
    - ``flipped``: bool, the sample was mirrored (``hflip``);
    - ``caption``, ``label``, ``image_id``: str; ``caption`` as chosen by ``caption``
      (``generated``, ``source`` or ``both``, as in `HandCropDataset`).

    ``hflip`` is the probability of mirroring a sample left to right, drawn per (seed, epoch, image), so
    a resumed run draws the same. A mirrored person's left hand is the original's right: besides image
    and mask, the body landmarks swap sides (`MEDIAPIPE_POSE_MIRROR`), each hand's handedness swaps, and
    the caption's "left" and "right" swap (`mirror_caption`). ``hflip=1`` mirrors every sample.

    The rendered pose condition is left to the trainer: `transform_for` gives the transform of
    any row, and `manifests.draw.draw_openpose` draws ``openpose``. Hands come from the hands shard
    with the same name as the image's shard (the writer keeps them together); an image whose
    ``num_hands`` disagrees with the rows found there raises `ManifestError`, as does an image with
    more than ``max_hands`` hands.
    """

    table = "images"
    columns = [
        "image_id",
        "width",
        "height",
        "image",
        "image_width",
        "image_height",
        "hands_mask",
        "body_keypoints",
        "caption",
        "label",
        "num_hands",
    ]
    hand_columns = ["image_id", "hand_index", "keypoints", "handedness"]

    def __init__(
        self,
        manifest: Manifest | str,
        *,
        resolution: int | tuple[int, int] = 512,
        fit: str = "cover",
        crop: str = "center",
        max_hands: int = 4,
        label=None,
        split=None,
        status="ok",
        filter=None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_window: int = 4,
        transform=None,
        caption: str = "generated",
        hflip: float = 0.0,
    ):
        super().__init__(
            manifest,
            label=label,
            split=split,
            status=status,
            filter=filter,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            shuffle_window=shuffle_window,
            transform=transform,
        )
        if crop not in ("center", "hands"):
            raise ValueError(f"crop must be 'center' or 'hands', got {crop!r}")
        self.out_h, self.out_w = (
            (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        )
        self.fit = fit
        self.crop = crop
        self.max_hands = int(max_hands)
        if not 0.0 <= float(hflip) <= 1.0:
            raise ValueError(f"hflip is a probability in [0, 1], got {hflip!r}")
        self.hflip = float(hflip)
        self._stream_epoch = 0
        self.caption = check_caption_choice(caption)
        if self.caption != "generated":
            self.columns = [*type(self).columns, "source_caption"]
        FitTransform.fit(1, 1, self.out_w, self.out_h, fit)  # checks the mode early
        self.hands = self.manifest.table("hands")
        self._hand_shards = {s.name: i for i, s in enumerate(self.hands.shards)}
        self._hand_cache: dict[str, dict[str, list]] = {}

    def _hands_of_shard(self, name: str) -> dict[str, list]:
        """image_id -> [(hand_index, keypoints, handedness), ...] for the hands shard `name`."""
        if name not in self._hand_cache:
            by_image: dict[str, list] = {}
            if name in self._hand_shards:
                idx = self._hand_shards[name]
                for unit in [u for u in self.hands.units() if u.shard == idx]:
                    for r in self.hands.read_unit(unit, self.hand_columns).to_pylist():
                        by_image.setdefault(r["image_id"], []).append(r)
            if len(self._hand_cache) >= 4:
                self._hand_cache.pop(next(iter(self._hand_cache)))
            self._hand_cache[name] = by_image
        return self._hand_cache[name]

    def worker_stream(self, worker: int, num_workers: int, epoch: int, skip: int = 0):
        self._stream_epoch = epoch  # the flip draws are per epoch; make_sample is given rows only
        yield from super().worker_stream(worker, num_workers, epoch, skip)

    def flips(self, image_id: str, epoch: int) -> bool:
        """Whether `image_id`'s sample of `epoch` is mirrored."""
        if self.hflip <= 0.0:
            return False
        return bool(epoch_rng(self.seed, epoch, zlib.crc32(image_id.encode())).random() < self.hflip)

    def transform_for(self, row: dict, hand_points: np.ndarray | None = None) -> FitTransform:
        """The transform of an images row (original pixels -> canvas); `hand_points` (N, >=2) set the
        focus when ``crop="hands"``."""
        focus = hands_focus(hand_points) if self.crop == "hands" else None
        return FitTransform.fit(*image_size(row), self.out_w, self.out_h, self.fit, focus)

    def make_sample(self, row: dict, unit: RowGroupUnit) -> dict:
        where = f"{url_for(self.source.fs, unit.path)} image {row['image_id']}"
        hands = sorted(
            self._hands_of_shard(unit.name).get(row["image_id"], []), key=lambda r: r["hand_index"] or 0
        )
        expected = int(row["num_hands"] or 0)
        if len(hands) != expected:
            raise ManifestError(
                f"{where}: num_hands={expected}, but hands/{unit.name} holds {len(hands)} rows for it"
            )
        if len(hands) > self.max_hands:
            raise ManifestError(f"{where}: {len(hands)} hands, more than max_hands={self.max_hands}")
        hand_kps = [hand_keypoints(h, finite=True) for h in hands]
        t = self.transform_for(row, np.concatenate(hand_kps) if hand_kps else None)

        image = t.warp(image_array(row))
        mask = (
            t.warp_mask(hands_mask_array(row))
            if row["hands_mask"] is not None
            else np.zeros((self.out_h, self.out_w), bool)
        )
        body = body_keypoints(row, finite=True)
        has_body = body is not None
        body = t.points(body) if has_body else np.zeros((33, 3), np.float32)
        openpose = to_openpose18(body) if has_body else np.zeros((18, 3), np.float32)
        sides = [h["handedness"] for h in hands]
        caption = choose_caption(row["caption"], row.get("source_caption"), self.caption)
        hand_kps = [t.points(kps) for kps in hand_kps]
        flipped = self.flips(row["image_id"], self._stream_epoch)
        if flipped:
            image, mask = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
            for kps in (body, *hand_kps) if has_body else hand_kps:
                kps[:, 0] = self.out_w - kps[:, 0]  # the continuous convention: pixel i spans [i, i + 1)
            body = body[MEDIAPIPE_POSE_MIRROR] if has_body else body
            openpose = to_openpose18(body) if has_body else openpose
            sides = [MIRRORED_SIDE.get(side, side) for side in sides]
            caption = mirror_caption(caption)
        hk = np.zeros((self.max_hands, 21, 3), np.float32)
        valid = np.zeros(self.max_hands, bool)
        handed = np.full(self.max_hands, -1, np.int64)
        for i, (side, kps) in enumerate(zip(sides, hand_kps)):
            hk[i], valid[i] = kps, True
            handed[i] = HANDEDNESS_CODES.get(side, -1)
        return {
            "pixel_values": to_pixel_values(image),
            "hands_mask": to_mask_tensor(mask),
            "body_keypoints": torch.from_numpy(body),
            "has_body": has_body,
            "openpose": torch.from_numpy(openpose),
            "hand_keypoints": torch.from_numpy(hk),
            "hand_valid": torch.from_numpy(valid),
            "handedness": torch.from_numpy(handed),
            "num_hands": len(hands),
            "transform": torch.from_numpy(t.params),
            "flipped": flipped,
            "caption": caption,
            "label": row["label"] or "",
            "image_id": row["image_id"],
        }


# Keeps the mixture's draws apart from the shuffles its sources make with the same seed.
