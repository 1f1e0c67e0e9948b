"""`prep.run(...)`: check the settings, plan shards, run one Dask task per shard (`prep.cluster`),
finalize the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from contextlib import ExitStack

from manifests.schema import TABLES
from manifests.settings import SettingError, flag
from manifests.storage import filesystem, join, read_json
from manifests.writer import MANIFEST_FILE, ManifestWriter, shard_name

from . import plan_cache
from .annotators import annotator_module
from .cluster import (
    PATH_SETTINGS,
    PROCESS_LOCAL_PROTOCOLS,
    ClusterSetupError,
    dask_client,
    run_shards,
    ship_config,
    uses_sam,
)
from .config import PrepConfig
from .errors import ModelLoadError
from .lock import LOCK_FILE, OutputLock, OutputLockedError
from .plan import ResumePlan, Shard, pending_shards, plan_shards, plan_units
from .sources import AnnotationFileError, input_identity, load_records, load_units
from .sources.base import open_input, run_outputs

logger = logging.getLogger(__name__)


class OutputError(ValueError):
    """The output location cannot hold a manifest (a regular file, not writable)."""


# What a run raises, before any work, for a setting or input it cannot use: the CLI prints each as one line.
SETUP_ERRORS = (
    FileNotFoundError,
    AnnotationFileError,
    ValueError,
    ClusterSetupError,
    ModelLoadError,
    OutputLockedError,
)


def make_config(config: PrepConfig | None = None, **kwargs) -> PrepConfig:
    """A validated PrepConfig from a config and/or keyword overrides; unknown keywords are an error."""
    names = {f.name for f in dataclasses.fields(PrepConfig)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(f"unknown prep settings: {unknown}")
    if config is None:
        config = PrepConfig(**kwargs)
    elif kwargs:  # a bare replace() would also drop attributes set on the instance
        config = dataclasses.replace(config, **kwargs)
    config.validate()
    if config.input is None:
        raise SettingError("input (--input) must be set: the dataset to annotate")
    return config


def _write_preview(config: PrepConfig) -> str | None:
    """Render the manifest's preview sheet to `config.preview`; a failure is logged, not raised."""
    try:
        from manifests.preview import make_preview

        make_preview(config.out, out=config.preview)
    except Exception as exc:  # noqa: BLE001 - the manifest is written; a missing picture must not hide that
        logger.error("could not write the preview sheet %s: %s: %s", config.preview, type(exc).__name__, exc)
        return None
    return config.preview


def remove_shard(writer: ManifestWriter, index: int) -> None:
    """Delete whatever a failed shard left (a table file written before its worker died), so the
    manifest on disk holds complete shards only until a rerun redoes it."""
    for path in writer.remove_shard(index):
        logger.warning("removed %s left by failed %s", path, shard_name(index))


# --------------------------------------------------------------------------- checks before any work


def check_annotator(config: PrepConfig) -> None:
    """The annotator class imports (on the driver, before any worker tries)."""
    try:
        annotator_module(config)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"--annotator {config.annotator}: cannot import it: {type(exc).__name__}: {exc}"
        ) from None


def check_sam(config: PrepConfig) -> None:
    """A run that masks with SAM has a checkpoint that exists and loads into `sam_model_type`.

    Checked on the driver, once: otherwise every worker would fail to load it and turn every hand into
    an error row, and those rows would be kept as complete shards.
    """
    if not uses_sam(config):
        return
    from .masks import load_sam

    if not config.sam_checkpoint:
        raise ModelLoadError("--mask-method sam needs a checkpoint (--sam-checkpoint PATH)")
    load_sam(config.sam_model_type, config.sam_checkpoint, "cpu")  # raises ModelLoadError naming the file


