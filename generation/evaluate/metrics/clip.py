"""CLIP score of the generated images against the manifest's image captions (`clip_score.ClipScorer`).

Needs a local CLIP model folder (``--clip``). Images without a caption are left out, with a note.
"""

from __future__ import annotations

import numpy as np

from ..registry import Column, Metric, MetricUnavailable, PixelSample, register


class ClipScore:
    def __init__(self, ctx):
        self.ctx = ctx
        self.scorer = ctx.models["clip"]
        self.scores: list[float] = []
        self.no_caption = 0
        self._pending: list[tuple[np.ndarray, str]] = []

    def update(self, sample: PixelSample) -> None:
        if not sample.caption:
            self.no_caption += 1
            return
        self._pending.append((sample.generated, sample.caption))
        if len(self._pending) >= self.ctx.config.batch_size:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self.scores += self.scorer.scores([b[0] for b in batch], [b[1] for b in batch]).tolist()

    def result(self) -> dict:
        self._flush()
        if self.no_caption:
            self.ctx.note(f"{self.no_caption} images without a caption were left out of the CLIP score")
        if not self.scores:
            raise MetricUnavailable("no evaluated image has a caption")
        return {"clip_score": float(np.mean(self.scores))}


register(
    Metric(
        name="clip_score",
        make=ClipScore,
        columns=(Column("CLIP ↑", ("clip_score",), True, "f2"),),
        null={"clip_score": None},
        weights="clip",
        source="pixels",
        order=50,
    )
)
