"""What the training benchmarks (bench/train_hand.py, bench/train_body.py) share: the speed of a run
read from its own metrics.jsonl, the machine record, the GPU lines and the result file."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

from generation.training.metrics import read_metrics

GPU_SKIPPED = (
    "no CUDA device was available to this run; run with --gpu on a CUDA machine for the SD-1.5-sized figures"
)


def run_speed(out: str, warmup: int, wall_s: float) -> dict:
    """Steps/s and samples/s over the logged steps after the first `warmup` of the run in folder `out`
    (each metrics.jsonl line gives the rates of its own steps), plus the run's wall time in seconds."""
    timed = [r for r in read_metrics(out) if "steps_per_s" in r and r["step"] > warmup]
    seconds = sum(1.0 / r["steps_per_s"] for r in timed)
    samples = sum(r["samples_per_s"] / r["steps_per_s"] for r in timed)
    return {"steps_per_s": len(timed) / seconds, "samples_per_s": samples / seconds, "wall_s": wall_s}


def machine(load_before: float) -> dict:
    """Platform, CPU count and the 1-minute load average before the run (given) and now."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def print_gpu(gpu: dict) -> None:
    """One line per GPU run (gradient checkpointing on / off), or why there are none."""
    if "runs" in gpu:
        for g in gpu["runs"]:
            print(
                f"GPU {gpu['device']}: checkpointing={g['gradient_checkpointing']} {g['steps_per_s']} steps/s, "
                f"{g['peak_memory_gib']} GiB peak"
            )
    else:
        print("GPU:", gpu["skipped"])


PROJECT = Path(__file__).resolve().parents[1]


def portable(value):
    """`value` with every absolute path made machine-free: relative to the project where it lies inside
    it (``../shared/...`` for the shared data beside it), else only its last name. Results are committed
    and published, so they carry no path of the machine that made them."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if not isinstance(value, str) or "/" not in value:
        return value
    for root, shown in ((PROJECT, ""), (PROJECT.parent / "shared", "../shared/")):
        value = value.replace(f"{root}/", shown).replace(str(root), shown.rstrip("/") or ".")
    return re.sub(r"(?<![\w.:/])/(?:[^\s/,;=]+/)+([^\s/,;=]+)", r"<outside the project>/\1", value)


def write_result(path: str, result: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(portable(result), f, indent=2)
    print(f"wrote {path}")