def check_output(config: PrepConfig) -> None:
    """`out` can be a manifest folder (checked before reading any input): not a regular file, not in
    this process's memory (no path setting may be: the workers are other processes), and no
    `_manifest.json` there that is not a handfirst manifest's (finalize would replace it)."""
    for name in PATH_SETTINGS:
        value = getattr(config, name, None)
        protocols = filesystem(str(value))[0].protocol if value else ()
        if set([protocols] if isinstance(protocols, str) else protocols) & set(PROCESS_LOCAL_PROTOCOLS):
            raise OutputError(
                f"{flag(name)} {value} is held in this process's memory, which prep's workers (other "
                "processes) do not share: give a local path or a store every worker reaches (s3://...)"
            )
    fs, path = filesystem(config.out)
    if fs.isfile(path):
        raise OutputError(f"--out {config.out} is a file, not a folder: give a folder for the manifest")
    in_fs, in_path = open_input(config.input)
    if in_fs.isdir(in_path) and run_outputs(config, in_fs, in_path)("."):
        raise OutputError(
            f"--out {config.out} is the --input folder itself: its tables would be read back as input; "
            "give another folder (one inside the input is fine: it is never read)"
        )
    for table in (None, *TABLES):
        mpath = join(path, *([table] if table else []), MANIFEST_FILE)
        if not fs.exists(mpath):
            continue
        why = foreign_summary(fs, mpath, table)
        if why:
            shown = join(config.out, *([table] if table else []), MANIFEST_FILE)
            raise OutputError(
                f"--out {config.out} holds {shown}, which is not a handfirst manifest's ({why}); "
                "use another --out, or move that file away"
            )


def foreign_summary(fs, path: str, table: str | None) -> str | None:
    """Why the `_manifest.json` at `path` is not one a handfirst writer wrote (for `table`, or the
    root's when None), or None when it is."""
    try:
        info = read_json(fs, path)
    except (OSError, ValueError) as exc:
        return " ".join(str(exc).removeprefix(f"{path}: ").split())[:200]
    if not isinstance(info, dict) or "schema_version" not in info:
        return "not a JSON object with a schema_version"
    if table is None and not isinstance(info.get("tables"), dict):
        return "no 'tables' summary"
    if table is not None and info.get("table") != table:
        return f"it does not describe the {table!r} table"
    return None


def open_output(config: PrepConfig, writer: ManifestWriter) -> None:
    """Create the output folder; a location that cannot be written is one clear error."""
    try:
        writer.fs.makedirs(writer.path, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputError(
            f"--out {config.out}: a part of that path is a file, not a folder ({exc})"
        ) from None
    except OSError as exc:
        raise OutputError(f"--out {config.out}: cannot create it: {exc.strerror or exc}") from None


def lock_output(config: PrepConfig) -> OutputLock:
    """Take the output's lock (which also proves it writable); see `prep.lock`."""
    try:
        return OutputLock(config.out).acquire()
    except OSError as exc:
        raise OutputError(f"--out {config.out}: cannot write there: {exc.strerror or exc}") from None


def _start_output(writer: ManifestWriter, plan: ResumePlan, started: float) -> None:
    """Before the first new shard: delete what this run replaces and temporaries of dead writes."""
    if plan.discard:
        writer.remove_summaries()  # until finalize, the output reads as not finalized, not as the old one
        for index in plan.discard:
            writer.remove_shard(index)
        logger.warning(
            "--overwrite: removed %d shards written under other settings or beyond this run's plan",
            len(plan.discard),
        )
    for path in writer.remove_temporaries(older_than=started, root_files=(plan_cache.PLAN_FILE, LOCK_FILE)):
        logger.info("removed %s, left by a write that did not finish", path)


def summarize(
    done: list[dict], skipped: dict[int, dict], failed: dict[int, str], seconds: float, manifest: dict
) -> dict:
    status = Counter()
    stages = Counter()
    for s in done:
        status.update(s["status_counts"])
        stages.update(s.get("timings", {}))
    images = sum(s["images"] for s in done)
    tables = manifest.get("tables", {})
    return {
        "images": images,
        "hands": sum(s["hands"] for s in done),
        "status_counts": dict(status),
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 2) if seconds > 0 and images else 0.0,
        "stage_ms_per_image": {k: round(1000 * v / images, 2) for k, v in sorted(stages.items())}
        if images
        else {},
        "shards": {"run": len(done), "skipped": len(skipped), "failed": len(failed)},
        "failed_shards": {shard_name(i): why for i, why in sorted(failed.items())},
        "manifest": {
            "images": tables.get("images", {}).get("num_rows", 0),
            "hands": tables.get("hands", {}).get("num_rows", 0),
            "status_counts": tables.get("images", {}).get("status_counts", {}),
        },
    }


def plan_input(config: PrepConfig) -> list[Shard]:
    """The run's shards: one per unit for a source read by units (no sample is listed here), else
    `shard_size` records each."""
    units = load_units(config)
    if units is not None:
        if not units:
            raise ValueError(f"no samples found in {config.input} (--format {config.format})")
        return plan_units(units, config)
    records = load_records(config)
    if not records:
        raise ValueError(f"no images found in {config.input} (--format {config.format})")
    return plan_shards(records, config)


