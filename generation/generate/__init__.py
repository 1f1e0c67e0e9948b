"""`handfirst-gen generate` as a Python API: requests from spec files, manifest rows, photos or replayed
sidecars, the two-stage pipeline, and the files written per image.

>>> from generation.generate import GenerateConfig, Sources, generate_batch
>>> result = generate_batch(Sources(spec=["pose.json"]), "out", "runs/hand", "runs/body",
...                         GenerateConfig(steps=30))

- `settings`: `GenerateConfig`, every setting (one CLI option each);
- `requests`: `Request` and the sources that build them (spec files, manifest rows, photos);
- `sidecars`: replay, a sidecar read back into its request, settings and models;
- `pipeline`: the pipeline loaded from two run folders and `generate_one`, one request's files
  (``NAME.png``, the ``NAME.json`` sidecar, ``NAME_overview.png``, ``NAME_stage1/``);
- `outputs`: where those files go, how they are written, the fingerprints and versions recorded;
- `batch`: `generate_batch`, the rules of a batch (one source, resume, ``failures.jsonl``).

NAME comes from input files (a spec's file stem, a photo's, a manifest's ``image_id``, a replayed
sidecar's ``name``), so every path is made by `manifests.names.path_in`, which refuses any NAME that is
not one plain file name: nothing is ever written outside the output folder.
"""

from ..spec import HandSpec
from .batch import BatchResult, Sources, UsageError, generate_batch
from .outputs import is_done, output_paths, save_png, versions, weights_fingerprint, write_image_and_sidecar
from .pipeline import (
    body_resolution,
    call_arguments,
    detect_for_overview,
    generate_one,
    hand_prompts_for,
    load_pipeline,
    model_record,
)
from .requests import (
    Request,
    RequestError,
    output_size,
    request_from_image,
    requests_from_manifest,
    requests_from_specs,
)
from .settings import GenerateConfig
from .sidecars import request_from_sidecar, settings_base

__all__ = [
    "BatchResult",
    "GenerateConfig",
    "HandSpec",
    "Request",
    "RequestError",
    "Sources",
    "UsageError",
    "body_resolution",
    "call_arguments",
    "detect_for_overview",
    "generate_batch",
    "generate_one",
    "hand_prompts_for",
    "is_done",
    "load_pipeline",
    "model_record",
    "output_paths",
    "output_size",
    "request_from_image",
    "request_from_sidecar",
    "requests_from_manifest",
    "requests_from_specs",
    "save_png",
    "settings_base",
    "versions",
    "weights_fingerprint",
    "write_image_and_sidecar",
]
