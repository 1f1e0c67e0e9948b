"""Ablations beside the paper's comparison, on the runs of `bench/learns.py`.

`bench/learns.py` already trains the one-stage baseline (stage 2's trainer and settings on the pose and
hand skeletons only: an OpenPose-full ControlNet at our scale) and tables real, that baseline, and the
two stages under none / fixed / sequential. From its finished ``--work WORK``, this script adds:

1. ``handfirst-gen baseline --method sd``: the baseline's base UNet from the prompt alone, no pose;
2. the blending start: ``--blend sequential --d0 0.1`` (each keep-mask starts grown by a tenth of its
   hand's size; learns' sequential row is ``--d0 0``, the default);
3. ``evaluate`` of each, and one ``--compare`` table of real, both baselines, none, fixed, sequential
   (d0 0.1) and sequential (d0 0), in WORK/eval/ablation/compare.md: learns' rows and these, from the
   same models, rows and seed. It is printed; the committed table is learns' own.

Writes bench/results/ablation.json.

    .venv/bin/python bench/ablation.py --work /tmp/learns/full
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench._common import machine, portable  # noqa: E402

logger = logging.getLogger("bench.ablation")
RESULTS = os.path.join(ROOT, "bench", "results")
GEN = os.path.join(os.path.dirname(sys.executable), "handfirst-gen")
HAND_KEYS = (
    "count",
    "crop_detected_share",
    "crop_pck_0.2",
    "detected_share",
    "pck_0.2",
    "seam",
    "fidelity",
    "mean_confidence",
    "wrist_gap",
)


def cli(*args: str) -> None:
    logger.info("handfirst-gen %s", " ".join(args))
    subprocess.run([GEN, *args, "--log-level", "WARNING"], check=True, stdout=subprocess.DEVNULL)


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def ring_greyness(folder: str, names: list[str]) -> float | None:
    """Mean distance from mid-grey of the pixels in a band 1-2 latent pixels (8-16 px) outside the pasted
    hands, over the images of `folder`: the grey of the hand canvas carried into the latents by the
    dilated keep-mask would lower it. None when no image has a stage-1 canvas mask."""
    import cv2
    from PIL import Image

    values = []
    for name in names:
        mask_path = os.path.join(folder, f"{name}_stage1", "canvas_mask.png")
        if not os.path.isfile(mask_path):
            continue
        mask = np.asarray(Image.open(mask_path)) > 127
        image = np.asarray(Image.open(os.path.join(folder, f"{name}.png")).convert("RGB"), np.float32) / 255.0
        near = cv2.dilate(mask.astype(np.uint8), np.ones((17, 17), np.uint8)) > 0
        inner = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        band = near & ~inner
        if band.any():
            values.append(float(np.abs(image[band] - 0.5).mean()))
    return round(float(np.mean(values)), 4) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="the work folder of a finished bench/learns.py run")
    parser.add_argument("--rows", type=int, default=None, help="rows (default: as many as learns generated)")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (learns samples with 25)")
    parser.add_argument("--quick", action="store_true", help="a few training steps: check the plumbing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = os.path.abspath(args.work)
    manifest, vae, hand, body = (os.path.join(work, n) for n in ("manifest", "vae", "hand", "body"))
    for path in (manifest, vae, hand, body, os.path.join(work, "eval", "sequential", "report.json")):
        if not os.path.exists(path):
            print(
                f"bench/ablation.py: {path} is missing: run bench/learns.py --work {work} first",
                file=sys.stderr,
            )
            return 2
    names = sorted(
        p[:-5] for p in os.listdir(os.path.join(work, "generated", "sequential")) if p.endswith(".json")
    )
    rows = args.rows or len(names)
    body_config = read_json(os.path.join(body, "config.json"))["config"]
    side, fit = int(body_config.get("resolution") or 128), body_config.get("fit", "cover")
    seconds, load_before = {}, os.getloadavg()[0]

    # The one-stage baseline: learns' run. A learns run from before it trained one gets it trained here,
    # as learns trains it: stage 2's settings on the pose and hand skeletons only.
    onestage = os.path.join(work, "baseline")
    if not os.path.isfile(os.path.join(onestage, "model_index.json")):
        t0 = time.perf_counter()
        train = [
            "train-body",
            "--config",
            os.path.join(body, "config.json"),
            "--out",
            onestage,
            "--resume",
            "latest",
            "--condition-channels",
            "pose",
            "--draw-hand-skeletons",
        ]
        if args.quick:
            train += ["--steps", "4"]
        cli(*train)
        seconds["train_onestage"] = round(time.perf_counter() - t0, 1)

    # 1.-2. Drawn on the rows, seed and framing of learns' generate runs.
    common = [
        "--from-manifest",
        manifest,
        "--split",
        "all",
        "--limit",
        str(rows),
        "--steps",
        str(args.steps),
        "--seed",
        "0",
    ]
    variants = {
        "baseline-sd": [
            "baseline",
            "--method",
            "sd",
            "--pretrained",
            onestage,
            "--fit",
            fit,
            "--size",
            str(side),
            "--no-progress",
            *common,
        ],
    }
    for d0 in (0.1,):
        variants[f"sequential-d0-{d0}"] = [
            "generate",
            "--hand-model",
            hand,
            "--body-model",
            body,
            "--blend",
            "sequential",
            "--d0",
            str(d0),
            "--min-hand-size",
            "6",
            *common,
        ]
    for name, command in variants.items():
        t0 = time.perf_counter()
        out = os.path.join(work, "generated", name)
        cli(*command, "--out", out)
        cli(
            "evaluate",
            "--manifest",
            manifest,
            "--generated",
            out,
            "--out",
            os.path.join(work, "eval", name),
            "--split",
            "all",
            "--limit",
            str(rows),
            "--label",
            name,
            "--no-progress",
        )
        seconds[name] = round(time.perf_counter() - t0, 1)

    # 3. One table.
    order = [
        "real",
        "baseline-sd",
        "baseline",
        "none",
        "fixed",
        "sequential-d0-0.1",
        "sequential",
    ]
    title = f"mini scale, {rows} hagrid_mini training rows: one-stage baselines against two stages"
    cli(
        "evaluate",
        "--compare",
        *[os.path.join(work, "eval", n) for n in order],
        "--out",
        os.path.join(work, "eval", "ablation"),
        "--title",
        title,
    )
    rows_out = {}
    for name in order:
        report = read_json(os.path.join(work, "eval", name, "report.json"))
        rows_out[name] = {k: report.get("hands", {}).get(k) for k in HAND_KEYS}
        rows_out[name]["body_detected_share"] = report.get("body", {}).get("detected_share")
        rows_out[name]["body_pck_0.2"] = report.get("body", {}).get("pck_0.2")
    ring = {
        n: ring_greyness(os.path.join(work, "generated", n), names[:rows])
        for n in ("sequential-d0-0.1", "sequential")
    }
    result = {
        "benchmark": "ablation",
        "what": title,
        "quick": args.quick,
        "work": work,
        "rows": rows,
        "framing": {"fit": fit, "side": side},
        "onestage_config": {
            "condition_channels": ["pose"],
            "draw_hand_skeletons": True,
            "steps": body_config.get("steps"),
            "note": "stage 2's own settings otherwise",
        },
        "hands": rows_out,
        "ring_distance_from_grey": ring,
        "seconds": seconds,
        "machine": machine(load_before),
    }
    os.makedirs(RESULTS, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    with open(os.path.join(RESULTS, f"ablation{suffix}.json"), "w", encoding="utf-8") as f:
        json.dump(portable(result), f, indent=2, default=float)
    with open(os.path.join(work, "eval", "ablation", "compare.md"), encoding="utf-8") as f:
        table = f.read()
    print(table)
    print(json.dumps({"hands": rows_out, "ring_distance_from_grey": ring}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
