"""Where prep's time goes per image, and how its throughput scales with Dask workers.

Measured side by side in one process, on hagrid_mini repeated to at least 200 images (copies in a
temporary folder):

1. detect mode (the default pipeline: MediaPipe hands + pose, GrabCut masks, crops, heatmaps):
   per-image time by stage (decode, hands, pose, masks, crops_heatmaps, encode, write) and the
   rest of the per-image wall time (scheduling, task overhead), on a warm 1-worker cluster;
   throughput on warm 1- and 2-worker LocalClusters (models loaded before the clock starts);
   pipeline overhead = everything but model inference (hands, pose, masks) and decode, as a share
   of the per-image wall time at 1 worker.
2. annotation-keypoints mode (no detector, no body pose, no masks) on the same 384x512 photos (512-px
   longest side), as a HaGRID tree whose landmarks are the detect run's keypoints: images/s on one
   core (in this process, no Dask) and on the 2-worker cluster; and the same with GrabCut masks.

    .venv/bin/python bench/prep.py [--repeat 5] [--workers 2]

Writes bench/results/prep.json and prints it. The machine's load average is recorded with the
figures: on a shared machine other work lowers the multi-worker speed-up, which `worker_busy_share`
and `task_ms_per_image` tell apart from pipeline stalls.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

INFERENCE = ("hands", "pose", "masks")
STAGES = ("decode", "hands", "pose", "masks", "crops_heatmaps", "encode", "write")


def repeat_folder(src: str, dst: str, repeat: int) -> int:
    """`repeat` copies of the labelled folder `src` under `dst`/rep{k}/{label}/; returns the image count."""
    n = 0
    for k in range(repeat):
        for label in sorted(os.listdir(src)):
            if not os.path.isdir(os.path.join(src, label)):
                continue
            os.makedirs(os.path.join(dst, f"rep{k}", label), exist_ok=True)
            for name in sorted(os.listdir(os.path.join(src, label))):
                shutil.copy(os.path.join(src, label, name), os.path.join(dst, f"rep{k}", label, name))
                n += 1
    return n


def stage_ms(stats: list[dict], images: int) -> dict:
    total = Counter()
    for s in stats:
        total.update(s["timings"])
    return {k: round(1000 * total.get(k, 0.0) / images, 2) for k in (*STAGES, "annotate")}


def warm_up(config, records) -> int:
    """Build the annotator and process a few records into a scratch shard: first calls (models, lazy
    imports, codecs, the Parquet writer) are paid before any clock starts."""
    from prep.process import process_shard

    process_shard(0, records, dataclasses.replace(config, out=f"{config.out}-warmup-{os.getpid()}"), "warmup")
    return os.getpid()


def timed_cluster_run(config, workers: int) -> dict:
    """Plan and run every shard on a warm `workers`-process LocalCluster; wall time excludes start-up."""
    from prep.runner import dask_client, run_shards
    from prep.shards import plan_shards
    from prep.sources import load_records

    config = dataclasses.replace(config, workers=workers)
    shards = plan_shards(load_records(config), config)
    with dask_client(config) as client:
        client.run(warm_up, config, shards[0].records[:3])  # models load before the clock starts
        t0 = time.perf_counter()
        done, failed, _ = run_shards(shards, config, client)
        wall = time.perf_counter() - t0
    assert not failed, failed
    images = sum(s["images"] for s in done)
    return {"workers": workers, "images": images, "seconds": round(wall, 3), "images_per_s": round(images / wall, 2),
            "task_seconds": round(sum(s["seconds"] for s in done), 3), "stats": done, "status_counts": dict(sum((Counter(s["status_counts"]) for s in done), Counter()))}  # fmt: skip


def in_process_run(config) -> dict:
    """Every shard in this process, one after another, pinned to one CPU (no Dask)."""
    from prep.process import process_shard
    from prep.shards import plan_shards
    from prep.sources import load_records

    shards = plan_shards(load_records(config), config)
    # One core: the affinity holds every thread of this process (OpenCV's pool included) to one CPU.
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    try:
        warm_up(config, shards[0].records[:3])
        t0 = time.perf_counter()
        stats = [process_shard(s.index, s.records, config, s.fingerprint) for s in shards]
        wall = time.perf_counter() - t0
    finally:
        os.sched_setaffinity(0, affinity)
    images = sum(s["images"] for s in stats)
    return {
        "images": images,
        "seconds": round(wall, 3),
        "images_per_s": round(images / wall, 2),
        "stats": stats,
    }


def hagrid_tree_from_manifest(manifest: str, src: str, dst: str, repeat: int) -> None:
    """A HaGRID-layout tree of `src`'s photos whose landmarks are the manifest's detected keypoints.

    Only photos with at least one detected hand go in: the annotator falls back to detection for a
    record without keypoints, and this tree is for timing the no-detector path.
    """
    import pyarrow.parquet as pq

    images = {
        r["image_id"]: r
        for r in pq.read_table(f"{manifest}/images", columns=["image_id", "width", "height"]).to_pylist()
    }
    hands: dict[str, list] = {}
    for h in pq.read_table(f"{manifest}/hands", columns=["image_id", "keypoints"]).to_pylist():
        hands.setdefault(h["image_id"], []).append(h["keypoints"])
    for k in range(repeat):
        for label in sorted(os.listdir(src)):
            entries = {}
            os.makedirs(os.path.join(dst, label), exist_ok=True)
            for name in sorted(os.listdir(os.path.join(src, label))):
                stem = os.path.splitext(name)[0]
                image_id = f"rep0__{label}__{stem}"
                if not hands.get(image_id):
                    continue
                w, h = images[image_id]["width"], images[image_id]["height"]
                marks = [[[x / w, y / h] for x, y, _ in kps] for kps in hands.get(image_id, [])]
                boxes = [[min(p[0] for p in m), min(p[1] for p in m), max(p[0] for p in m) - min(p[0] for p in m),
                          max(p[1] for p in m) - min(p[1] for p in m)] for m in marks]  # fmt: skip
                shutil.copy(os.path.join(src, label, name), os.path.join(dst, label, f"{stem}-{k}.jpg"))
                entries[f"{stem}-{k}"] = {"bboxes": boxes, "labels": [label] * len(boxes), "hand_landmarks": marks,
                                          "user_id": stem}  # fmt: skip
            os.makedirs(os.path.join(dst, "annotations", "train"), exist_ok=True)
            path = os.path.join(dst, "annotations", "train", f"{label}.json")
            if os.path.exists(path):
                entries = {**json.load(open(path)), **entries}
            with open(path, "w") as f:
                json.dump(entries, f)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default=os.path.join(ROOT, "..", "shared", "data", "hagrid_mini"))
    parser.add_argument("--repeat", type=int, default=5, help="copies of the input (5 x 40 = 200 images)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "prep.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from prep.cli import quiet_dask

    quiet_dask(logging.ERROR)

    from prep.config import PrepConfig

    tmp = tempfile.mkdtemp(prefix="bench-prep-")
    try:
        photos = os.path.join(tmp, "photos")
        n = repeat_folder(os.path.abspath(args.input), photos, args.repeat)
        base = PrepConfig(input=photos, label_from_dir=True, shard_size=args.shard_size, progress=False)
        load = {"before": os.getloadavg()}

        # 1. detect mode: 1 worker, then `workers` workers, each on a warm cluster
        runs = {}
        for w in sorted({1, args.workers}):
            runs[w] = timed_cluster_run(dataclasses.replace(base, out=os.path.join(tmp, f"detect-{w}")), w)
        one = runs[1]
        stages = stage_ms(one["stats"], one["images"])
        wall_ms = 1000 * one["seconds"] / one["images"]
        inference = sum(stages[k] for k in INFERENCE)
        overhead = wall_ms - inference - stages["decode"]
        detect = {
            "images": one["images"],
            "status_counts": one["status_counts"],
            "stage_ms_per_image": stages,
            "wall_ms_per_image_1_worker": round(wall_ms, 2),
            "unaccounted_ms_per_image": round(wall_ms - stages["annotate"] - stages["write"], 2),
            "model_inference_ms": round(inference, 2),
            "pipeline_overhead_ms": round(overhead, 2),
            "pipeline_overhead_share": round(overhead / wall_ms, 4),
            "throughput_images_per_s": {str(w): r["images_per_s"] for w, r in runs.items()},
            # inside-task time per image, and the share of the wall time each worker spent inside tasks:
            # a share near 1 means the scheduler kept every worker busy, so a speed-up below the worker
            # count comes from slower tasks (CPU contention), not from the pipeline.
            "task_ms_per_image": {
                str(w): round(1000 * r["task_seconds"] / r["images"], 2) for w, r in runs.items()
            },
            "worker_busy_share": {
                str(w): round(r["task_seconds"] / (r["seconds"] * w), 3) for w, r in runs.items()
            },
            "speedup": round(runs[args.workers]["images_per_s"] / one["images_per_s"], 3),
        }

        # 2. annotation-keypoints mode on the same photos, landmarks from the detect run
        tree = os.path.join(tmp, "hagrid")
        hagrid_tree_from_manifest(
            os.path.join(tmp, "detect-1"), os.path.abspath(args.input), tree, args.repeat
        )
        ann = dataclasses.replace(base, input=tree, format="hagrid", keypoint_source="annotation", body_pose=False,
                                  wrist_refine=False, mask_method="none")  # fmt: skip
        core = in_process_run(dataclasses.replace(ann, out=os.path.join(tmp, "ann-1core")))
        cluster = timed_cluster_run(
            dataclasses.replace(ann, out=os.path.join(tmp, "ann-cluster")), args.workers
        )
        grab = in_process_run(
            dataclasses.replace(ann, mask_method="grabcut", limit=40, out=os.path.join(tmp, "ann-grabcut"))
        )
        annotation = {
            "images": core["images"],
            "image_longest_side": 512,
            "note": "photos where the detect run found a hand, with those keypoints as the dataset's annotation",
            "settings": {
                "keypoint_source": "annotation",
                "body_pose": False,
                "mask_method": "none",
                "crop_size": ann.crop_size,
                "heatmap_size": ann.resolved_heatmap_size(),
            },  # fmt: skip
            "images_per_s_per_core": core["images_per_s"],
            "stage_ms_per_image_1_core": stage_ms(core["stats"], core["images"]),
            f"images_per_s_{args.workers}_workers": cluster["images_per_s"],
            "grabcut_masks_images_per_s_per_core": grab["images_per_s"],
        }
        load["after"] = os.getloadavg()
        result = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_1_5_15": load},
            "input": {
                "source": args.input,
                "repeat": args.repeat,
                "images": n,
                "shard_size": args.shard_size,
            },
            "detect_mode": detect,
            "annotation_mode": annotation,
            "targets": {
                "pipeline_overhead_share_below_0.15": detect["pipeline_overhead_share"] < 0.15,
                f"speedup_{args.workers}_workers_at_least_1.8": detect["speedup"] >= 1.8,
                "annotation_mode_at_least_100_images_per_s_per_core": annotation["images_per_s_per_core"]
                >= 100,
            },
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
