"""Stage-2 training throughput on the CPU (the tiny preset, or `--preset mini` as bench/learns.py trains it),
four variants side by side.

Every variant runs the real `train_body` loop (accelerate, EMA, BodyDataset with the condition drawn per
sample, metrics.jsonl) on the same synthetic manifest:

- ``standard``: the defaults (4-channel base, hand-border loss weight 1);
- ``no_border_weight``: plain noise MSE, to price the border weighting;
- ``inpainting``: the 9-channel inpainting base, which VAE-encodes the hand-only image every step too;
- ``cached``: ``--cache-latents``, the images' posteriors encoded once before the first step (not timed)
  instead of the VAE encoder every step.

Speeds come from the run's own metrics.jsonl, leaving out the first `--warmup` steps. Runs alternate
(standard, no_border_weight, inpainting, cached, standard, ...) `--repeats` times and the median is reported,
so drifting machine load affects all sides alike; ratios are against ``standard``.

With CUDA available, `--gpu` also times an SD-1.5-sized UNet (frozen, bf16) plus its ControlNet (trained,
float32 weights under bf16 autocast) at 512 px (64x64 latents), including the SD-sized VAE encoder, with and
without gradient checkpointing: steps/s and peak memory (random weights; text embeddings random, since the
text encoder's cost is small and fixed).

    .venv/bin/python bench/train_body.py [--images 24] [--steps 30] [--repeats 3] [--resolution 64]
        [--preset tiny] [--batch-size 2] [--gpu]

Prints a table and writes bench/results/train_body.json, with the load average beside the figures.
"""

from __future__ import annotations

import argparse
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
from generation.training.body import train_body  # noqa: E402
from generation.training.body_config import BodyTrainConfig  # noqa: E402
from manifests.synthetic import make_synthetic_manifest  # noqa: E402

VARIANTS = {
    "standard": {},
    "no_border_weight": {"border_weight": 0.0},
    "inpainting": {"base_kind": "inpainting"},
    "cached": {"cache_latents": True},
}


def run_once(manifest: str, out: str, args, overrides: dict) -> dict:
    config = BodyTrainConfig(
        manifest=manifest,
        out=out,
        steps=args.steps,
        batch_size=args.batch_size,
        resolution=args.resolution,
        preset=args.preset,
        learning_rate=1e-3,
        log_every=1,
        checkpoint_every=0,
        validate_every=0,
        num_validation_images=1,
        validation_steps=1,
        **overrides,
    )
    start = time.perf_counter()
    train_body(config)
    return run_speed(out, args.warmup, time.perf_counter() - start)


def cpu_side(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_synthetic_manifest(os.path.join(tmp, "m"), num_images=args.images)
        # Only the tiny preset builds a 9-channel inpainting base from scratch (mini needs SD-inpainting).
        variants = {k: v for k, v in VARIANTS.items() if args.preset == "tiny" or k != "inpainting"}
        results = {name: [] for name in variants}
        for i in range(args.repeats):
            for name, overrides in variants.items():
                results[name].append(run_once(manifest, os.path.join(tmp, f"{name}{i}"), args, overrides))
    out = {
        name: {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
        for name, runs in results.items()
    }
    base = out["standard"]["steps_per_s"]
    for name in out:
        out[name]["speed_vs_standard"] = round(out[name]["steps_per_s"] / base, 3)
    return out


def _accelerator_run(
    device: str,
    checkpointing: bool,
    steps: int,
    batch: int,
    unet_config: dict,
    vae_config: dict,
    resolution: int,
    channels: int | None = None,
) -> dict:
    """Steps/s and peak memory of the stage-2 step (frozen UNet and VAE in bf16, the ControlNet trained
    under bf16 autocast); `channels` condition channels (default: the body outpainter's)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from generation.models.body import controlnet_from_unet, predict_noise, vae_scale_factor
    from generation.pipelines.condition import conditioning_channels

    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    dtype = torch.bfloat16
    unet = UNet2DConditionModel.from_config(unet_config)
    vae = AutoencoderKL.from_config(vae_config)
    channels = channels or conditioning_channels()
    controlnet = controlnet_from_unet(unet, channels, vae_scale_factor(vae)).to(device).train()
    unet.requires_grad_(False).to(device, dtype)
    vae.requires_grad_(False).to(device, dtype)
    if checkpointing:
        controlnet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(controlnet.parameters(), lr=1e-5)
    pixels = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
    cond = torch.rand(batch, channels, resolution, resolution, device=device)
    text = torch.randn(batch, 77, unet_config["cross_attention_dim"], device=device)
    t = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.no_grad():
            latents = vae.encode(pixels.to(dtype)).latent_dist.sample().float() * 0.18215
        noise = torch.randn_like(latents)
        with torch.autocast(device, dtype=dtype):
            pred = predict_noise(unet, controlnet, latents + noise, t, text, cond)
        loss = (pred.float() - noise).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    rate = steps / (time.perf_counter() - start)
    return {
        "gradient_checkpointing": checkpointing,
        "batch_size": batch,
        "resolution": resolution,
        "condition_channels": channels,
        "dtype": "bf16 frozen UNet/VAE, fp32 ControlNet under bf16 autocast",
        "steps_per_s": round(rate, 3),
        "samples_per_s": round(rate * batch, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


SD_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 512,
}  # fmt: skip


def gpu_side(steps: int = 20, batch: int = 8) -> list[dict]:
    from generation.models.presets import sd15_unet_config

    return [
        _accelerator_run("cuda", ckpt, steps, batch, sd15_unet_config(), SD_VAE_CONFIG, 512)
        for ckpt in (False, True)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=24, help="synthetic images (4 in 5 have hands and a body)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the speed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--preset", default="tiny", choices=("tiny", "mini"), help="model size (random weights)")
    p.add_argument("--gpu", action="store_true", help="also time an SD-1.5-sized UNet + ControlNet on CUDA")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "train_body.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    load_before = os.getloadavg()[0]
    cpu = cpu_side(args)
    if args.gpu and torch.cuda.is_available():
        gpu = {"device": torch.cuda.get_device_name(), "runs": gpu_side()}
    else:
        gpu = {"skipped": GPU_SKIPPED}
    result = {
        "benchmark": "train_body",
        "what": "train_body loop on the CPU: standard vs no border weight vs inpainting base vs cached latents",
        "settings": {
            "images": args.images,
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "batch_size": args.batch_size,
            "resolution": args.resolution,
            "preset": args.preset,
            "torch_threads": torch.get_num_threads(),
        },
        "machine": machine(load_before),
        "cpu": cpu,
        "gpu": gpu,
    }
    print(f"{'variant':>18} {'steps/s':>8} {'samples/s':>10} {'vs standard':>12}")
    for name, r in cpu.items():
        print(
            f"{name:>18} {r['steps_per_s']:>8.2f} {r['samples_per_s']:>10.2f} {r['speed_vs_standard']:>12.2f}"
        )
    print_gpu(gpu)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
