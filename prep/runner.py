"""`prep.run(...)`: plan shards, run one Dask task per shard, show progress, finalize the manifest.

By default a LocalCluster of `workers` processes with one thread each is started (MediaPipe and
OpenCV are not thread-safe enough to share a process, and processes sidestep the GIL);
`scheduler="tcp://host:8786"` uses an existing cluster instead. Only records (ids, URIs, dataset
annotations) travel through the scheduler; each task reads its own images and writes its own shard.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import time
from collections import Counter
from contextlib import contextmanager

from manifests.schema import TABLES
from manifests.storage import join
from manifests.writer import STATS_DIR, ManifestWriter, shard_name

from .config import PrepConfig
from .process import process_shard
from .shards import pending_shards, plan_shards
from .sources import load_records

logger = logging.getLogger(__name__)


class ClusterSetupError(RuntimeError):
    """The Dask cluster cannot run this job as configured (e.g. no worker offers a needed resource)."""


def make_config(config: PrepConfig | None = None, **kwargs) -> PrepConfig:
    """A PrepConfig from a config and/or keyword overrides; unknown keywords are an error."""
    names = {f.name for f in dataclasses.fields(PrepConfig)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise TypeError(f"unknown prep settings: {unknown}")
    config = dataclasses.replace(config, **kwargs) if config is not None else PrepConfig(**kwargs)
    for name, low in (("workers", 1), ("shard_size", 1), ("retries", 0), ("limit", 0)):
        value = getattr(config, name)
        if value is not None and value < low:
            raise ValueError(f"{name} must be at least {low}, got {value}")
    return config


def uses_sam(config: PrepConfig) -> bool:
    return config.mask_method == "sam" or (config.mask_method == "auto" and bool(config.sam_checkpoint))


@contextmanager
def dask_client(config: PrepConfig):
    """A distributed Client: to `config.scheduler`, or to a LocalCluster started (and stopped) here."""
    import dask
    from distributed import Client, LocalCluster

    if config.scheduler:
        with Client(config.scheduler) as client:
            if config.gpu_resource and uses_sam(config):
                workers = client.scheduler_info().get("workers", {}).values()
                if not any(w.get("resources", {}).get("GPU") for w in workers):
                    raise ClusterSetupError(f"gpu_resource is set but no worker of {config.scheduler} offers a GPU resource "
                                       "(start workers with --resources GPU=1)")  # fmt: skip
            yield client
        return
    resources = {"GPU": 1} if config.gpu_resource else None
    # A worker that dies is restarted by its nanny and its task retried up to `retries` more times.
    with dask.config.set({"distributed.scheduler.allowed-failures": config.retries}):
        with LocalCluster(n_workers=config.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                          resources=resources, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:  # fmt: skip
            yield client


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="prep", disable=not enabled, smoothing=0.1)


def run_shards(todo, config: PrepConfig, client=None) -> tuple[list[dict], dict[int, str], str | None]:
    """Run the shard tasks; (stats of completed shards, {index: reason} of failed ones, dashboard URL).

    Uses `client` when given (it stays open), else connects or starts a cluster for this call.
    """
    if client is None:
        with dask_client(config) as own:
            return run_shards(todo, config, own)
    from distributed import as_completed

    done, failed = [], {}
    dashboard = client.dashboard_link
    hint = "" if importlib.util.find_spec("bokeh") else " (its plots need bokeh: pip install bokeh)"
    logger.info("Dask scheduler %s, dashboard %s%s", client.scheduler.address, dashboard, hint)
    extra = {"resources": {"GPU": 1}} if config.gpu_resource and uses_sam(config) else {}
    token = f"{time.time_ns():x}"
    queue = list(reversed(todo))
    futures = {}
    pending = as_completed()

    def fill():
        # One shard in flight per worker thread: the graph stays small, and a worker that dies takes
        # down only the shard it was running (Dask counts every task assigned to a dead worker as
        # suspect, so queued bystanders would use up their retries too). Re-read as workers come and go.
        slots = max(1, sum(client.nthreads().values()))
        while queue and len(futures) < slots:
            shard = queue.pop()
            fut = client.submit(process_shard, shard.index, shard.records, config, shard.fingerprint,
                                key=f"prep-{shard_name(shard.index)}-{token}", retries=config.retries, pure=False, **extra)  # fmt: skip
            futures[fut] = shard
            pending.add(fut)

    fill()
    hands = errors = 0
    with _progress(sum(s.num_images for s in todo), config.progress) as bar:
        for fut in pending:
            shard = futures.pop(fut)
            try:
                stats = fut.result()
            except Exception as exc:  # noqa: BLE001 - a lost shard is reported, the others go on
                failed[shard.index] = f"{type(exc).__name__}: {exc}"
                logger.error("%s failed after retries: %s", shard_name(shard.index), failed[shard.index])
            else:
                done.append(stats)
                hands += stats["hands"]
                errors += stats["status_counts"].get("error", 0)
                bar.update(stats["images"])
                bar.set_postfix(hands=hands, errors=errors, refresh=False)
            fill()
    return done, failed, dashboard


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
    for table in TABLES:
        for path in (join(writer.path, table, shard_name(index) + ".parquet"),
                     join(writer.path, table, STATS_DIR, shard_name(index) + ".json")):  # fmt: skip
            if writer.fs.exists(path):
                writer.fs.rm(path)
                logger.warning("removed %s left by failed %s", path, shard_name(index))


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


def run(config: PrepConfig | None = None, **kwargs) -> dict:
    """Annotate `config.input` into a manifest at `config.out`; returns the run summary.

    Summary keys: images, hands, status_counts, seconds, images_per_s (this run's work),
    stage_ms_per_image, shards {run, skipped, failed}, failed_shards {name: reason}, manifest
    {images, hands, status_counts} (the whole manifest after this run), out, dashboard, preview.
    A rerun on the same `out` skips complete shards; a failed shard is redone by the next run.
    """
    config = make_config(config, **kwargs)
    t0 = time.perf_counter()
    records = load_records(config)
    shards = plan_shards(records, config)
    writer = ManifestWriter(config.out)
    todo, skipped = pending_shards(shards, writer)
    logger.info(
        "%d images in %d shards: %d to run, %d already complete",
        len(records),
        len(shards),
        len(todo),
        len(skipped),
    )
    done, failed, dashboard = run_shards(todo, config) if todo else ([], {}, None)
    for index in failed:
        remove_shard(writer, index)
    seconds = time.perf_counter() - t0
    manifest = writer.finalize(config=config.to_dict())
    summary = summarize(done, skipped, failed, seconds, manifest)
    summary.update(
        out=config.out, dashboard=dashboard, preview=_write_preview(config) if config.preview else None
    )
    if failed:
        logger.error("%d shards failed; rerun the same command to redo them", len(failed))
    return summary
