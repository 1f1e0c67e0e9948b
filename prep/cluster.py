"""The Dask side of a prep run: the client (an external scheduler or a LocalCluster started here),
the shard tasks handed out one per worker thread, and the config the workers get.

By default a LocalCluster of `workers` processes with one thread each is started (MediaPipe and
OpenCV are not thread-safe enough to share a process, and processes sidestep the GIL);
`scheduler="tcp://host:8786"` uses an existing cluster instead. Only records (ids, URIs, dataset
annotations) travel through the scheduler; each task reads its own images and writes its own shard.

An external scheduler must answer distributed's handshake within `SCHEDULER_CONNECT_TIMEOUT_S` and
have a worker within `worker_timeout` seconds; while shards run, each lost attempt (a task that
raised, a worker that left) is reported from the scheduler's events (`prep.shard_watch`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from manifests.settings import flag
from manifests.storage import filesystem, is_local
from manifests.writer import shard_name

from .config import PrepConfig
from .shard_watch import ShardWatch, shard_task

logger = logging.getLogger(__name__)

# Seconds to wait for an external scheduler to answer (distributed's default is 30, and it retries a
# refused connection all that time): a wrong address should fail fast.
SCHEDULER_CONNECT_TIMEOUT_S = 10.0

# How often the driver re-reads the cluster's thread count while it hands out shards.
SLOTS_REFRESH_S = 1.0

# How long the driver waits for a shard to finish before it looks at the cluster (workers, lost attempts).
WATCH_S = 1.0

# Filesystems that live inside one process: the workers (other processes) cannot share them.
PROCESS_LOCAL_PROTOCOLS = ("memory",)

# Settings that name a file or folder a worker opens (the driver resolves them before shipping).
PATH_SETTINGS = ("input", "out", "sam_checkpoint", "annotations")


class ClusterSetupError(RuntimeError):
    """The Dask cluster cannot run this job as configured (e.g. no worker offers a needed resource)."""


def uses_sam(config: PrepConfig) -> bool:
    return config.resolved_mask_method() == "sam"


def probe_scheduler(address: str, timeout: float) -> None:
    """Connect to the scheduler at `address` and complete distributed's handshake within `timeout`
    seconds, or raise TimeoutError / OSError. `Client(timeout=...)` bounds the connection but not the
    handshake, so a port that accepts and never answers would hold the run forever."""
    import asyncio

    from distributed.comm import connect
    from distributed.security import Security

    async def handshake():
        comm = await asyncio.wait_for(
            connect(address, timeout=timeout, **Security().get_connection_args("client")), timeout
        )
        await comm.close()

    try:  # in a thread of its own: the caller may already run an event loop (a notebook)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, handshake()).result()
    except asyncio.TimeoutError:
        raise TimeoutError("it accepted the connection but did not answer") from None


def await_workers(client, config: PrepConfig) -> None:
    """Return once the cluster has a worker, waiting at most `config.worker_timeout` seconds."""
    if client.nthreads():
        return
    logger.info("%s has no workers yet; waiting up to %g s for one", config.scheduler, config.worker_timeout)
    try:
        client.wait_for_workers(1, timeout=config.worker_timeout)
    except TimeoutError:
        raise ClusterSetupError(
            f"--scheduler {config.scheduler} has {len(client.nthreads())} workers after waiting "
            f"{config.worker_timeout:g} s (--worker-timeout); start one with `dask worker {config.scheduler}`"
        ) from None


@contextmanager
def environ_restored():
    """``os.environ`` back as it was when the block ends.

    A Dask nanny writes ``distributed.nanny.pre-spawn-environ`` into its own process's ``os.environ``
    before it spawns a worker, and leaves it there: with a LocalCluster that process is the driver, so
    everything the driver starts afterwards inherits ``MALLOC_TRIM_THRESHOLD_=65536`` and
    ``OMP_NUM_THREADS=1``. The first turns off glibc's adaptive mmap threshold: a torch process started
    after a prep run (``bench/learns.py``'s trainings) mapped and unmapped every tensor over 128 KiB,
    with a quarter of its CPU time in the kernel faulting pages in."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


@contextmanager
def dask_client(config: PrepConfig):
    """A distributed Client: to `config.scheduler`, or to a LocalCluster started (and stopped) here."""
    import dask
    from distributed import Client, LocalCluster

    if config.scheduler:
        try:
            probe_scheduler(config.scheduler, SCHEDULER_CONNECT_TIMEOUT_S)
            client = Client(config.scheduler, timeout=SCHEDULER_CONNECT_TIMEOUT_S)
        except ValueError as exc:  # malformed address: no port, unknown scheme
            raise ClusterSetupError(
                f"--scheduler {config.scheduler} is not a Dask scheduler address: {exc}"
            ) from None
        except (OSError, TimeoutError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ClusterSetupError(
                f"cannot reach the Dask scheduler {config.scheduler} within {SCHEDULER_CONNECT_TIMEOUT_S:g} s "
                f"({reason[:200]}); is it running, and is the address right?"
            ) from None
        with client:
            await_workers(client, config)
            if config.gpu_resource and uses_sam(config):
                workers = client.scheduler_info().get("workers", {}).values()
                if not any(w.get("resources", {}).get("GPU") for w in workers):
                    raise ClusterSetupError(
                        f"gpu_resource is set but no worker of {config.scheduler} offers a GPU resource "
                        "(start workers with --resources GPU=1)"
                    )
            yield client
        return
    resources = {"GPU": 1} if config.gpu_resource else None
    # A worker that dies is restarted by its nanny and its task retried up to `retries` more times.
    # Workers leave Ctrl-C to the driver (prep.worker_setup); restarted ones get the preload too.
    settings = {
        "distributed.scheduler.allowed-failures": config.retries,
        "distributed.worker.preload": [
            *dask.config.get("distributed.worker.preload", []),
            "prep.worker_setup",
        ],
    }
    with dask.config.set(settings), environ_restored():
        with (
            LocalCluster(
                n_workers=config.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                resources=resources,
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            try:
                yield client
            except KeyboardInterrupt:
                # Closing stops workers still busy with a shard; the nanny's "still alive after 4 s,
                # killing" is then what the user asked for, not a warning.
                logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
                raise


def dashboard_link(client) -> str | None:
    """The Dask dashboard's address, or None where it would not work: its pages need bokeh
    (``pip install 'handfirst[dashboard]'``)."""
    return client.dashboard_link if importlib.util.find_spec("bokeh") else None


def log_cluster(client) -> str | None:
    """Log the scheduler's address and, where it works, the dashboard's; returns the dashboard's."""
    dashboard = dashboard_link(client)
    if dashboard:
        logger.info("Dask scheduler %s, dashboard %s", client.scheduler.address, dashboard)
    else:
        logger.info("Dask scheduler %s (a dashboard needs bokeh)", client.scheduler.address)
    return dashboard


def _progress(total: int, enabled: bool):
    from manifests.progress import progress_bar

    return progress_bar(total=total, unit="img", desc="prep", enabled=enabled, smoothing=0.1)


def run_shards(
    todo, config: PrepConfig, client=None, retried: dict | None = None
) -> tuple[list[dict], dict[int, str], str | None]:
    """Run the shard tasks; (stats of completed shards, {index: reason} of failed ones, dashboard URL).

    Uses `client` when given (it stays open), else connects or starts a cluster for this call.
    Each attempt of a shard that is lost and run again (its task raised, or its worker left) is
    logged and put in `retried` ({shard name: [why]}). When the cluster has had no worker for
    `config.worker_timeout` seconds, the run stops with ClusterSetupError (completed shards are kept).
    """
    if client is None:
        with dask_client(config) as own:
            return run_shards(todo, config, own, retried)
    from distributed import wait

    retried = {} if retried is None else retried
    done, failed = [], {}
    dashboard = log_cluster(client)
    extra = {"resources": {"GPU": 1}} if config.gpu_resource and uses_sam(config) else {}
    token = f"{time.time_ns():x}"
    queue = list(reversed(todo))
    futures = {}
    watch = ShardWatch(client, token)

    threads = {"n": 0, "read": -float("inf")}

    def slots() -> int:
        # Re-read as workers come and go, but at most once a second: the read is a round trip to the
        # scheduler, and paid on every finished shard it delayed the next one (measured by
        # bench/scale.py as the idle gap between a worker's tasks).
        if time.monotonic() - threads["read"] >= SLOTS_REFRESH_S:
            threads.update(n=sum(client.nthreads().values()), read=time.monotonic())
        return max(1, threads["n"])

    def fill():
        # One shard in flight per worker thread: the graph stays small, and a worker that dies takes
        # down only the shard it was running (Dask counts every task assigned to a dead worker as
        # suspect, so queued bystanders would use up their retries too).
        while queue and len(futures) < slots():
            shard = queue.pop()
            key = f"prep-{shard_name(shard.index)}-{token}"
            watch.shard_of[key] = shard.index
            fut = client.submit(
                shard_task,
                watch.topic,
                shard.index,
                shard.records,
                config,
                shard.fingerprint,
                shard.config_fingerprint,
                shard.unit,
                key=key,
                retries=config.retries,
                pure=False,
                **extra,
            )
            futures[fut] = shard

    def report() -> None:
        for index, why in watch.drain():
            retried.setdefault(shard_name(index), []).append(why)
            logger.warning(
                "%s lost an attempt (%s); Dask retries it while retries remain", shard_name(index), why
            )

    no_workers_since = None
    hands = errors = 0
    sizes = [s.num_images for s in todo]
    try:
        fill()
        with _progress(None if None in sizes else sum(sizes), config.progress) as bar:
            while futures:
                try:
                    finished = wait(list(futures), timeout=WATCH_S, return_when="FIRST_COMPLETED").done
                except TimeoutError:
                    finished = set()
                report()
                if not finished:
                    slots()
                    no_workers_since = None if threads["n"] else (no_workers_since or time.monotonic())
                    if no_workers_since and time.monotonic() - no_workers_since > config.worker_timeout:
                        client.cancel(list(futures))
                        raise ClusterSetupError(
                            f"the Dask cluster {client.scheduler.address} has had 0 workers for "
                            f"{config.worker_timeout:g} s (--worker-timeout) with {len(futures) + len(queue)} "
                            f"shards to do; the {len(done)} completed this run are kept: start workers and rerun"
                        )
                    continue
                for fut in finished:
                    shard = futures.pop(fut)
                    try:
                        stats = fut.result()
                    except Exception as exc:  # noqa: BLE001 - a lost shard is reported, the others go on
                        failed[shard.index] = f"{type(exc).__name__}: {exc}"
                        logger.error(
                            "%s failed after retries: %s", shard_name(shard.index), failed[shard.index]
                        )
                    else:
                        done.append(stats)
                        hands += stats["hands"]
                        errors += stats["status_counts"].get("error", 0)
                        bar.update(stats["images"])
                        bar.set_postfix(hands=hands, errors=errors, refresh=False)
                fill()
        report()
        for index in failed:  # the last attempt of a failed shard is its failure, not a retry
            whys = retried.get(shard_name(index), [])
            del whys[-1:]
            if not whys:
                retried.pop(shard_name(index), None)
    finally:
        watch.close()
    return done, failed, dashboard


def is_local_host(host: str) -> bool:
    """True if `host` (a name or address) is this machine."""
    import psutil

    if (
        host in ("localhost", socket.gethostname(), socket.getfqdn())
        or host.startswith("127.")
        or host == "::1"
    ):
        return True
    return host in {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}


def local_paths(config: PrepConfig) -> dict[str, str]:
    """{setting: value} of the path settings that name local files (not fsspec URLs)."""
    return {
        name: value
        for name in PATH_SETTINGS
        if (value := getattr(config, name, None)) and is_local(filesystem(str(value))[0])
    }


def ship_config(config: PrepConfig, client) -> PrepConfig:
    """The config the workers of an external cluster get: local paths made absolute on the driver.

    A relative path would be resolved in each worker's own working directory. A local path is refused
    when a worker runs on another host, unless `shared_filesystem` says every worker mounts it at
    the same place (otherwise shards would land on that worker's own disk). The workers are those
    connected when the run starts; one that joins later on another host is not checked.
    """
    if not config.scheduler:
        return config  # a LocalCluster's workers share the driver's working directory
    from distributed.comm import get_address_host

    paths = local_paths(config)
    if not paths:
        return config
    workers = list(client.nthreads())  # every worker's address (scheduler_info may list only some)
    hosts = sorted({get_address_host(w) for w in workers} or {get_address_host(client.scheduler.address)})
    remote = [h for h in hosts if not is_local_host(h)]
    if remote and not config.shared_filesystem:
        names = ", ".join(f"{flag(k)} {v}" for k, v in paths.items())
        raise ClusterSetupError(
            f"--scheduler {config.scheduler} runs workers on other hosts ({', '.join(remote[:3])}), but {names} "
            f"{'is a local path' if len(paths) == 1 else 'are local paths'} they would look for on their own disks; "
            "use URLs every worker reaches (s3://...), or pass --shared-filesystem if every worker mounts them "
            "at the same paths"
        )
    resolved = {k: os.path.abspath(os.path.expanduser(v)) for k, v in paths.items() if "://" not in v}
    return dataclasses.replace(config, **resolved)
