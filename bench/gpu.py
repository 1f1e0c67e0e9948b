"""What a CUDA GPU does for handfirst, with random weights (speed does not depend on training).

Section by section (each records its settings beside its figures):

1. SAM ViT-H image embeddings per second through a Dask worker that offers `--resources GPU=1`
   (a LocalCluster of one such worker; the task asks for the resource, as prep's SAM shards do),
   1024-px images, `SamPredictor.set_image` (the embedding is where SAM spends its time).
2. train-hand steps/s and peak memory of an SD-1.5-sized HandUNet at 512 px (64x64 latents), bf16
   autocast, batch 8, with and without gradient checkpointing (`bench/train_hand.py`'s GPU run).
3. train-body steps/s and peak memory: SD-1.5-sized frozen UNet and VAE in bf16, the 7-channel
   ControlNet trained under bf16 autocast, 512 px, batch 8, with and without gradient checkpointing
   (`bench/train_body.py`'s GPU run).
4. The anchor: the same step with diffusers' `examples/controlnet/train_controlnet.py` settings (a
   3-channel condition, 512 px, train_batch_size 4, bf16 mixed precision, AdamW), with and without
   gradient checkpointing, so our steps/s read against the reference trainer's.
5. Two-stage generation: seconds per 512-px image at 30 steps, with SD-1.5-sized UNets and VAE for
   both stages (the body stage's ControlNet built from its UNet), bf16, at stage-2 batch 1 and 4
   (`generate --batch-size`, `TwoStageHandBodyPipeline.call_batch`).

Without a CUDA device it prints "skipped: no CUDA device", writes that to the result file and exits 0.

    .venv/bin/python bench/gpu.py [--sam-images 16] [--train-steps 20] [--generate-images 4]
    .venv/bin/python bench/gpu.py --only train_hand train_body train_controlnet_anchor   # some parts

Writes bench/results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench._common import portable  # noqa: E402

RESULT = os.path.join(ROOT, "bench", "results", "gpu.json")
SKIPPED = "skipped: no CUDA device"


def _sam_embeddings(n: int) -> dict:
    """Runs inside the Dask worker: SAM ViT-H embeddings of `n` random 1024-px images."""
    import numpy as np
    import torch
    from segment_anything import SamPredictor, sam_model_registry

    sam = sam_model_registry["vit_h"](checkpoint=None).to("cuda").eval()
    predictor = SamPredictor(sam)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8) for _ in range(n + 2)]
    with torch.inference_mode():
        for im in images[:2]:  # warm-up: kernels picked, memory allocated
            predictor.set_image(im)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for im in images[2:]:
            predictor.set_image(im)
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {
        "model": "vit_h (random weights)",
        "images": n,
        "image_side": 1024,
        "embeddings_per_s": round(n / wall, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def sam_through_dask(n: int) -> dict:
    from distributed import Client, LocalCluster

    from prep.cluster import environ_restored

    with (
        environ_restored(),  # the trainings after it start processes that would inherit the nannies' environment
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, resources={"GPU": 1}, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        out = client.submit(_sam_embeddings, n, resources={"GPU": 1}, pure=False).result()
    out["dask_worker_resources"] = {"GPU": 1}
    return out


def train_hand(steps: int) -> list[dict]:
    from bench.train_hand import gpu_side

    return gpu_side(steps=steps, batch=8)


def train_body(steps: int) -> list[dict]:
    from bench.train_body import gpu_side

    return gpu_side(steps=steps, batch=8)


def train_controlnet_anchor(steps: int) -> list[dict]:
    """diffusers' train_controlnet.py step at its documented settings: 3 condition channels, batch 4."""
    from bench.train_body import SD_VAE_CONFIG, _accelerator_run
    from generation.models.presets import sd15_unet_config

    return [
        _accelerator_run("cuda", ckpt, steps, 4, sd15_unet_config(), SD_VAE_CONFIG, 512, channels=3)
        for ckpt in (False, True)
    ]


def sd15_sized_components(seed: int = 0):
    """SD-1.5-sized UNet and VAE (random weights) with a small text encoder of SD's width (768): the
    text encoder runs once per image, so its depth does not move the per-image time."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from generation.models.loading import SDComponents
    from generation.models.presets import sd15_unet_config, tiny_text_config, tiny_tokenizer
    from generation.models.schedulers import scheduler_config

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text = CLIPTextModel(
        tiny_text_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, hidden_size=768)
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    unet = UNet2DConditionModel.from_config(sd15_unet_config())
    return SDComponents(
        unet, vae, text, tokenizer, DDPMScheduler.from_config(scheduler_config("epsilon")), source="tiny"
    )


def two_stage(images: int, steps: int = 30, size: int = 512) -> dict:
    import torch

    from bench.generate import PROMPT, request
    from generation.models.body import build_body_model
    from generation.models.hand import HandUNet
    from generation.models.schedulers import sampling_scheduler
    from generation.pipelines.body import BodyOutpaintPipeline
    from generation.pipelines.hand import HandGenerationPipeline
    from generation.pipelines.two_stage import TwoStageHandBodyPipeline

    c = sd15_sized_components(0)
    hand = HandGenerationPipeline(
        HandUNet.from_unet(c.unet), c.vae, c.text_encoder, c.tokenizer, sampling_scheduler(c.scheduler)
    )
    b = sd15_sized_components(1)
    body = BodyOutpaintPipeline.from_components(b, build_body_model(b, "standard"))
    pipe = TwoStageHandBodyPipeline.from_pipelines(hand, body, crop_margin=0.25).to("cuda", torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    shared = {"num_inference_steps": steps, "output_type": "np"}
    rows = []
    for batch in (1, 4):  # generate --batch-size: stage 2 of `batch` requests together
        requests = [{"prompt": PROMPT, **request(size), "seed": k} for k in range(batch)]
        pipe.call_batch(requests, **shared)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        calls = max(1, images // batch)
        t0 = time.perf_counter()
        for _ in range(calls):
            pipe.call_batch(requests, **shared)
        torch.cuda.synchronize()
        rows.append(
            {
                "size": size,
                "steps": steps,
                "dtype": "bf16",
                "batch_size": batch,
                "images": calls * batch,
                "hands_per_image": 2,
                "seconds_per_image": round((time.perf_counter() - t0) / (calls * batch), 3),
                "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            }
        )
    return rows


# part -> its measurement (called with its count: images or steps)
PARTS = {
    "sam_embeddings": sam_through_dask,
    "train_hand": train_hand,
    "train_body": train_body,
    "train_controlnet_anchor": train_controlnet_anchor,
    "two_stage": two_stage,
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sam-images", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--generate-images", type=int, default=4)
    ap.add_argument("--out", default=RESULT)
    ap.add_argument("--only", nargs="+", choices=tuple(PARTS), help="measure only these parts")
    args = ap.parse_args(argv)
    import torch

    result = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        }
    }
    if not torch.cuda.is_available():
        print(SKIPPED)
        result["skipped"] = SKIPPED
    else:
        result["device"] = torch.cuda.get_device_name()
        counts = {"sam_embeddings": args.sam_images, "two_stage": args.generate_images}
        for name, measure in PARTS.items():
            if args.only and name not in args.only:
                continue
            result[name] = measure(counts.get(name, args.train_steps))
            torch.cuda.empty_cache()
        print(json.dumps(result, indent=2))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(portable(result), f, indent=2)
    return result


if __name__ == "__main__":
    main()
