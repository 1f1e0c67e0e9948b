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
3. full HD: the same photos upscaled 3.75x to 1440x1920 (the size of real HaGRID photos, bicubic,
   JPEG quality 95) against the originals, in detect mode on one core of this process, one annotator
   each, alternating photo by photo so the machine's load weighs on both alike: time per image and
   per stage, the ratio, the status of every photo, and how far the full-HD keypoints (divided by
   3.75) lie from the 512-px ones.

    .venv/bin/python bench/prep.py [--repeat 5] [--workers 2] [--fullhd-rounds 3] [--only full_hd]

`--only full_hd` runs section 3 alone and replaces only its entry (and target) in the result file.

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
from bench._common import portable  # noqa: E402

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
    from prep.shard import process_shard

    process_shard(0, records, dataclasses.replace(config, out=f"{config.out}-warmup-{os.getpid()}"), "warmup")
    return os.getpid()


def timed_cluster_run(config, workers: int) -> dict:
    """Plan and run every shard on a warm `workers`-process LocalCluster; wall time excludes start-up."""
    from prep.cluster import dask_client, run_shards
    from prep.plan import plan_shards
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
    return {
        "workers": workers,
        "images": images,
        "seconds": round(wall, 3),
        "images_per_s": round(images / wall, 2),
        "task_seconds": round(sum(s["seconds"] for s in done), 3),
        "stats": done,
        "status_counts": dict(sum((Counter(s["status_counts"]) for s in done), Counter())),
    }


def in_process_run(config) -> dict:
    """Every shard in this process, one after another, pinned to one CPU (no Dask)."""
    from prep.plan import plan_shards
    from prep.shard import process_shard
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
                boxes = [
                    [
                        min(p[0] for p in m),
                        min(p[1] for p in m),
                        max(p[0] for p in m) - min(p[0] for p in m),
                        max(p[1] for p in m) - min(p[1] for p in m),
                    ]
                    for m in marks
                ]
                shutil.copy(os.path.join(src, label, name), os.path.join(dst, label, f"{stem}-{k}.jpg"))
                entries[f"{stem}-{k}"] = {
                    "bboxes": boxes,
                    "labels": [label] * len(boxes),
                    "hand_landmarks": marks,
                    "user_id": stem,
                }
            os.makedirs(os.path.join(dst, "annotations", "train"), exist_ok=True)
            path = os.path.join(dst, "annotations", "train", f"{label}.json")
            if os.path.exists(path):
                entries = {**json.load(open(path)), **entries}
            with open(path, "w") as f:
                json.dump(entries, f)


FULL_HD_SCALE = 3.75  # 384x512 -> 1440x1920


def upscale_folder(src: str, dst: str, factor: float) -> list[tuple[str, str]]:
    """Bicubic `factor`x JPEG copies (quality 95) of the labelled folder `src` under `dst`/{label}/;
    returns (original, copy) path pairs."""
    from PIL import Image

    pairs = []
    for label in sorted(os.listdir(src)):
        if not os.path.isdir(os.path.join(src, label)):
            continue
        os.makedirs(os.path.join(dst, label), exist_ok=True)
        for name in sorted(os.listdir(os.path.join(src, label))):
            im = Image.open(os.path.join(src, label, name)).convert("RGB")
            out = os.path.join(dst, label, os.path.splitext(name)[0] + ".jpg")
            im.resize((round(im.width * factor), round(im.height * factor)), Image.BICUBIC).save(
                out, quality=95
            )
            pairs.append((os.path.join(src, label, name), out))
    return pairs


def keypoint_errors(small: list[dict], big: list[dict], factor: float) -> tuple[list[float], int]:
    """(per keypoint, the distance in px of the small photo from each small-photo hand to the full-HD
    hand (divided by `factor`) nearest to it; the number of small-photo hands with no full-HD hand
    within half their size, which are left out of the distances)."""
    import numpy as np

    out, unmatched = [], 0
    for hand in small:
        ref = np.array(hand["keypoints"])[:, :2]
        dists = [np.linalg.norm(np.array(b["keypoints"])[:, :2] / factor - ref, axis=1) for b in big]
        best = min(dists, key=lambda d: d.mean(), default=None)
        if best is None or best.mean() > 0.5 * hand["hand_size"]:
            unmatched += 1
        else:
            out.extend(best.tolist())
    return out, unmatched


