"""What Dask's ``MALLOC_TRIM_THRESHOLD_=65536`` costs a CPU training process.

A LocalCluster's nannies used to leave Dask's pre-spawn environment in the driver's ``os.environ``
(`prep.cluster.environ_restored` now puts it back), so every process started after a prep run, such as
`bench/learns.py`'s trainings, inherited it. Setting it turns off glibc's adaptive mmap threshold:
every tensor over 128 KiB is then mapped, zeroed page by page on first touch and unmapped, every step.

One bf16 training step of the mini models at the chain's sizes (bench/cpu_precision.py's cases, with
float32 attention and fused AdamW, as the chain trains them), timed in fresh processes on one thread
each, with a clean environment and with Dask's value: one process alone, and two at once (the chain
trains two models side by side on two cores). Settings alternate round by round, so the ratios compare
like with like on a shared machine. Each process also reports its page faults and the share of its
CPU time spent in the kernel.

    .venv/bin/python bench/malloc_trim.py [--model stage2_body] [--rounds 2] [--steps 12]

Writes bench/results/malloc_trim.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench._common import machine, write_result  # noqa: E402

DASK_VALUE = "65536"  # distributed.nanny.pre-spawn-environ's MALLOC_TRIM_THRESHOLD_
SETTINGS = ("clean", "dask_env")
LAYOUTS = {"alone": 1, "pair": 2}


def worker(model: str, steps: int) -> dict:
    """Time `steps` steps of `model` after two untimed ones, in this (fresh) process."""
    import torch

    from bench.cpu_precision import CASES, train_step
    from generation.models.attention import use_float32_attention

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net, loss = CASES[model]()
    net.train()
    use_float32_attention(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5, fused=True)
    for _ in range(2):
        train_step(net, loss, optimizer)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        train_step(net, loss, optimizer)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {
        "seconds_per_step": wall / steps,
        "page_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
        "kernel_share": system / max(user + system, 1e-9),
    }


def run_layout(model: str, setting: str, layout: str, steps: int) -> list[dict]:
    """The workers' reports, `LAYOUTS[layout]` processes started together."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    if setting == "dask_env":
        env["MALLOC_TRIM_THRESHOLD_"] = DASK_VALUE
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", model, str(steps)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(LAYOUTS[layout])
    ]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a {model} {setting} worker failed: {outs}")
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def summarise(rounds: list[list[dict]]) -> dict:
    """The round whose slowest process was fastest (the least disturbed by the rest of the machine)."""
    best = min(rounds, key=lambda reports: max(r["seconds_per_step"] for r in reports))
    return {
        "seconds_per_step": round(max(r["seconds_per_step"] for r in best), 4),
        "page_faults_per_step": round(sum(r["page_faults_per_step"] for r in best) / len(best)),
        "kernel_share": round(sum(r["kernel_share"] for r in best) / len(best), 3),
    }


def main(argv=None) -> int:
    from bench.cpu_precision import CASES, case_parser

    parser = case_parser(__doc__, "malloc_trim.json", rounds=2, steps=12)
    parser.add_argument("--model", action="append", choices=sorted(CASES), help="default: all")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return 0
    load_before = os.getloadavg()[0]
    models = {}
    for model in args.model or list(CASES):
        runs = {(s, lay): [] for lay in LAYOUTS for s in SETTINGS}
        for _ in range(args.rounds):
            for key in runs:
                runs[key].append(run_layout(model, *key, args.steps))
        figures = {f"{lay}_{s}": summarise(rounds) for (s, lay), rounds in runs.items()}
        ratios = {
            lay: round(
                figures[f"{lay}_dask_env"]["seconds_per_step"] / figures[f"{lay}_clean"]["seconds_per_step"],
                3,
            )
            for lay in LAYOUTS
        }
        models[model] = {"settings": figures, "time_ratio_dask_env_to_clean": ratios}
        print(
            f"{model}: Dask's setting takes {ratios['alone']:.2f}x the time alone, {ratios['pair']:.2f}x two at once"
        )
        for name, f in figures.items():
            print(
                f"  {name}: {f['seconds_per_step']:.3f} s/step, {f['page_faults_per_step']} page faults a step, "
                f"{f['kernel_share']:.0%} of CPU in the kernel"
            )
    write_result(
        args.out,
        {
            "benchmark": "malloc_trim",
            "what": "one bf16 training step of each mini model, one thread per process, clean environment vs MALLOC_TRIM_THRESHOLD_=65536 (Dask's pre-spawn value); one process alone and two at once",
            "machine": machine(load_before),
            "rounds": args.rounds,
            "steps_per_process": args.steps,
            "models": models,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
