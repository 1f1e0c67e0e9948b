"""The metric registry: every evaluation metric is one `Metric` entry in one file of `metrics/`.

An entry declares

- its ``name``;
- the ``weights`` it needs: a key of `WEIGHTS` (an `EvalConfig` field holding a local path, such as
  ``inception`` or ``clip``), or None. Each weights file is loaded once per run and shared by every
  metric that names it; without the path the metric's values are null and ``reasons`` says why;
- ``make(context)``, which builds the run's accumulator, an object with ``update(sample)`` (fed one
  image at a time; it may return per-image fields for ``per_image.jsonl``) and ``result()`` (the
  report entries; a nested dict such as ``{"hands": {...}}`` merges into that block of the report);
- ``source``: what `update` is fed. ``"detections"``: a `PoseSample` per evaluated image, after
  detection; ``"pixels"``: a `PixelSample` (the real and the generated pixels) in the image-quality
  pass, which runs only when some pixel metric runs (has its weights, if it needs any);
- ``columns``: its report columns (`Column`: header, path into the report, ranking, format);
- ``null``: the report entries when it is not computed; ``legend``: the line that explains its
  columns under the Markdown table; ``order``: its place in the table.

A metric that cannot give a value raises `MetricUnavailable` from `result`; the report then holds its
``null`` entries and ``reasons[column key]`` the message. `generation.evaluate.metrics` imports every
module of its folder, so a new metric is one file there (plus its test).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

SOURCES = ("detections", "pixels")

# How a column prints its value.
FORMATS: dict[str, Callable[[Any], str]] = {
    "pct": lambda v: f"{100 * v:.1f}",
    "kid": lambda v: f"{1000 * v:.2f}",
    "int": lambda v: str(int(v)),
    "f1": lambda v: f"{v:.1f}",
    "f2": lambda v: f"{v:.2f}",
    "f3": lambda v: f"{v:.3f}",
}


@dataclass(frozen=True)
class Column:
    """One report column: its header, where its value sits in the report, its ranking and format."""

    header: str
    path: tuple[str, ...]  # keys into the report
    higher_is_better: bool | None  # None: not ranked (counts)
    fmt: str  # a `FORMATS` key: "pct" (x100, 1 decimal), "f1", "f2", "f3", "kid" (x1000, 2 decimals), "int"

    def __post_init__(self):
        if self.fmt not in FORMATS:
            raise ValueError(
                f"column {self.header!r}: fmt must be one of {sorted(FORMATS)}, got {self.fmt!r}"
            )

    def format(self, value) -> str:
        """The cell text of `value` ('–' for a value not computed)."""
        return "–" if value is None else FORMATS[self.fmt](value)

    @property
    def key(self) -> str:
        """The column's name in ``reasons``: its path joined with dots (``fid``, ``hands.wrist_gap``)."""
        return ".".join(self.path)


@dataclass(frozen=True)
class Weights:
    """A local model file named by an `EvalConfig` field (the `WEIGHTS` key)."""

    load: Callable[[str, str], Any]  # (path, device) -> the loaded model
    missing: str  # the reason recorded for every metric that needs it when no path is given


def _load_inception(path: str, device: str):
    from . import feature_distance  # looked up at call time, so a stand-in network can replace the loader

    return feature_distance.load_inception(path, device)


def _load_clip(path: str, device: str):
    from .clip_score import ClipScorer

    return ClipScorer(path, device)


WEIGHTS: dict[str, Weights] = {
    "inception": Weights(
        _load_inception, "no Inception weights given (--inception PATH to a local FID InceptionV3 .pth)"
    ),
    "clip": Weights(_load_clip, "no CLIP checkpoint given (--clip PATH to a local CLIP model folder)"),
}


@dataclass
class PoseSample:
    """What a ``detections`` metric sees of one evaluated image (all in target-frame pixels)."""

    image_id: str
    detections: Any  # detect.ImageDetections: hands, body, error
    target_hands: list  # manifests.matching.Instance of the manifest's hands
    target_body: np.ndarray | None  # (33, 3) MediaPipe Pose [x, y, visibility] of the manifest, or None


@dataclass
class PixelSample:
    """What a ``pixels`` metric sees of one evaluated image."""

    image_id: str
    real: np.ndarray  # (H, W, 3) uint8: the manifest's stored image
    generated: np.ndarray  # (H', W', 3) uint8; the very same array as `real` when scoring the real images
    frame: tuple[int, int]  # (width, height) of the target frame the boxes are in
    hand_boxes: list  # crop boxes [x0, y0, x1, y1] of the target hands, target-frame pixels
    caption: str | None
    target_hands: list = field(default_factory=list)  # manifests.matching.Instance of the target hands
    hands_mask: np.ndarray | None = None  # (H, W) bool: the manifest's hand mask of the real frame
    frame_map: Any = None  # framing.FrameMap, target frame -> `generated`; None: the whole frame

    @property
    def same(self) -> bool:
        return self.generated is self.real

    @property
    def generated_map(self):
        """The `framing.FrameMap` from the target frame to `generated`."""
        from .framing import FrameMap

        return self.frame_map or FrameMap.whole(self.frame, self.generated.shape[1::-1])


@dataclass
class Context:
    """What `Metric.make` gets: the run's settings, the loaded weights, and where notes go."""

    config: Any  # EvalConfig
    generated: str  # the generated folder, or "real"
    models: dict[str, Any] = field(default_factory=dict)  # WEIGHTS key -> loaded model
    notes: list[str] = field(default_factory=list)
    detector: Any = None  # the run's `detect.DETECTORS` entry
    prep_config: Any = None  # the PrepConfig it detects with
    _detector_model: Any = None

    def note(self, text: str) -> None:
        self.notes.append(text)

    def detector_model(self):
        """The run's detector model in this process (loaded on first use, through prep's cache)."""
        if self._detector_model is None:
            from .detect import AnnotatorDetector

            entry = self.detector or AnnotatorDetector(self.prep_config.annotator)
            self._detector_model = entry.load(self.prep_config)
        return self._detector_model


class MetricUnavailable(Exception):
    """Raised by `result()` when the metric has no value for this run; the message says why.

    `entries` (counts, say) are reported over the metric's ``null`` entries."""

    def __init__(self, why: str, entries: Mapping | None = None):
        super().__init__(why)
        self.entries = dict(entries or {})


class Accumulator(Protocol):
    def update(self, sample) -> dict | None: ...

    def result(self) -> dict: ...


@dataclass(frozen=True)
class Metric:
    name: str
    make: Callable[[Context], Accumulator]
    columns: tuple[Column, ...] = ()
    null: Mapping[str, Any] = field(default_factory=dict)
    weights: str | None = None
    source: str = "detections"
    legend: str | None = None
    order: float = 100.0

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"metric {self.name}: source must be one of {SOURCES}, got {self.source!r}")
        if self.weights is not None and self.weights not in WEIGHTS:
            raise ValueError(
                f"metric {self.name}: weights must be one of {sorted(WEIGHTS)}, got {self.weights!r}"
            )


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add `metric` to `METRICS` (a name registered twice is a mistake, not an override)."""
    if metric.name in METRICS and METRICS[metric.name] is not metric:
        raise ValueError(f"metric {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


def merge(into: dict, entries: Mapping) -> dict:
    """Merge report `entries` into `into`; nested dicts (the ``hands`` block, say) merge key by key."""
    for key, value in entries.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = merge({}, value) if isinstance(value, Mapping) else value
    return into
