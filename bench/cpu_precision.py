"""Which mini model trains faster in bf16 on this CPU? One training step (forward, backward, AdamW) of
each mini model the chain trains, timed in float32, under bf16 autocast, and under bf16 autocast with
attention kept in float32 (`generation.models.attention`, what ``--precision bf16`` does on a CPU).

The models are the `mini` preset's, randomly initialised (speed does not depend on the weights), at the
chain's sizes (bench/learns.py, ``CHAIN["cpu"]``): the VAE on 64 px images (batch 8, L1 loss), stage 1's
hand UNet on 8x8 latents (batch 8), stage 2's base UNet + ControlNet on 20x20 latents with a 160 px
condition image (batch 3). Every setting of a model runs in this one process on one thread, in
alternating rounds, so the ratios compare like with like on a shared machine.

    .venv/bin/python bench/cpu_precision.py [--rounds 3] [--steps 6]

Writes bench/results/cpu_precision.json: seconds per step and the ratio to float32 per model and setting.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench._common import machine, write_result  # noqa: E402

SETTINGS = {
    "fp32": {"autocast": False, "float32_attention": False},
    "bf16": {"autocast": True, "float32_attention": False},
    "bf16_float32_attention": {"autocast": True, "float32_attention": True},
}


def vae_case():
    from generation.models.loading import build_components

    vae = build_components("mini", resolution=64, seed=0).vae
    x = torch.rand(8, 3, 64, 64) * 2 - 1

    def loss(model):
        z = model.encode(x).latent_dist.sample()
        return (model.decode(z).sample.float() - x).abs().mean()

    return vae, loss


def hand_case():
    from generation.models.hand import HandUNet
    from generation.models.loading import build_components

    comps = build_components("mini", resolution=64, seed=0)
    model = HandUNet.from_unet(comps.unet)
    k = model.config.num_keypoints
    x, t, text = torch.randn(8, 4, 8, 8), torch.randint(0, 1000, (8,)), torch.randn(8, 77, 64)
    heatmaps = torch.rand(8, k, 8, 8)

    def loss(m):
        noise, mask_logits = m(x, t, text, heatmaps, return_dict=False)
        return noise.float().pow(2).mean() + mask_logits.float().pow(2).mean()

    return model, loss


def body_case():
    from generation.models.body import build_body_model, predict_noise
    from generation.models.loading import build_components
    from generation.pipelines.condition import ConditionConfig

    comps = build_components("mini", resolution=160, seed=0)
    controlnet = build_body_model(comps, "standard", ConditionConfig())
    model = torch.nn.ModuleDict({"unet": comps.unet, "controlnet": controlnet})
    channels = controlnet.config.conditioning_channels
    x, t, text = torch.randn(3, 4, 20, 20), torch.randint(0, 1000, (3,)), torch.randn(3, 77, 64)
    condition = torch.rand(3, channels, 160, 160)

    def loss(m):
        return predict_noise(m["unet"], m["controlnet"], x, t, text, condition).float().pow(2).mean()

    return model, loss


CASES = {"vae": vae_case, "stage1_hand": hand_case, "stage2_body": body_case}


def train_step(model, loss, optimizer, autocast: bool = True) -> None:
    """One training step of a case: `loss(model)` (under CPU bf16 autocast when `autocast`), backward,
    the optimizer's step, gradients cleared."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        value = loss(model)
    value.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_steps(model, loss, optimizer, autocast: bool, steps: int) -> float:
    """Seconds per training step over `steps` steps (after one untimed step)."""
    train_step(model, loss, optimizer, autocast)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, loss, optimizer, autocast)
    return (time.perf_counter() - start) / steps


def measure(name: str, rounds: int, steps: int) -> dict:
    from generation.models.attention import use_float32_attention

    torch.manual_seed(0)
    model, loss = CASES[name]()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = {s: [] for s in SETTINGS}
    for _ in range(rounds):
        for setting, how in SETTINGS.items():
            use_float32_attention(model, how["float32_attention"])
            times[setting].append(time_steps(model, loss, optimizer, how["autocast"], steps))
    best = {s: min(v) for s, v in times.items()}
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds_per_step": {s: round(v, 4) for s, v in best.items()},
        "ratio_to_fp32": {s: round(v / best["fp32"], 3) for s, v in best.items()},
    }


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return sorted(f for f in flags if f.startswith(("amx", "avx512_bf16")))


def case_parser(doc: str, result: str, rounds: int = 3, steps: int = 6) -> argparse.ArgumentParser:
    """The options of a benchmark that times `CASES` setting against setting: --rounds, --steps and
    --out (bench/results/RESULT by default); its description is `doc`'s first paragraph."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=rounds, help="alternating rounds of every setting")
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per round (per process)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", result))
    return parser


def main(argv=None) -> int:
    args = case_parser(__doc__, "cpu_precision.json").parse_args(argv)
    load_before = os.getloadavg()[0]
    torch.set_num_threads(1)
    models = {}
    for name in CASES:
        models[name] = measure(name, args.rounds, args.steps)
        ratios = ", ".join(f"{s} {r:.2f}x" for s, r in models[name]["ratio_to_fp32"].items())
        print(f"{name}: {models[name]['seconds_per_step']['fp32']:.3f} s/step in fp32; time ratios {ratios}")
    write_result(
        args.out,
        {
            "benchmark": "cpu_precision",
            "what": "one training step of each mini model, one thread: float32 vs bf16 autocast vs bf16 with float32 attention",
            "machine": {**machine(load_before), "bf16_cpu_flags": cpu_flags(), "torch": torch.__version__},
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "models": models,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
