"""FID/KID of the whole images and FID-H/KID-H of hand crops (`generation.evaluate.feature_distance`'s maths).

Both need the FID InceptionV3 weights (``--inception``), loaded once and shared. The real side is the
manifest's stored images; hand crops are cut at the target hands' ``crop_box`` from the real and the
generated image alike, resampled to `EvalConfig.hand_crop_size`. When the generated images are the
real ones, each batch's features are extracted once and used for both sides.
"""

from __future__ import annotations

import numpy as np

from ..detect import REAL
from ..framing import FrameMap
from ..registry import Column, Metric, MetricUnavailable, PixelSample, register


def crop(image: np.ndarray, box, fmap, size: int) -> np.ndarray:
    """Cut `box` ([x0, y0, x1, y1] in target-frame pixels) out of `image`, whose pixels `fmap` (a
    `framing.FrameMap`) maps the frame to, as a `size` x `size` square."""
    from PIL import Image

    return np.asarray(
        Image.fromarray(image).transform(
            (size, size), Image.EXTENT, tuple(fmap.box_to_image(box)), resample=Image.BILINEAR, fillcolor=0
        )
    )


def whole_images(sample: PixelSample, config) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(sample.real, sample.generated)]


def hand_crops(sample: PixelSample, config) -> list[tuple[np.ndarray, np.ndarray]]:
    size = config.hand_crop_size
    out = []
    real_map = FrameMap.whole(sample.frame, sample.real.shape[1::-1])
    for box in sample.hand_boxes:
        real = crop(sample.real, box, real_map, size)
        out.append((real, real if sample.same else crop(sample.generated, box, sample.generated_map, size)))
    return out


class Distance:
    """Inception features of (real, generated) pairs, batch by batch; FID and KID at the end."""

    def __init__(self, ctx, views, what: str, suffix: str):
        from ..feature_distance import DistributionDistance, KIDConfig

        config = ctx.config
        net = ctx.models["inception"]
        kid = KIDConfig(subsets=config.kid_subsets, subset_size=config.kid_subset_size)
        self.distance = DistributionDistance(net, net.num_features, kid=kid, device=config.device)
        self.ctx, self.views, self.what, self.suffix = ctx, views, what, suffix
        self._pending: list[tuple[np.ndarray, np.ndarray, bool]] = []

    def update(self, sample: PixelSample) -> None:
        self._pending += [(real, fake, sample.same) for real, fake in self.views(sample, self.ctx.config)]
        if len(self._pending) >= self.ctx.config.batch_size:
            self._flush()

    def _flush(self) -> None:
        step = self.ctx.config.batch_size
        while self._pending:
            batch, self._pending = self._pending[:step], self._pending[step:]
            real = self.distance.features([b[0] for b in batch])
            # Scoring the real images: both sides are the same pixels, so extract their features once.
            same = all(b[2] for b in batch)
            self.distance.update_features(real, real=True)
            self.distance.update_features(
                real if same else self.distance.features([b[1] for b in batch]), real=False
            )

    def result(self) -> dict:
        self._flush()
        if self.ctx.generated == REAL and not self.suffix:
            self.ctx.note(
                "generated = real: FID/KID compare the real images with themselves (0 by construction)"
            )
        try:
            r = self.distance.compute(seed=self.ctx.config.seed)
        except ValueError as exc:  # fewer than 2 images (or crops) on a side
            raise MetricUnavailable(f"{self.what}: {exc}") from None
        s = self.suffix
        return {f"fid{s}": r["fid"], f"kid{s}": r["kid"], f"kid{s}_std": r["kid_std"]}


register(
    Metric(
        name="fid",
        make=lambda ctx: Distance(ctx, whole_images, "images", ""),
        columns=(Column("FID ↓", ("fid",), False, "f2"), Column("KID×10³ ↓", ("kid",), False, "kid")),
        null={"fid": None, "kid": None, "kid_std": None},
        weights="inception",
        source="pixels",
        order=30,
    )
)

register(
    Metric(
        name="fid_hands",
        make=lambda ctx: Distance(ctx, hand_crops, "hand crops", "_hands"),
        columns=(
            Column("FID-H ↓", ("fid_hands",), False, "f2"),
            Column("KID-H×10³ ↓", ("kid_hands",), False, "kid"),
        ),
        null={"fid_hands": None, "kid_hands": None, "kid_hands_std": None},
        weights="inception",
        source="pixels",
        legend="KID and KID-H ×10³; FID-H/KID-H on square hand crops from the target hands' crop boxes.",
        order=40,
    )
)
