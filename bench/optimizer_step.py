"""How much of a CPU training step is the optimizer? One training step of each mini model the chain
trains (bench/cpu_precision.py's cases: forward and backward under bf16 autocast with float32
attention, as the chain runs them), followed by AdamW and the EMA update, in two settings:

- ``loop``: torch's CPU default, a loop of small ops per tensor (AdamW ``foreach`` unset, which on CPU
  means the per-tensor loop) and diffusers' `EMAModel` with ``foreach=False``;
- ``fused``: what `generation.training.loop` uses, AdamW's fused kernel and `EMAModel(foreach=True)`.

Both settings run in this one process on one thread, in alternating rounds, so the ratio compares like
with like on a shared machine.

    .venv/bin/python bench/optimizer_step.py [--rounds 3] [--steps 6]

Writes bench/results/optimizer_step.json: seconds per step (whole step, and optimizer + EMA alone) and
the ratio of fused to loop per model.
"""

from __future__ import annotations

import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench._common import machine, write_result  # noqa: E402
from bench.cpu_precision import CASES, case_parser  # noqa: E402

SETTINGS = {"loop": {"fused": None, "foreach": False}, "fused": {"fused": True, "foreach": True}}


def time_steps(model, loss, optimizer, ema, steps: int) -> tuple[float, float]:
    """(seconds per whole step, seconds per optimizer + EMA update) over `steps` steps after one untimed."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> float:
        # train_step's work with the optimizer's and EMA's part timed on its own
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss(model)
        value.backward()
        start = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(params)
        return time.perf_counter() - start

    step()
    start, update = time.perf_counter(), 0.0
    for _ in range(steps):
        update += step()
    return (time.perf_counter() - start) / steps, update / steps


def measure(name: str, rounds: int, steps: int) -> dict:
    from diffusers.training_utils import EMAModel

    from generation.models.attention import use_float32_attention

    torch.manual_seed(0)
    model, loss = CASES[name]()
    model.train()
    use_float32_attention(model)
    params = list(model.parameters())
    runs = {
        s: (
            torch.optim.AdamW(params, lr=1e-5, fused=how["fused"]),
            EMAModel(params, decay=0.9999, use_ema_warmup=True, power=3 / 4, foreach=how["foreach"]),
        )
        for s, how in SETTINGS.items()
    }
    times = {s: [] for s in SETTINGS}
    for _ in range(rounds):
        for setting, (optimizer, ema) in runs.items():
            times[setting].append(time_steps(model, loss, optimizer, ema, steps))
    best = {s: min(v) for s, v in times.items()}  # the round least disturbed by the rest of the machine
    return {
        "parameters": sum(p.numel() for p in params),
        "seconds_per_step": {s: round(v[0], 4) for s, v in best.items()},
        "seconds_per_update": {s: round(v[1], 4) for s, v in best.items()},
        "step_ratio_fused_to_loop": round(best["fused"][0] / best["loop"][0], 3),
        "update_ratio_fused_to_loop": round(best["fused"][1] / best["loop"][1], 3),
    }


def main(argv=None) -> int:
    args = case_parser(__doc__, "optimizer_step.json").parse_args(argv)
    load_before = os.getloadavg()[0]
    torch.set_num_threads(1)
    models = {}
    for name in CASES:
        m = models[name] = measure(name, args.rounds, args.steps)
        print(
            f"{name}: step {m['seconds_per_step']['loop']:.3f} -> {m['seconds_per_step']['fused']:.3f} s "
            f"({m['step_ratio_fused_to_loop']:.2f}x), AdamW + EMA {m['seconds_per_update']['loop']:.3f} -> "
            f"{m['seconds_per_update']['fused']:.3f} s ({m['update_ratio_fused_to_loop']:.2f}x)"
        )
    write_result(
        args.out,
        {
            "benchmark": "optimizer_step",
            "what": "one bf16 training step of each mini model, one thread: per-tensor AdamW + EMA loops vs fused AdamW + foreach EMA",
            "machine": {**machine(load_before), "torch": torch.__version__},
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "models": models,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
