"""Annotators for the runner tests: they read each image through fsspec like the real one but fake the
models, and can kill their own worker process on demand.

A record whose image has a sibling file `<image>.die` kills the worker process every time it is
annotated; one with `<image>.die-once` kills it once (the marker is removed first), so a retry on a
restarted worker succeeds. One with `<image>.block` creates `<image>.blocked` and waits while the
`.block` file exists (a run that is still busy when a test interrupts it).
"""

from __future__ import annotations

import os
import time

import numpy as np
from PIL import Image

from manifests.storage import filesystem


def _maybe_die(uri: str) -> None:
    if os.path.exists(uri + ".block"):
        open(uri + ".blocked", "w").close()  # tells a test that a worker is busy with this image
        while os.path.exists(uri + ".block"):
            time.sleep(0.05)
    if os.path.exists(uri + ".die"):
        os._exit(17)
    if os.path.exists(uri + ".die-once"):
        os.remove(uri + ".die-once")
        os._exit(17)


class StandInAnnotator:
    built = 0  # instances made in this process (models must load once per worker)

    def __init__(self, config):
        StandInAnnotator.built += 1
        self.config = config
        self.timings = {"decode": 0.0, "hands": 0.0}

    def annotate(self, record):
        _maybe_die(record.source_uri)
        t0 = time.perf_counter()
        fs, path = filesystem(record.source_uri)
        with fs.open(path, "rb") as f, Image.open(f) as im:
            im.load()
            width, height = im.size
        t1 = time.perf_counter()
        self.timings["decode"] += t1 - t0
        hands = []
        for i, h in enumerate(record.hands):
            kp = None if h.keypoints is None else np.asarray(h.keypoints, dtype=np.float32).tolist()
            hands.append(
                {
                    "hand_id": f"{record.image_id}_h{i}",
                    "image_id": record.image_id,
                    "hand_index": i,
                    "handedness": h.handedness,
                    "keypoints": kp,
                    "keypoint_source": "annotation",
                    "bbox": None if h.bbox is None else [float(v) for v in h.bbox],
                    "label": record.label,
                }
            )
        self.timings["hands"] += time.perf_counter() - t1
        row = _base_row(record)
        row.update(width=width, height=height, status="ok" if hands else "no_hands", num_hands=len(hands))
        return row, hands


def _base_row(record) -> dict:
    return {
        "image_id": record.image_id,
        "source_uri": record.source_uri,
        "dataset": record.dataset,
        "split": record.split,
        "label": record.label,
        "subject_id": record.subject_id,
    }


def error_row(record, exc) -> dict:
    return {**_base_row(record), "status": "error", "error": f"{type(exc).__name__}: {exc}", "num_hands": 0}