def decode_costs(paths: list[str], max_side: int, rounds: int) -> dict:
    """ms per full-HD photo of the ways to get its reduced pixels, alternating photo by photo: the
    pipeline's (JPEG draft mode, then full resolution decoded again for small hands), the draft alone,
    one full decode to an array (the old way), and one full decode filtered down to the reduced size
    (the full image kept for crops)."""
    import io

    from PIL import Image

    from prep.imageio import decode_image, reduced_size

    def full_then_reduce(data: bytes) -> None:
        im = Image.open(io.BytesIO(data))
        im.load()  # the upscaled copies are upright RGB JPEGs: no orientation or mode to handle
        target = reduced_size(*im.size, max_side)
        factor = max(1, min(im.width // target[0], im.height // target[1]))
        small = im.reduce(factor) if factor > 1 else im
        small.resize(target, Image.BILINEAR, box=(0, 0, im.width / factor, im.height / factor))

    ways = {
        "draft_then_full": lambda data: decode_image(data, 10**9, max_side=max_side).full_image(),
        "draft_only": lambda data: decode_image(data, 10**9, max_side=max_side),
        "full_only": lambda data: decode_image(data, 10**9),
        "full_then_reduce": full_then_reduce,
    }
    blobs = [open(p, "rb").read() for p in paths]
    total = dict.fromkeys(ways, 0.0)
    for _ in range(rounds):
        for data in blobs:
            for name, way in ways.items():
                t0 = time.perf_counter()
                way(data)
                total[name] += time.perf_counter() - t0
    return {name: round(1000 * t / (rounds * len(blobs)), 2) for name, t in total.items()}


def full_hd_case(src: str, tmp: str, rounds: int) -> dict:
    """Section 3: detect mode on the 512-px photos and their full-HD copies, side by side."""
    import numpy as np

    from prep.annotate import Annotator
    from prep.config import PrepConfig
    from prep.records import ImageRecord

    pairs = upscale_folder(src, os.path.join(tmp, "fullhd"), FULL_HD_SCALE)

    def record(path: str) -> ImageRecord:
        label, stem = os.path.basename(os.path.dirname(path)), os.path.splitext(os.path.basename(path))[0]
        return ImageRecord(image_id=f"{label}__{stem}", source_uri=path, dataset="folder", label=label)

    small, big = Annotator(PrepConfig()), Annotator(PrepConfig())
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})  # one core, as in section 2
    wall = {"512": 0.0, "full_hd": 0.0}
    try:
        for a, path in ((small, pairs[0][0]), (big, pairs[0][1])):  # models load before any clock starts
            a.annotate(record(path))
            a.timings = dict.fromkeys(a.timings, 0.0)
        decode_ms = decode_costs([b for _, b in pairs], PrepConfig().max_image_side, rounds)
        for _ in range(rounds):
            rows = []
            for s_path, b_path in pairs:
                t0 = time.perf_counter()
                s_row = small.annotate(record(s_path))
                t1 = time.perf_counter()
                b_row = big.annotate(record(b_path))
                wall["512"] += t1 - t0
                wall["full_hd"] += time.perf_counter() - t1
                rows.append((s_row, b_row))
    finally:
        os.sched_setaffinity(0, affinity)
        small.close()
        big.close()
    n = len(pairs) * rounds
    matched = [keypoint_errors(sh, bh, FULL_HD_SCALE) for (_, sh), (_, bh) in rows]
    errors = np.array([e for found, _ in matched for e in found])
    differ = {
        s["image_id"]: {"512": [s["status"], len(sh)], "full_hd": [b["status"], len(bh)]}
        for (s, sh), (b, bh) in rows
        if (s["status"], len(sh)) != (b["status"], len(bh))
    }
    ms = {k: round(1000 * v / n, 2) for k, v in wall.items()}
    return {
        "input": f"{src} upscaled {FULL_HD_SCALE}x (bicubic, JPEG quality 95)",
        "photos": len(pairs),
        "rounds": rounds,
        "full_hd_size_example": list(_size(pairs[0][1])),
        "ms_per_image_1_core": ms,
        "ratio_full_hd_to_512": round(ms["full_hd"] / ms["512"], 3),
        "stage_ms_per_image": {
            "512": {k: round(1000 * v / n, 2) for k, v in small.timings.items()},
            "full_hd": {k: round(1000 * v / n, 2) for k, v in big.timings.items()},
        },
        "status_counts": {
            "512": dict(Counter(s["status"] for (s, _), _ in rows)),
            "full_hd": dict(Counter(b["status"] for _, (b, _) in rows)),
        },
        "hands": {"512": sum(len(sh) for (_, sh), _ in rows), "full_hd": sum(len(bh) for _, (_, bh) in rows)},
        "photos_that_differ": differ,
        "keypoint_error_px_at_512": {
            "hands_without_a_full_hd_match": sum(n for _, n in matched),
            "keypoints": int(errors.size),
            "median": round(float(np.median(errors)), 3),
            "p95": round(float(np.percentile(errors, 95)), 3),
            "max": round(float(errors.max()), 3),
            "share_within_2px": round(float(np.mean(errors <= 2.0)), 4),
        },
        # Full resolution is decoded again for nearly every full-HD photo here (its hands' crops are all
        # "small" at crop_size 512), so how the reduced pixels are made matters: see these.
        "decode_ms_per_full_hd_photo": decode_ms,
        "full_hd_photos_with_a_hand_cropped_at_full_resolution": sum(
            any(
                (h["crop_box"][2] - h["crop_box"][0]) * b["image_width"] / b["width"] < h["crop_size"]
                for h in bh
            )
            for _, (b, bh) in rows
        ),
        "stored_image_size_full_hd": sorted({(b["image_width"], b["image_height"]) for _, (b, _) in rows}),
        "load_average_before_after": None,  # filled in by main
    }


