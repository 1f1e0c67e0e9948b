"""Stage-1 training throughput: the tiny preset on the CPU, with and without latent caching.

Both sides run the real `train_hand` loop (accelerate, EMA, the manifest dataset, metrics.jsonl) on the
same synthetic manifest (drawn hands, `manifests.synthetic`). The cached side VAE-encodes every crop
once before training (the one-off cost is reported apart) and then samples latents from the stored
posteriors instead of running the VAE encoder each step. Speeds come from the run's own metrics.jsonl,
excluding the first `--warmup` steps. Runs alternate (plain, cached, plain, ...) `--repeats` times and
the median is reported, so drifting machine load affects both sides alike.

With CUDA available, `--gpu` also times an SD-1.5-sized HandUNet (random weights, 512 px crops = 64x64
latents, batch 8, bf16 autocast, AdamW) with and without gradient checkpointing: steps/s and peak memory.

    .venv/bin/python bench/train_hand.py [--images 40] [--steps 60] [--repeats 3] [--resolutions 64 128] [--gpu]

Prints a table and writes bench/results/train_hand.json. On a shared machine, the load average goes with
the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from bench._common import GPU_SKIPPED, machine, print_gpu, run_speed, write_result  # noqa: E402
from generation.training.hand import HandTrainConfig, train_hand  # noqa: E402
from manifests.synthetic import make_synthetic_manifest  # noqa: E402


def run_once(
    manifest: str, out: str, steps: int, warmup: int, batch_size: int, cache: bool, cache_dir: str
) -> dict:
    config = HandTrainConfig(
        manifest=manifest,
        out=out,
        steps=steps,
        batch_size=batch_size,
        log_every=1,
        checkpoint_every=0,
        validate_every=0,
        num_validation_poses=1,
        validation_steps=1,
        cache_latents=cache,
        latent_cache_dir=cache_dir,
    )
    start = time.perf_counter()
    train_hand(config)
    return run_speed(out, warmup, time.perf_counter() - start)


def cpu_side(args) -> list[dict]:
    rows = []
    for res in args.resolutions:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = make_synthetic_manifest(
                os.path.join(tmp, "m"),
                num_images=args.images,
                crop_size=res,
                heatmap_size=res // 8,
                sigma=1.0 * res / 64,
            )
            cache_dir = os.path.join(tmp, "latents")
            t0 = time.perf_counter()
            # First cached run builds the cache; its build time is the one-off cost.
            run_once(manifest, os.path.join(tmp, "build"), 1, 0, args.batch_size, True, cache_dir)
            build_s = time.perf_counter() - t0
            results = {"plain": [], "cached": []}
            for i in range(args.repeats):
                for name in ("plain", "cached"):
                    out = os.path.join(tmp, f"{name}{i}")
                    results[name].append(
                        run_once(
                            manifest,
                            out,
                            args.steps,
                            args.warmup,
                            args.batch_size,
                            name == "cached",
                            cache_dir,
                        )
                    )
            hands = len(json.load(open(os.path.join(cache_dir, "index.json")))["ids"])
            row = {
                "resolution": res,
                "hands": hands,
                "batch_size": args.batch_size,
                "cache_build_plus_1_step_s": round(build_s, 2),
            }
            for name, runs in results.items():
                row[name] = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
            row["cached_speedup"] = round(row["cached"]["steps_per_s"] / row["plain"]["steps_per_s"], 3)
            rows.append(row)
    return rows


def _gpu_run(checkpointing: bool, steps: int, batch: int) -> dict:
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel

    from generation.models.hand import HandUNet
    from generation.models.presets import sd15_unet_config

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = HandUNet.from_unet(UNet2DConditionModel.from_config(sd15_unet_config())).cuda().train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    lat, text = torch.randn(batch, 4, 64, 64, device="cuda"), torch.randn(batch, 77, 768, device="cuda")
    heat, mask = torch.rand(batch, 21, 64, 64, device="cuda"), torch.rand(batch, 1, 64, 64, device="cuda")
    t = torch.randint(0, 1000, (batch,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            o = model(lat, t, text, heat)
        loss = (o.sample.float() - lat).pow(2).mean() + F.binary_cross_entropy_with_logits(
            o.mask_logits.float(), mask
        )
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    rate = steps / (time.perf_counter() - start)
    return {
        "gradient_checkpointing": checkpointing,
        "batch_size": batch,
        "resolution": 512,
        "dtype": "bf16 autocast",
        "steps_per_s": round(rate, 3),
        "samples_per_s": round(rate * batch, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def gpu_side(steps: int = 20, batch: int = 8) -> list[dict]:
    return [_gpu_run(checkpointing, steps, batch) for checkpointing in (False, True)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=40, help="synthetic images (about 1.2 hands each)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the speed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    p.add_argument("--gpu", action="store_true", help="also time an SD-1.5-sized UNet on CUDA")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "train_hand.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    load_before = os.getloadavg()[0]
    rows = cpu_side(args)
    if args.gpu and torch.cuda.is_available():
        gpu = {"device": torch.cuda.get_device_name(), "runs": gpu_side()}
    else:
        gpu = {"skipped": GPU_SKIPPED}
    result = {
        "benchmark": "train_hand",
        "what": "train_hand loop, tiny preset, CPU: plain (VAE encode every step) vs cached latents",
        "settings": {
            "images": args.images,
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "torch_threads": torch.get_num_threads(),
        },
        "machine": machine(load_before),
        "cpu": rows,
        "gpu": gpu,
    }
    print(
        f"{'res':>4} {'hands':>6} {'plain steps/s':>14} {'cached steps/s':>15} {'plain samp/s':>13} "
        f"{'cached samp/s':>14} {'speedup':>8}"
    )
    for r in rows:
        print(
            f"{r['resolution']:>4} {r['hands']:>6} {r['plain']['steps_per_s']:>14.2f} {r['cached']['steps_per_s']:>15.2f} "
            f"{r['plain']['samples_per_s']:>13.1f} {r['cached']['samples_per_s']:>14.1f} {r['cached_speedup']:>8.2f}"
        )
    print_gpu(gpu)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
