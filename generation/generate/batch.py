"""The batch runner behind `handfirst-gen generate`, with its rules for Python callers too.

- exactly one source (`Sources`): spec files, manifest rows, photos or replayed sidecars;
- every output name is a safe file name and no two requests share one; these and any other problem
  with the inputs stop the batch before anything is generated, so nothing is written outside the
  output folder;
- images already written (PNG plus sidecar) are skipped unless ``overwrite``, so an interrupted batch
  resumes; a replayed sidecar is always redone;
- a replay takes the model folders its first sidecar records unless others are given;
- under ``accelerate launch`` each process draws its share of the requests (`generation.processes`),
  with its own failures file;
- ``batch_size`` > 1 draws consecutive requests of one output size through stage 2 together
  (`stage2_groups`); a group with a bad request is drawn again one by one, so only that one fails;
- one bad request never stops the batch: it is recorded in ``failures.jsonl`` in the output folder
  (appended) and reported, and the others are written (a lone photo in which nothing is detected is
  an error instead: there are no others).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from manifests.settings import UsageError as CommandUsageError
from manifests.settings import flag

from ..processes import this_process
from ..selection import DEFAULT_SPLIT
from .outputs import is_done
from .pipeline import body_resolution, generate_group, generate_one, load_pipeline, model_record
from .requests import Request, RequestError, request_from_image, requests_from_manifest, requests_from_specs
from .settings import GenerateConfig
from .sidecars import request_from_sidecar, settings_base

logger = logging.getLogger(__name__)

FAILURES = "failures.jsonl"


class UsageError(CommandUsageError):
    """The arguments do not make one batch (not exactly one source, ``image_id`` without a manifest,
    no models): the CLI answers it like an argparse usage error, with exit code 2."""


@dataclass
class Sources:
    """Where a batch's requests come from: exactly one of `spec`, `from_manifest`, `from_image` and
    `replay`, named as the CLI options are (``--from-manifest`` is `from_manifest`, and so in errors);
    `image_id`, `split` and `limit` choose manifest rows (see `requests_from_manifest`)."""

    spec: list[str] | None = None
    from_manifest: str | None = None
    image_id: list[str] | None = None
    split: str | None = DEFAULT_SPLIT
    limit: int | None = None
    from_image: list[str] | None = None
    replay: list[str] | None = None

    def __post_init__(self) -> None:
        given = [name for name in SOURCES if getattr(self, name)]
        if len(given) != 1:
            raise UsageError(f"give exactly one of {', '.join(flag(name) for name in SOURCES)}")
        if self.image_id and not self.from_manifest:
            raise UsageError(f"{flag('image_id')} needs {flag('from_manifest')}")

    @property
    def kind(self) -> str:
        return next(name for name in SOURCES if getattr(self, name))

    @classmethod
    def from_args(cls, args) -> Sources:
        """The sources of parsed ``handfirst-gen generate`` arguments."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


@dataclass
class BatchResult:
    """Names written, skipped (already done) and failed (``{"name", "source", "error"}`` each)."""

    out_dir: str
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    failures_file: str = FAILURES  # this process's (`ProcessShare.failures_file`)

    @property
    def failures_path(self) -> str:
        return os.path.join(self.out_dir, self.failures_file)


# (a request, the settings to make it with)
Item = tuple[Request, GenerateConfig]


@dataclass
class _Batch:
    """What a source needs to build its requests."""

    sources: Sources
    settings: GenerateConfig
    fit: str | None  # how the body model framed its training images (None: not recorded)
    pipe_size: int
    fail: Callable[[str, dict, Exception, str], None]

    @property
    def seed(self) -> int:
        return self.settings.seed if self.settings.seed is not None else 0


def _from_specs(batch: _Batch) -> list[Item]:
    return [(r, batch.settings) for r in requests_from_specs(batch.sources.spec)]


def _from_manifest(batch: _Batch) -> list[Item]:
    settings, src = batch.settings, batch.sources
    # Without --size, rows are drawn whole at the scale the body model was trained at, so hands are as
    # large as in its training crops (docs/fidelity.md, "Framing"); --size is the longer side. With
    # --framing hands, each row is the trainer's square itself (side --size, default the training side).
    size = batch.pipe_size if settings.size is None else settings.size
    fit = None
    if settings.framing == "hands":
        fit = batch.fit or "cover"  # the trainer's square; train-body frames with cover by default
    elif settings.size is None:
        if batch.fit is None:
            raise UsageError(
                "the body model records no fit (how train-body framed its images), so its training scale is "
                f"unknown: pass {flag('size')}, or retrain it"
            )
        fit = batch.fit
    requests = requests_from_manifest(
        src.from_manifest, src.image_id, size, src.split, src.limit, batch.seed, fit, settings.framing
    )
    return [(r, settings) for r in requests]


def _from_images(batch: _Batch) -> list[Item]:
    """A photo in which nothing is detected is a failure of that photo only (unless it is the only one)."""
    from manifests.names import unsafe_name
    from prep import detection_config, get_annotator

    settings, paths = batch.settings, batch.sources.from_image
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    for path, stem in zip(paths, stems):
        unsafe = unsafe_name(stem, "output name (the photo's file name)")
        if unsafe:
            raise RequestError(f"{path}: {unsafe}")
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise RequestError(
            f"several photos share the name(s) {clashes}; their outputs would overwrite each other"
        )
    detector = get_annotator(detection_config())
    size = batch.pipe_size if settings.size is None else settings.size
    items = []
    for path, name in zip(paths, stems):
        try:
            request = request_from_image(path, size, batch.seed, settings.prompt, settings.gesture, detector)
            items.append((request, settings))
        except RequestError as exc:
            if len(paths) == 1:
                raise
            batch.fail(name, {"kind": "image", "path": path}, exc, str(exc))
    return items


