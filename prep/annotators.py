"""The annotator registry: which class turns an image record into manifest rows, and this process's copy.

`config.annotator` is a name from `ANNOTATORS` or an explicit "module:Class" (the module also defines
`error_row`), given by the user through the CLI or the Python API. Code that builds a config from
settings it read (a manifest's `_manifest.json`) must not copy this field: importing a named module
runs it (see `generation.evaluate.detection.detection_prep_config`).

The annotator (MediaPipe, SAM, ...) is built once per process and cached at module level, keyed by
the annotator name and the settings fingerprint; Dask tasks carry only records and the config, never
models or pixels. `get_annotator(detection_config(config))` is the same annotator set to find poses
only, which is how evaluation and generation detect.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import threading
import time

from .config import PrepConfig
from .native_logs import filter_native_stderr, in_dask_worker

logger = logging.getLogger(__name__)

ANNOTATORS = {"mediapipe": "prep.annotate:Annotator"}
DEFAULT_ANNOTATOR = "mediapipe"

_CACHE: dict[tuple[str, str], object] = {}
_LOCK = threading.Lock()


class AnnotatorError(ValueError):
    """`config.annotator` names no registered annotator and no importable module:Class."""


def annotator_target(name: str) -> tuple[str, str]:
    """(module, class) for an annotator name from `ANNOTATORS` or an explicit "module:Class"."""
    target = ANNOTATORS.get(name, name)
    module_name, sep, class_name = str(target).partition(":")
    if not sep or not module_name or not class_name:
        raise AnnotatorError(
            f"annotator {name!r}: expected one of {sorted(ANNOTATORS)} or an explicit module:Class"
        )
    return module_name, class_name


def annotator_module(config: PrepConfig):
    """The module of `config.annotator` (a registry name or "module:Class") and the class in it."""
    module_name, class_name = annotator_target(config.annotator)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AnnotatorError(
            f"annotator {config.annotator!r}: cannot import {module_name!r} ({exc})"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None or not hasattr(module, "error_row"):
        raise AnnotatorError(
            f"annotator {config.annotator!r}: module {module_name!r} lacks "
            + ("class " + repr(class_name) if cls is None else "error_row")
        )
    return module, cls


def get_annotator(config: PrepConfig):
    """This process's annotator for `config`, built on first use (models load once per worker)."""
    key = (config.annotator, config.fingerprint() + "|" + config.device)
    with _LOCK:
        if key not in _CACHE:
            _, cls = annotator_module(config)
            if in_dask_worker():  # MediaPipe's native log lines would flood the run's output
                filter_native_stderr()
            t0 = time.perf_counter()
            _CACHE[key] = cls(config)
            logger.info("pid %d built %s in %.2f s", os.getpid(), config.annotator, time.perf_counter() - t0)
        return _CACHE[key]


def detection_config(config: PrepConfig | None = None) -> PrepConfig:
    """`config` (default: prep's defaults) set to detect keypoints and make no masks: poses only.

    Its annotator's ``detect(image)`` maps (H, W, 3) uint8 RGB pixels to (hands, body) as prep finds
    them: the body first, then the hands with the wrist-guided second pass."""
    return dataclasses.replace(config or PrepConfig(), keypoint_source="detect", mask_method="none")
