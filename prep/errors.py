"""Exceptions of the per-image annotator.

The runner turns any exception raised for one image into an `images` row with ``status="error"`` and
``error="ExcType: message"`` (see `prep.annotate.error_row`), so every message names the file and the
reason in words a user can act on.
"""

from __future__ import annotations


class PrepError(Exception):
    """Base class of every error the annotator raises on purpose."""


class ImageReadError(PrepError):
    """The image's bytes could not be read (missing file, permission, network)."""


class ImageDecodeError(PrepError):
    """The bytes are not a decodable image: empty, truncated, corrupt or another kind of file."""


class ImageTooLargeError(PrepError):
    """The image header declares more pixels than `PrepConfig.max_pixels` (decompression-bomb guard)."""


class AnnotationError(PrepError):
    """A record's own annotation (keypoints, boxes) is malformed."""


class ModelLoadError(PrepError):
    """A model (SAM checkpoint) could not be loaded."""