def _from_replays(batch: _Batch) -> list[Item]:
    items = []
    for path in batch.sources.replay:
        request, settings, _ = request_from_sidecar(path)
        settings.overwrite = True  # a replay is asked for by name: always redone
        items.append((request, settings))
    return items


# source (a `Sources` field) -> its requests, each with the settings to make it with
SOURCES: dict[str, Callable[[_Batch], list[Item]]] = {
    "spec": _from_specs,
    "from_manifest": _from_manifest,
    "from_image": _from_images,
    "replay": _from_replays,
}


def stage2_groups(items: list[Item], batch_size: int) -> list[list[Item]]:
    """Consecutive requests of one output size and the same settings, at most `batch_size` a group:
    what stage 2 can draw as one batch."""
    groups: list[list[Item]] = []
    for item in items:
        last = groups[-1] if groups else None
        if last and len(last) < batch_size and _group_key(last[0]) == _group_key(item):
            last.append(item)
        else:
            groups.append([item])
    return groups


def _group_key(item: Item) -> tuple:
    request, item_settings = item
    return (request.spec.width, request.spec.height, id(item_settings))


def _log_failure(name: str, exc: Exception) -> None:
    logger.warning("%s: %s", name, exc)


def generate_batch(
    sources: Sources,
    out_dir: str,
    hand_model: str | None = None,
    body_model: str | None = None,
    settings: GenerateConfig | None = None,
    progress: bool = True,
    on_failure: Callable[[str, Exception], None] = _log_failure,
) -> BatchResult:
    """Generate every request of `sources` into `out_dir` with the two-stage pipeline.

    `settings` default to a replay's first sidecar's, else `GenerateConfig()`; each replayed image
    is redone with its own sidecar's settings. `on_failure(name, error)` hears of each failed request
    as it fails (default: a logged warning). Raises `UsageError`, or `ValueError` / `OSError` (bad
    settings, model folders, specs, manifest rows, names) before anything is generated; a request that
    fails later is recorded in the result and in ``failures.jsonl``, never raised.
    """
    from manifests.progress import progress_bar

    if settings is None:
        settings = GenerateConfig.from_dict(settings_base(replay=sources.replay) or {})
    settings.validate()  # every setting in range before loading anything
    if sources.replay and not (hand_model and body_model):
        models = request_from_sidecar(sources.replay[0])[2]
        hand_model, body_model = hand_model or models["hand"]["path"], body_model or models["body"]["path"]
    if not hand_model or not body_model:
        raise UsageError(f"{flag('hand_model')} and {flag('body_model')} are required")
    if settings.framing != "whole" and sources.kind not in ("from_manifest", "replay"):
        raise UsageError(
            f"{flag('framing')} {settings.framing} frames manifest rows: it needs {flag('from_manifest')}"
        )
    share = this_process()
    pipe = load_pipeline(hand_model, body_model, settings, device=share.device)

    result = BatchResult(out_dir, failures_file=share.failures_file(FAILURES))

    def fail(name: str, source: dict, exc: Exception, error: str) -> None:
        result.failures.append({"name": name, "source": source, "error": error})
        on_failure(name, exc)

    items = SOURCES[sources.kind](_Batch(sources, settings, pipe.config.fit, body_resolution(pipe), fail))
    # Spec files and photos are refused by name before this with their own message; this catches the
    # rest (two replayed sidecars of one name).
    counts = Counter(request.name for request, _ in items)
    clashes = sorted(name for name, n in counts.items() if n > 1)
    if clashes:
        raise RequestError(
            f"several requests share the name(s) {clashes}; their outputs would overwrite each other"
        )
    if share.index:
        result.failures.clear()  # requests that failed before the split are process 0's to record
    items = share.take(items)
    models = model_record(pipe, hand_model, body_model)
    annotator = None
    if settings.detect:
        from prep import detection_config, get_annotator

        annotator = get_annotator(detection_config())

    os.makedirs(out_dir, exist_ok=True)
    bar = progress_bar(total=len(items), desc="generate", unit="img", enabled=progress and len(items) > 1)
    t0 = time.perf_counter()

    def draw_one(request: Request, item_settings: GenerateConfig) -> None:
        try:
            generate_one(pipe, request, item_settings, out_dir, models, annotator, share.record())
            result.written.append(request.name)
        except ValueError as exc:  # HandTooSmallError, SpecError, CostLimitError, ... of this request
            fail(request.name, request.source, exc, f"{type(exc).__name__}: {exc}")

    pending = []
    for request, item_settings in items:
        if not item_settings.overwrite and is_done(out_dir, request.name):
            result.skipped.append(request.name)
            bar.update()
        else:
            pending.append((request, item_settings))
    for group in stage2_groups(pending, settings.batch_size):
        if len(group) == 1:
            draw_one(*group[0])
        else:
            try:
                requests = [request for request, _ in group]
                generate_group(pipe, requests, group[0][1], out_dir, models, annotator, share.record())
                result.written.extend(r.name for r in requests)
            except ValueError:  # one bad request: draw the group one by one, so only it fails
                for request, item_settings in group:
                    draw_one(request, item_settings)
        bar.update(len(group))
        elapsed = time.perf_counter() - t0
        bar.set_postfix(s_per_img=f"{elapsed / max(len(result.written), 1):.2f}", failed=len(result.failures))
    bar.close()
    if result.failures:
        with open(result.failures_path, "a", encoding="utf-8") as f:
            for item in result.failures:
                f.write(json.dumps(item, default=str) + "\n")
    return result
