"""What a source adapter yields: one record per image, with whatever the dataset already annotates.

Records are small, picklable and carry no pixels: a Dask task receives a shard's records and reads
each image itself through fsspec, so no image data ever passes through the scheduler. The one
exception is made inside a worker: a source read unit by unit (a tar, a Parquet row group; see
`prep.sources.units`) expands its unit there, and its records carry the sample's bytes in `data`,
read once from the container; such records never travel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class HandAnnotation:
    """What a dataset already knows about one hand. Every field is optional."""

    keypoints: np.ndarray | None = None  # (21, 3) float [x, y, v] in original image pixels, MediaPipe order
    bbox: list[float] | None = None  # [x0, y0, x1, y1] in original image pixels
    handedness: str | None = None  # "left" / "right"


@dataclass
class ImageRecord:
    """One input image. `source_uri` is an fsspec URI or local path; `image_id` is stable and filename-safe."""

    image_id: str
    source_uri: str
    dataset: str
    split: str | None = None
    label: str | None = None
    subject_id: str | None = None
    hands: list[HandAnnotation] = field(default_factory=list)
    # True when the hands' keypoints/bbox are fractions of the image's (width, height) rather than pixels
    # (HaGRID). The annotator converts them to pixels once it has decoded the image, so enumerating a
    # dataset never opens an image and each image is read once.
    normalized: bool = False
    # Why the source could not make a usable record (path traversal, malformed annotation entry, ...).
    # The worker turns such a record into a status="error" images row without reading anything.
    error: str | None = None
    # What the source itself says about the sample (img2dataset's key, download URL and caption).
    source_key: str | None = None
    source_url: str | None = None
    source_caption: str | None = None
    # The encoded image, when the worker has it from a container member or a Parquet cell; decoded
    # under the same byte and pixel bounds as a file (`prep.imageio.load_image`).
    data: bytes | None = field(default=None, repr=False)
