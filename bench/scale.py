"""A scale run on this machine: 100,000 small JPEGs with known keypoints through `handfirst-prep run`.

The source is synthetic (`bench/synth_source.py`: a HaGRID-layout tree, 160x120 JPEGs, one annotated
hand each), prepared in annotation mode (`--keypoint-source annotation --no-body-pose`, GrabCut masks
at 32 px and one iteration, 128-px crops), so the run measures the pipeline around the models:
planning, Dask, Parquet, resume, finalize, validate, stats and the loader.

1. fast path (issue section 3): on the first `--fastpath-images` of the source, at `--shard-size
   256`, one core in this process, two plain processes (no Dask) and a warm 2-worker LocalCluster,
   interleaved round by round (this machine is shared: only figures taken side by side are
   compared). Recorded: images/s of each, the ratio to (in-process rate x workers) and to the two
   plain processes (the same product measured under the same load), the workers' busy share, CPU ms per image inside
   a task against in process (equal: no per-task overhead of ours; a lower wall rate is then the
   machine's load), cluster start-up and the first (cold) task against a warm one, and where a
   shard task's time goes (annotate stages, Parquet and stats write, shipping the records).
2. scale: `python -m prep run ... --shard-size 256 --workers 2` as a subprocess, its driver's peak
   RSS polled; the run's own phase times (plan, resume check, cluster start, shards, finalize) and
   images/s; the same command again (every shard skipped, the plan the first run saved reused); `python -m manifests validate` (with
   `--no-decode`, the structural checks, and with its full decode pass on 2 processes) and `stats`;
   and the manifest loader (`HandCropDataset`, 2 DataLoader workers) over every hand.

    nice -n 10 .venv/bin/python bench/scale.py [--images 100000] [--workdir DIR] [--only fastpath|scale|rerun]

Writes bench/results/scale.json and prints it. `--only` replaces only that section of the file
(`rerun`: the rerun entry, on the manifest a `--workdir` kept).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench._common import portable  # noqa: E402

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # after ROOT: bench/prep.py is not `prep`

from synth_source import write_tree  # noqa: E402

RESULT = os.path.join(ROOT, "bench", "results", "scale.json")
SHARD_SIZE = 256
WORKERS = 2
# Annotation mode at a small crop: the run's cost is the pipeline around the models. Masks are made
# (GrabCut at 32 px, one iteration: the cheapest real mask) because the hand-crop loader needs them.
SETTINGS = dict(
    format="hagrid",
    keypoint_source="annotation",
    body_pose=False,
    mask_method="grabcut",
    grabcut_size=32,
    grabcut_iters=1,
    wrist_refine=False,
    pad_retry=0.0,
    crop_size=128,
)
CLI_FLAGS = ["--format", "hagrid", "--keypoint-source", "annotation", "--no-body-pose", "--mask-method", "grabcut",
             "--grabcut-size", "32", "--grabcut-iters", "1", "--no-wrist-refine", "--pad-retry", "0",
             "--crop-size", "128"]  # fmt: skip
TARGETS = {"driver_rss_mb_max": 1024, "rerun_s_per_1000_shards_max": 10.0, "validate_s_max": 60.0,
           "stats_s_max": 60.0, "fastpath_ratio_min": 0.70}  # fmt: skip


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_1_5_15": list(os.getloadavg()),
    }


# --------------------------------------------------------------------------- 1. fast path


def _in_process(shards, config) -> tuple[float, float]:
    """(images/s, CPU ms per image) of `shards` processed one after the other in this process."""
    from prep.shard import process_shard

    n = sum(s.num_images for s in shards)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in shards:
        process_shard(s.index, s.records, config, s.fingerprint, s.config_fingerprint)
    return n / (time.perf_counter() - t0), 1000 * (time.process_time() - c0) / n


def _bare_init(records, config) -> None:
    """A bare worker process (no Dask): its annotator built before any clock starts."""
    from prep.shard import process_shard

    process_shard(0, records, dataclasses.replace(config, out=f"{config.out}-warm-{os.getpid()}"))


def _bare_shard(shard, config) -> int:
    from prep.shard import process_shard

    return process_shard(shard.index, shard.records, config, shard.fingerprint)["images"]


def _bare_processes(pool, shards, config) -> float:
    """Images/s of `shards` over `WORKERS` plain processes: the in-process rate x workers, measured
    under the machine's load as it is (two processes may not get two cores on a shared machine)."""
    t0 = time.perf_counter()
    n = sum(pool.map(_bare_shard, shards, [config] * len(shards)))
    return n / (time.perf_counter() - t0)