def run(config: PrepConfig | None = None, **kwargs) -> dict:
    """Annotate `config.input` into a manifest at `config.out`; returns the run summary.

    Summary keys: images, hands, status_counts, seconds, images_per_s (this run's work),
    phase_seconds {plan, resume_check, cluster_start, shards, finalize} (wall time of each step),
    stage_ms_per_image, shards {run, skipped, failed}, failed_shards {name: reason}, retried_shards
    {name: [why each earlier attempt was lost: an error, or its worker left]}, manifest
    {images, hands, status_counts} (the whole manifest after this run), out, dashboard, preview.
    A rerun on the same `out` skips complete shards; a failed or damaged shard is redone by the next
    run. An output written under other row-shaping settings is refused (OutputConflictError) unless
    `overwrite` is set, which deletes its shards before any new one is written. One run at a time
    holds the output (`prep.lock`). Every setting the driver can check (annotator, SAM checkpoint,
    input, output) is checked before any work; those errors are `SETUP_ERRORS`.
    """
    config = make_config(config, **kwargs)
    t0, started = time.perf_counter(), time.time()
    check_output(config)
    check_annotator(config)
    check_sam(config)
    with ExitStack() as stack:
        # An external scheduler is checked with the rest: it answers and has a worker before the input
        # is read or anything is written to the output. A LocalCluster starts only for work to do.
        mark = time.perf_counter()
        client = stack.enter_context(dask_client(config)) if config.scheduler else None
        phases = {"cluster_start": time.perf_counter() - mark}  # wall seconds of each step, in the summary
        writer = ManifestWriter(config.out)
        # The plan of the last run on this output, when nothing it was made from has changed: a rerun
        # whose shards are all complete then does not parse the input again (prep.plan_cache).
        state = plan_cache.input_state(config)
        cached = plan_cache.load(writer.fs, writer.path, state)
        cfp = config.fingerprint()
        identity = input_identity(config)
        shards = [Shard(i, [], fp, cfp) for i, fp, _ in cached] if cached else plan_input(config)
        phases["plan"] = time.perf_counter() - t0 - phases["cluster_start"]
        open_output(config, writer)
        stack.callback(lock_output(config).release)
        mark = time.perf_counter()
        plan = pending_shards(shards, writer, config.overwrite, identity)
        if cached and (plan.todo or plan.discard):  # work to do: it needs the records after all
            cached, shards = None, plan_input(config)
            plan = pending_shards(shards, writer, config.overwrite, identity)
        if not cached:
            plan_cache.save(writer.fs, writer.path, state, shards)
        phases["resume_check"] = time.perf_counter() - mark
        sizes = [n for _, _, n in cached] if cached else [s.num_images for s in shards]
        logger.info(
            "%s images in %d shards: %d to run, %d already complete, %d damaged",
            "?" if None in sizes else sum(sizes),
            len(shards),
            len(plan.todo),
            len(plan.skipped),
            len(plan.damaged),
        )
        mark = time.perf_counter()
        if client is None and plan.todo:
            client = stack.enter_context(dask_client(config))
        shipped = ship_config(config, client) if client is not None else config
        phases["cluster_start"] += time.perf_counter() - mark
        _start_output(writer, plan, started)
        mark = time.perf_counter()
        retried: dict[str, list[str]] = {}
        done, failed, dashboard = (
            run_shards(plan.todo, shipped, client, retried) if plan.todo else ([], {}, None)
        )
        phases["shards"] = time.perf_counter() - mark
        for index in failed:
            remove_shard(writer, index)
        seconds = time.perf_counter() - t0
        mark = time.perf_counter()
        manifest = writer.finalize(config=config.to_dict())
        phases["finalize"] = time.perf_counter() - mark
        summary = summarize(done, plan.skipped, failed, seconds, manifest)
        summary.update(
            out=config.out,
            dashboard=dashboard,
            preview=_write_preview(config) if config.preview else None,
            phase_seconds={k: round(v, 3) for k, v in phases.items()},
            damaged_shards={shard_name(i): why for i, why in plan.damaged.items()},
            discarded_shards=[shard_name(i) for i in plan.discard],
            retried_shards=retried,
        )
    if failed:
        logger.error("%d shards failed; rerun the same command to redo them", len(failed))
    return summary
