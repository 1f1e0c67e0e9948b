"""Two-stage generation cost: the tiny preset on the CPU, side by side in one process.

1. Blending modes at equal steps: the same request (two hands, one body, same seed) through
   `TwoStageHandBodyPipeline` with ``sequential``, ``fixed`` and ``none``. Blending overhead is what
   a blending mode adds to stage 2 over ``none`` (the VAE encoding of the hands plus the per-step
   blend), as a share of the sampling time (stage 1 + stage 2); the time spent inside the step hook is
   reported too. Target: under 3%. ``sequential_canvas`` encodes the whole hand canvas instead of a
   window around each hand, to show what the windows save.
2. Two stages against their parts: the two-stage total against the hand generator alone on the same
   hands plus one ControlNet pass (`BodyOutpaintPipeline` alone, same canvas, steps and condition).
   Target: no more than stage 1 + stage 2 + 5%.

Every round runs all variants back to back in a rotating order; ratios are taken within a round and
the median over `--repeats` rounds is reported (plus the ratio of the per-variant minimums), so drifting
load on a shared machine affects every variant alike. Random-weight tiny models (the timing does not
depend on training). No accelerator is used; SD-1.5-sized timings need a GPU machine and are not produced here.

    .venv/bin/python bench/generate.py [--size 256] [--steps 20] [--repeats 9] [--threads 1]

Prints a table and writes bench/results/generate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench._common import portable  # noqa: E402

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from generation.models.body import build_body_model  # noqa: E402
from generation.models.hand import HandUNet  # noqa: E402
from generation.models.loading import build_components  # noqa: E402
from generation.models.schedulers import sampling_scheduler  # noqa: E402
from generation.pipelines.body import BodyOutpaintPipeline  # noqa: E402
from generation.pipelines.hand import HandGenerationPipeline, keypoints_to_heatmaps  # noqa: E402
from generation.pipelines.two_stage import TwoStageHandBodyPipeline  # noqa: E402
from manifests.synthetic import synthetic_hand  # noqa: E402

PROMPT = "a person showing a peace sign"


def build_pipeline(seed: int = 0) -> TwoStageHandBodyPipeline:
    torch.manual_seed(seed)
    c = build_components("tiny", resolution=64, seed=seed)
    hand = HandGenerationPipeline(
        HandUNet.from_unet(c.unet), c.vae, c.text_encoder, c.tokenizer, sampling_scheduler(c.scheduler)
    )
    b = build_components("tiny", resolution=64, seed=seed + 1)
    body = BodyOutpaintPipeline.from_components(b, build_body_model(b, "standard"))
    pipe = TwoStageHandBodyPipeline.from_pipelines(hand, body, crop_margin=0.25)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def request(size: int) -> dict:
    rng = np.random.default_rng(0)
    hand = 0.2 * size  # keypoint extent; the crop box adds the 25% margin on each side
    right = synthetic_hand(rng, (0.28 * size, 0.4 * size), hand)
    left = synthetic_hand(rng, (0.72 * size, 0.4 * size), hand)
    body = np.zeros((33, 3))
    body[:, 0] = rng.uniform(0.2, 0.8, 33) * size
    body[:, 1] = np.linspace(0.05, 0.95, 33) * size
    body[:, 2] = 1.0
    return {
        "hands": [right, left],
        "handedness": ["right", "left"],
        "body_keypoints": body,
        "width": size,
        "height": size,
    }


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="output side in pixels (hand crops are 64 px)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of both stages")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "generate.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = build_pipeline()
    req = request(args.size)
    common = {"prompt": PROMPT, **req, "num_inference_steps": args.steps, "output_type": "np", "seed": 0}
    # label -> pipeline arguments; "sequential_canvas" encodes the whole hand canvas instead of windows.
    variants_kwargs = {
        "sequential": {"blend": "sequential"},
        "fixed": {"blend": "fixed"},
        "none": {"blend": "none"},
        "sequential_canvas": {"blend": "sequential", "hand_encoding": "canvas"},
    }
    modes = tuple(variants_kwargs)
    pipe(**common, blend="none")  # warm-up: first calls allocate and pick kernels

    # The standalone parts, on the inputs the two-stage pipeline gives them.
    probe = pipe(**common, blend="none")
    placed, _ = pipe.place_hands(
        req["hands"], req["handedness"], ["a right hand", "a left hand"], pipe.hand_crop_size, 16.0, "skip"
    )
    heatmaps = keypoints_to_heatmaps(
        np.stack([p.crop_keypoints for p in placed]),
        pipe.hand_crop_size,
        pipe.hand_crop_size // 8,
        pipe.hand_unet.config.heatmap_sigma,
    )
    condition = pipe.build_condition(
        req["body_keypoints"],
        "mediapipe33",
        probe.hand_canvas,
        probe.hand_mask,
        [p.keypoints for p in placed],
    )

    def hand_alone():
        pipe.hand_pipeline(
            [p.prompt for p in placed],
            heatmaps=heatmaps,
            num_inference_steps=args.steps,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )

    def body_alone():
        pipe.body_pipeline(
            PROMPT,
            condition=condition,
            num_inference_steps=args.steps,
            generator=torch.Generator().manual_seed(1),
            output_type="np",
        )

    variants = [*modes, "hand_alone", "body_alone"]
    runs = {m: [] for m in modes}
    parts = {"hand_alone": [], "body_alone": []}
    for r in range(args.repeats):
        # Rotate the order every round so no variant always runs first (or after the same one).
        for name in variants[r % len(variants) :] + variants[: r % len(variants)]:
            if name in parts:
                parts[name].append(timed(hand_alone if name == "hand_alone" else body_alone))
            else:
                runs[name].append(pipe(**common, **variants_kwargs[name]).timings)
        print(
            f"round {r + 1}/{args.repeats}: "
            + ", ".join(f"{m} {runs[m][-1]['total']:.2f}s" for m in modes)
            + f", hand alone {parts['hand_alone'][-1]:.2f}s, ControlNet alone {parts['body_alone'][-1]:.2f}s"
        )

    # Paired per round (the variants of one round ran back to back), then the median over rounds.
    def paired(fn):
        return statistics.median(fn(r) for r in range(args.repeats))

    def med(mode, key):
        return statistics.median(t[key] for t in runs[mode])

    def sampling(r):  # stage 1 + stage 2 of the `none` run of round r
        return runs["none"][r]["stage1"] + runs["none"][r]["stage2"]

    table = {}
    for mode in modes:
        table[mode] = {
            "total_s": med(mode, "total"),
            "stage1_s": med(mode, "stage1"),
            "stage2_s": med(mode, "stage2"),
            "hook_s": med(mode, "blend"),
            "decode_s": med(mode, "decode"),
            "blend_overhead_vs_none": paired(
                lambda r, m=mode: (runs[m][r]["stage2"] - runs["none"][r]["stage2"]) / sampling(r)
            ),
            "hook_share_of_sampling": paired(
                lambda r, m=mode: runs[m][r]["blend"] / (runs[m][r]["stage1"] + runs[m][r]["stage2"])
            ),
            "blend_overhead_of_minimums": (
                min(t["stage2"] for t in runs[mode]) - min(t["stage2"] for t in runs["none"])
            )
            / min(t["stage1"] + t["stage2"] for t in runs["none"]),
        }
    hand_s, body_s = statistics.median(parts["hand_alone"]), statistics.median(parts["body_alone"])
    two_stage = {
        mode: {
            "total_s": table[mode]["total_s"],
            "ratio_to_parts": paired(
                lambda r, m=mode: runs[m][r]["total"] / (parts["hand_alone"][r] + parts["body_alone"][r])
            ),
            "ratio_of_minimums": min(t["total"] for t in runs[mode])
            / (min(parts["hand_alone"]) + min(parts["body_alone"])),
            "ratio_to_controlnet_alone": paired(
                lambda r, m=mode: runs[m][r]["total"] / parts["body_alone"][r]
            ),
        }
        for mode in modes
    }
    result = {
        "benchmark": "generate",
        "device": "cpu",
        "gpu": "no CUDA device was available for this run; SD-1.5-sized 512 px timings not measured",
        "models": "tiny preset, random weights (hand crops 64 px, UNet (32, 64), 4-level VAE)",
        "size": args.size,
        "steps": args.steps,
        "hands": 2,
        "guidance": "text CFG 7.5 in both stages",
        "repeats": args.repeats,
        "threads": args.threads,
        "blending": table,
        "parts": {"hand_alone_s": hand_s, "body_alone_s": body_s},
        "two_stage_vs_parts": two_stage,
        "targets": {
            "blend_overhead_under": 0.03,
            "sequential_overhead_ok": table["sequential"]["blend_overhead_vs_none"] < 0.03,
            "fixed_overhead_ok": table["fixed"]["blend_overhead_vs_none"] < 0.03,
            "two_stage_ratio_at_most": 1.05,
            "two_stage_ok": two_stage["sequential"]["ratio_to_parts"] <= 1.05,
        },
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print(
        f"\n{'mode':<17} {'total s':>8} {'stage1 s':>9} {'stage2 s':>9} {'hook s':>8} {'overhead':>9} {'(of mins)':>9}"
    )
    for mode, row in table.items():
        print(
            f"{mode:<17} {row['total_s']:8.3f} {row['stage1_s']:9.3f} {row['stage2_s']:9.3f} "
            f"{row['hook_s']:8.4f} {row['blend_overhead_vs_none']:9.2%} {row['blend_overhead_of_minimums']:9.2%}"
        )
    print(
        f"\nhand generator alone {hand_s:.3f}s + ControlNet pass alone {body_s:.3f}s = {hand_s + body_s:.3f}s"
    )
    for mode, row in two_stage.items():
        print(
            f"two-stage ({mode}) {row['total_s']:.3f}s = {row['ratio_to_parts']:.3f}x the parts "
            f"({row['ratio_of_minimums']:.3f}x of minimums), {row['ratio_to_controlnet_alone']:.2f}x one ControlNet pass"
        )
    print(f"load average {result['load_average']}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(portable(result), f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