def _on_cluster(shards, config, client) -> dict:
    from distributed import get_task_stream

    from prep.cluster import run_shards

    t0 = time.perf_counter()
    with get_task_stream(client) as stream:
        done, failed, _ = run_shards(shards, config, client)
    wall = time.perf_counter() - t0
    n = sum(d["images"] for d in done)
    task_s = sum(d["seconds"] for d in done)
    # Per worker, the idle time between one task's end and the next one's start: the round trip
    # (result to the driver, next shard submitted, scheduled, shipped) that a shard pays.
    spans: dict[str, list] = {}
    for t in stream.data:
        for ss in t["startstops"]:
            if ss["action"] == "compute":
                spans.setdefault(t["worker"], []).append((ss["start"], ss["stop"]))
    gaps = [b[0] - a[1] for v in spans.values() for a, b in zip(sorted(v), sorted(v)[1:])]
    return {
        "images_per_s": n / wall,
        "busy_share": task_s / (WORKERS * wall),
        "gap_s_median": statistics.median(gaps) if gaps else None,
        "gap_share": sum(gaps) / (WORKERS * wall),
        "task_cpu_ms_per_image": 1000 * sum(d["cpu_seconds"] for d in done) / n,
        "task_images_per_s": n / task_s,
        "failed": len(failed),
        "stats": done,
    }