def _size(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def run_full_hd(args) -> tuple[dict, dict]:
    """(section 3's entry, its targets)."""
    tmp = tempfile.mkdtemp(prefix="bench-prep-fullhd-")
    try:
        before = os.getloadavg()[0]
        full_hd = full_hd_case(os.path.abspath(args.input), tmp, args.fullhd_rounds)
        full_hd["load_average_before_after"] = [round(before, 2), round(os.getloadavg()[0], 2)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kp = full_hd["keypoint_error_px_at_512"]
    targets = {
        "full_hd_at_most_1.3x_512px_per_image": full_hd["ratio_full_hd_to_512"] <= 1.3,
        "full_hd_same_photos_and_hands_as_512px": not full_hd["photos_that_differ"],
        "full_hd_keypoints_within_2px_p95": kp["p95"] <= 2.0,
    }
    return full_hd, targets


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default=os.path.join(ROOT, "..", "shared", "data", "hagrid_mini"))
    parser.add_argument("--repeat", type=int, default=5, help="copies of the input (5 x 40 = 200 images)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "prep.json"))
    parser.add_argument("--fullhd-rounds", type=int, default=3, help="passes over the photos in section 3")
    parser.add_argument("--only", choices=("full_hd",), help="run one section and update only its entry")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from prep.cli import quiet_dask

    quiet_dask(logging.ERROR)
    if args.only == "full_hd":
        with open(args.out) as f:
            result = json.load(f)
        result["full_hd"], targets = run_full_hd(args)
        result["targets"] = {
            k: v for k, v in result["targets"].items() if not k.startswith("full_hd")
        } | targets
        return _write(args.out, result)

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
        ann = dataclasses.replace(
            base,
            input=tree,
            format="hagrid",
            keypoint_source="annotation",
            body_pose=False,
            wrist_refine=False,
            mask_method="none",
        )
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
            },
            "images_per_s_per_core": core["images_per_s"],
            "stage_ms_per_image_1_core": stage_ms(core["stats"], core["images"]),
            f"images_per_s_{args.workers}_workers": cluster["images_per_s"],
            "grabcut_masks_images_per_s_per_core": grab["images_per_s"],
        }
        load["after"] = os.getloadavg()
        full_hd, full_hd_targets = run_full_hd(args)
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
            "full_hd": full_hd,
            "targets": {
                "pipeline_overhead_share_below_0.15": detect["pipeline_overhead_share"] < 0.15,
                f"speedup_{args.workers}_workers_at_least_1.8": detect["speedup"] >= 1.8,
                "annotation_mode_at_least_100_images_per_s_per_core": annotation["images_per_s_per_core"]
                >= 100,
                **full_hd_targets,
            },
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _write(args.out, result)


def _write(path: str, result: dict) -> dict:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(portable(result), f, indent=2)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
