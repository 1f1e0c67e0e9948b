"""Throughput of `handfirst-gen evaluate` on hagrid_mini real images, and where its time goes.

Measures, side by side in one process:

- prep's own run on the same photos (for the per-image model time of pose + hands);
- evaluation in this process (one detector);
- evaluation on a 2-worker Dask LocalCluster (one detector per worker process).

It confirms that detection runs through prep's per-worker-loaded annotator: after the Dask run it
asks every worker for the contents of `prep.annotators`' annotator cache (exactly one Annotator per
worker, configured to detect without masks) and checks that the detections came from those workers.

    .venv/bin/python bench/evaluate.py [--input ../shared/data/hagrid_mini] [--workers 2]

Writes bench/results/evaluate.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench._common import portable  # noqa: E402


def _cache_report():
    """Runs on a worker: the annotators prep's cache holds in this process."""
    import os

    from prep import annotators

    return {
        "pid": os.getpid(),
        "annotators": [
            {
                "class": type(a).__name__,
                "keypoint_source": a.config.keypoint_source,
                "mask_method": a.config.mask_method,
                "images_timed_s": round(a.timings["pose"] + a.timings["hands"], 3),
            }
            for a in annotators._CACHE.values()
        ],
    }


def _warm(config, image):
    """Runs on a worker: build its cached detector and run it once on a photo with a person and a hand
    (a blank image would leave the landmark models, which run only after a detection, uninitialised)."""
    from generation.evaluate.detect import get_detector

    get_detector(config).detect(image)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default=os.path.join(ROOT, "..", "shared", "data", "hagrid_mini"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "evaluate.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # Dask's cluster start/stop chatter is not part of the figures.
    for handler in logging.root.handlers:
        handler.addFilter(lambda r: not r.name.startswith("distributed") or r.levelno >= logging.WARNING)

    from distributed import Client, LocalCluster

    import prep
    from generation.evaluate import EvalConfig, evaluate
    from generation.evaluate.detect import get_detector
    from generation.evaluate.detection import detection_prep_config
    from manifests.decode import image_array
    from manifests.reader import open_manifest
    from prep.cluster import environ_restored

    with tempfile.TemporaryDirectory() as tmp:
        manifest = os.path.join(tmp, "manifest")
        t0 = time.perf_counter()
        # One prep worker, so its per-image model time compares with one evaluation process.
        prep_summary = prep.run(
            input=args.input,
            out=manifest,
            label_from_dir=True,
            workers=1,
            shard_size=10,
            mask_method="none",
            crop_size=128,
            progress=False,
        )
        prep_s = time.perf_counter() - t0
        n = prep_summary["images"]
        stage = prep_summary["stage_ms_per_image"]
        prep_model_ms = stage.get("pose", 0.0) + stage.get("hands", 0.0)

        # 1. In this process: the detector comes from prep's cache in this very process. A first
        # small run loads the MediaPipe graphs, so the timed run measures steady-state throughput.
        m = open_manifest(manifest)
        first = m.read("images", ["image_id", "image", "image_width", "image_height"], status="ok").slice(
            0, 1
        )
        warm_image = image_array(first.to_pylist()[0])
        evaluate(manifest, "real", os.path.join(tmp, "warm"), split="all", limit=2, progress=False)
        annotator = get_detector(detection_prep_config(m, EvalConfig()))
        before = annotator.timings["pose"] + annotator.timings["hands"]
        local = evaluate(manifest, "real", os.path.join(tmp, "local"), split="all", progress=False)
        local_model_s = annotator.timings["pose"] + annotator.timings["hands"] - before
        local_s = local["timing"]["detect_s"]

        # 2. On Dask workers, through a cluster we keep open to inspect the workers afterwards.
        with (
            environ_restored(),  # the nannies' environment stays out of this process
            LocalCluster(
                n_workers=args.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            # Load each worker's detector (through the same cache) before timing.
            client.run(_warm, detection_prep_config(m, EvalConfig(workers=args.workers)), warm_image)
            dask_run = evaluate(
                manifest,
                "real",
                os.path.join(tmp, "dask"),
                split="all",
                scheduler=cluster.scheduler_address,
                workers=args.workers,
                progress=False,
            )
            caches = client.run(_cache_report)
        dask_s = dask_run["timing"]["detect_s"]

    worker_pids = sorted(c["pid"] for c in caches.values())
    one_each = all(
        len(c["annotators"]) == 1 and c["annotators"][0]["class"] == "Annotator" for c in caches.values()
    )
    used = dask_run["timing"]["detector_workers"]
    result = {
        # The machine is shared: a load average above the core count means the figures are pessimistic.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "images": n,
        "workers": args.workers,
        "prep": {"seconds": round(prep_s, 3), "model_ms_per_image": round(prep_model_ms, 2)},
        "evaluate_in_process": {
            "detect_s": local_s,
            "images_per_s": round(n / local_s, 2),
            "model_ms_per_image": round(1000 * local_model_s / n, 2),
            # Everything in the detection pass that is not MediaPipe: reading row groups, decoding, mapping.
            "overhead_share": round(1 - local_model_s / local_s, 3),
        },
        "evaluate_dask": {
            "detect_s": dask_s,
            "images_per_s": round(n / dask_s, 2),
            "speedup_vs_in_process": round(local_s / dask_s, 2),
            "worker_pids": worker_pids,
            "detections_from_pids": used,
            "one_annotator_per_worker": one_each,
            "worker_caches": list(caches.values()),
        },
        "same_metrics": local["hands"] == dask_run["hands"] and local["body"] == dask_run["body"],
        "sanity_row": {
            k: local["hands"][k] for k in ("detected_share", "pck_0.1", "pck_0.2", "mean_error_px")
        },
    }
    checks = {
        "detections came only from worker processes": set(used) <= set(worker_pids)
        and os.getpid() not in used,
        "exactly one prep Annotator per worker": one_each,
        "Dask and in-process metrics identical": result["same_metrics"],
    }
    result["checks"] = checks
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(portable(result), f, indent=2)
    print(f"{n} hagrid_mini images; prep model time {prep_model_ms:.0f} ms/image")
    print(
        f"evaluate in process: {result['evaluate_in_process']['images_per_s']} images/s "
        f"(MediaPipe {result['evaluate_in_process']['model_ms_per_image']:.0f} ms/image, "
        f"overhead {100 * result['evaluate_in_process']['overhead_share']:.1f}%)"
    )
    print(
        f"evaluate on {args.workers} Dask workers: {result['evaluate_dask']['images_per_s']} images/s "
        f"({result['evaluate_dask']['speedup_vs_in_process']}x)"
    )
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