def fastpath(src: str, work: str, images: int, rounds: int) -> dict:
    from prep.cluster import dask_client
    from prep.config import PrepConfig
    from prep.plan import plan_shards
    from prep.shard import process_shard
    from prep.sources import load_records

    out = os.path.join(work, "fastpath")
    shutil.rmtree(out, ignore_errors=True)
    config = PrepConfig(
        input=src,
        out=os.path.join(out, "dask"),
        limit=images,
        shard_size=SHARD_SIZE,
        workers=WORKERS,
        progress=False,
        **SETTINGS,
    ).validate()
    local = dataclasses.replace(config, out=os.path.join(out, "local"))
    shards = plan_shards(load_records(config), config)
    per_round = (len(shards) - 2) // rounds
    local_n = max(1, per_round // 5)  # shards in process per round; the rest of the round on the cluster
    process_shard(0, shards[0].records[:16], dataclasses.replace(config, out=os.path.join(out, "warm")))
    ship = [len(pickle.dumps((s.records, config))) for s in shards[:4]]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    bare = dataclasses.replace(config, out=os.path.join(out, "bare"))
    pool = ProcessPoolExecutor(
        WORKERS,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_bare_init,
        initargs=(shards[0].records[:16], bare),
    )
    list(pool.map(time.sleep, [0.5] * WORKERS))  # both processes started and warm
    t0 = time.perf_counter()
    with pool, dask_client(config) as client:
        cluster_start = time.perf_counter() - t0
        cold = _on_cluster(shards[:2], config, client)  # builds each worker's annotator
        runs = []
        for r in range(rounds):
            chunk = shards[2 + r * per_round : 2 + (r + 1) * per_round]
            ip_rate, ip_cpu = _in_process(chunk[:local_n], local)
            bare_rate = _bare_processes(pool, chunk[local_n : local_n + WORKERS * local_n], bare)
            d = _on_cluster(chunk[local_n + WORKERS * local_n :], config, client)
            runs.append(
                {
                    "in_process_images_per_s": round(ip_rate, 1),
                    "in_process_cpu_ms_per_image": round(ip_cpu, 3),
                    "bare_processes_images_per_s": round(bare_rate, 1),
                    "dask_images_per_s": round(d["images_per_s"], 1),
                    "ratio": round(d["images_per_s"] / (WORKERS * ip_rate), 3),
                    "ratio_to_bare_processes": round(d["images_per_s"] / bare_rate, 3),
                    "busy_share": round(d["busy_share"], 3),
                    "task_images_per_s": round(d["task_images_per_s"], 1),
                    "gap_between_tasks_ms_median": round(1000 * (d["gap_s_median"] or 0), 1),
                    "gap_share": round(d["gap_share"], 4),
                    "task_cpu_ms_per_image": round(d["task_cpu_ms_per_image"], 3),
                    "loadavg_1": round(os.getloadavg()[0], 2),
                    "stats": d["stats"],
                }
            )
    stats = [s for r in runs for s in r.pop("stats")]
    n = sum(s["images"] for s in stats)
    stage = {}
    for s in stats:
        for k, v in s["timings"].items():
            stage[k] = stage.get(k, 0.0) + v
    task_s = sum(s["seconds"] for s in stats)
    breakdown = {k: round(1000 * v / n, 3) for k, v in sorted(stage.items())}
    breakdown["task_other"] = round(1000 * (task_s - stage.get("annotate", 0) - stage.get("write", 0)) / n, 3)
    warm_task = statistics.median(s["seconds"] for s in stats)
    ratios = [r["ratio"] for r in runs]
    return {
        "images": images,
        "shard_size": SHARD_SIZE,
        "workers": WORKERS,
        "rounds": runs,
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_best": max(ratios),
        "ratio_to_bare_processes_median": round(
            statistics.median(r["ratio_to_bare_processes"] for r in runs), 3
        ),
        "cpu_per_image_task_over_in_process": round(
            statistics.median(r["task_cpu_ms_per_image"] / r["in_process_cpu_ms_per_image"] for r in runs), 3
        ),
        "task_ms_per_image_by_stage": breakdown,
        "records_pickled_bytes_per_shard": int(statistics.mean(ship)),
        "cluster_start_s": round(cluster_start, 2),
        "cold_first_task_s": round(max(s["seconds"] for s in cold["stats"]), 2),
        "warm_task_s_median": round(warm_task, 2),
    }


# --------------------------------------------------------------------------- 2. scale


def _peak_rss(pid: int, box: dict, stop: threading.Event) -> None:
    """Poll the RSS of process `pid` (the driver) and of its children (the workers) every 0.1 s."""
    import psutil

    try:
        p = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.is_set():
        try:
            box["driver"] = max(box.get("driver", 0), p.memory_info().rss)
            box["children"] = max(
                box.get("children", 0), sum(c.memory_info().rss for c in p.children(recursive=True))
            )
        except psutil.Error:
            pass
        stop.wait(0.1)


def _timed(cmd: list[str], quiet: bool = False) -> tuple[float, subprocess.CompletedProcess, dict]:
    """(wall seconds, completed process, peak RSS bytes {driver, children}) of a command."""
    box: dict = {}
    stop = threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if quiet else None, text=True
    )
    watcher = threading.Thread(target=_peak_rss, args=(proc.pid, box, stop), daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    return wall, subprocess.CompletedProcess(cmd, proc.returncode, out, None), box


def _loader(manifest: str) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from manifests.datasets import HandCropDataset

    ds = HandCropDataset(manifest, resolution=128, shuffle=False)
    loader = DataLoader(ds, batch_size=64, num_workers=WORKERS)
    n, t0 = 0, None
    with tqdm(unit="sample", desc="loader") as bar:
        for batch in loader:
            if t0 is None:  # worker start-up and the first batch are not timed
                t0 = time.perf_counter()
                continue
            k = len(batch["pixel_values"]) if isinstance(batch, dict) else len(batch[0])
            n += k
            bar.update(k)
    wall = time.perf_counter() - t0
    del torch
    return {
        "samples": n,
        "seconds": round(wall, 2),
        "samples_per_s": round(n / wall, 1),
        "batch_size": 64,
        "num_workers": WORKERS,
        "resolution": 128,
    }


def _prep_command(src: str, out: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "prep",
        "run",
        "--input",
        src,
        "--out",
        out,
        *CLI_FLAGS,
        "--shard-size",
        str(SHARD_SIZE),
        "--workers",
        str(WORKERS),
        "--json",
    ]


def _rerun(cmd: list[str], shards: int) -> dict:
    """The same command on the complete manifest: every shard is skipped."""
    wall, proc, rss = _timed([*cmd, "--no-progress"])
    again = json.loads(proc.stdout)
    print(f"rerun: {wall:.1f} s, shards {again['shards']}, phases {again['phase_seconds']}", flush=True)
    return {
        "wall_s": round(wall, 2),
        "shards": again["shards"],
        "phase_seconds": again["phase_seconds"],
        "s_per_1000_shards": round(1000 * wall / shards, 2),
        "driver_peak_rss_mb": round(rss.get("driver", 0) / 2**20, 1),
    }


def rerun_only(src: str, work: str, res: dict) -> None:
    """Rerun on the manifest a `--workdir` kept: once without the saved plan (as the first rerun on
    an output written before plans were saved), then as any later rerun."""
    from prep.plan_cache import PLAN_FILE

    out = os.path.join(work, "manifest")
    if os.path.exists(os.path.join(out, PLAN_FILE)):
        os.remove(os.path.join(out, PLAN_FILE))
    cmd = _prep_command(src, out)
    cold = _rerun(cmd, res["shards"])
    res["rerun"] = _rerun(cmd, res["shards"])
    res["rerun"]["without_saved_plan"] = cold


def scale(src: str, work: str, images: int, res: dict) -> dict:
    """Fills `res` step by step, so that a step that fails leaves the figures of those before it."""
    out = os.path.join(work, "manifest")
    shutil.rmtree(out, ignore_errors=True)
    py = sys.executable
    cmd = _prep_command(src, out)
    wall, proc, rss = _timed(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"prep run failed ({proc.returncode})")
    first = json.loads(proc.stdout)
    shards = first["shards"]["run"] + first["shards"]["skipped"]
    res.update(images=images, shard_size=SHARD_SIZE, workers=WORKERS, shards=shards)
    res["run"] = {
        "wall_s": round(wall, 1),
        "images_per_s": first["images_per_s"],
        "wall_images_per_s": round(first["images"] / wall, 1),
        "phase_seconds": first["phase_seconds"],
        "status_counts": first["manifest"]["status_counts"],
        "hands": first["manifest"]["hands"],
        "stage_ms_per_image": first["stage_ms_per_image"],
        "driver_peak_rss_mb": round(rss.get("driver", 0) / 2**20, 1),
        "workers_peak_rss_mb": round(rss.get("children", 0) / 2**20, 1),
    }
    print(
        f"run: {wall:.1f} s, {first['images_per_s']} img/s, driver peak RSS {rss['driver'] / 2**20:.0f} MB",
        flush=True,
    )
    res["rerun"] = _rerun(cmd, shards)
    lwall, lproc, _ = _timed([py, "-m", "manifests", "validate", out, "--no-decode"])
    print(f"validate --no-decode: {lwall:.1f} s, exit {lproc.returncode}", flush=True)
    vwall, vproc, _ = _timed([py, "-m", "manifests", "validate", out, "--workers", str(WORKERS)])
    print(f"validate: {vwall:.1f} s, exit {vproc.returncode}", flush=True)
    res["validate"] = {
        "wall_s": round(vwall, 1),
        "exit_code": vproc.returncode,
        "decode_workers": WORKERS,
        "no_decode_wall_s": round(lwall, 1),
        "no_decode_exit_code": lproc.returncode,
    }
    swall, sproc, _ = _timed([py, "-m", "manifests", "stats", out, "--json"])
    print(f"stats: {swall:.1f} s, exit {sproc.returncode}", flush=True)
    res["stats"] = {"wall_s": round(swall, 1), "exit_code": sproc.returncode}
    res["manifest_bytes"] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    res["loader"] = _loader(out)
    return res


def targets(result: dict) -> dict:
    out = {}
    if result.get("scale", {}).get("stats"):
        s = result["scale"]
        out["driver_rss_at_most_1GB"] = s["run"]["driver_peak_rss_mb"] <= TARGETS["driver_rss_mb_max"]
        out["rerun_at_most_10s_per_1000_shards"] = (
            s["rerun"]["s_per_1000_shards"] <= TARGETS["rerun_s_per_1000_shards_max"]
        )
        out["validate_at_most_60s"] = s["validate"]["wall_s"] <= TARGETS["validate_s_max"]
        out["stats_at_most_60s"] = s["stats"]["wall_s"] <= TARGETS["stats_s_max"]
    if "fastpath" in result:
        out["dask_at_least_70pct_of_in_process_x_workers"] = (
            result["fastpath"]["ratio_median"] >= TARGETS["fastpath_ratio_min"]
        )
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--fastpath-images", type=int, default=SHARD_SIZE * 34)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="keep the source and manifest here (default: a temp dir)")
    ap.add_argument(
        "--only",
        choices=("fastpath", "scale", "rerun"),
        help="rerun: only the rerun, on the manifest a --workdir kept",
    )
    ap.add_argument("--out", default=RESULT)
    args = ap.parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="handfirst-scale-")
    src = os.path.join(work, "src")
    result = {}
    if args.only and os.path.exists(args.out):
        with open(args.out) as f:
            result = json.load(f)
    result["machine"] = machine()
    try:
        result["source"] = {
            "images": args.images,
            "kind": "synthetic HaGRID tree, 160x120 JPEGs, one annotated hand each",
        }
        if not os.path.exists(os.path.join(src, "annotations")):  # a --workdir keeps it for the next run
            t0 = time.perf_counter()
            write_tree(src, args.images)
            result["source"]["write_s"] = round(time.perf_counter() - t0, 1)
        if args.only in (None, "fastpath"):
            result["fastpath"] = fastpath(src, work, min(args.fastpath_images, args.images), args.rounds)
            print(
                json.dumps({k: v for k, v in result["fastpath"].items() if k != "rounds"}, indent=1),
                flush=True,
            )
        if args.only == "rerun":
            rerun_only(src, work, result["scale"])
        if args.only in (None, "scale"):
            result["scale"] = {}
            scale(src, work, args.images, result["scale"])
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        result["machine"]["loadavg_after"] = list(os.getloadavg())
        result["targets"] = targets(result)
        result["target_values"] = TARGETS
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(portable(result), f, indent=2)
        print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
