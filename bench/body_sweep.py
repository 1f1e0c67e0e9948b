"""Stage-2 settings side by side: variants of the mini chain's stage-2 training, scored as learns scores it.

Every variant trains `train_body` on a finished `bench/learns.py` folder (its manifest and its VAE), with
the chain's stage-2 settings (`learns.CHAIN`) and the variant's overrides, then draws each training row
around its own hands and scores it with prep's body detector (`learns.stage2`: body found, PCK@0.2 against
the conditioning pose, pose control, and the same for the real rows and the real rows through the VAE).
So a lever can be tried at the chain's cost without rerunning the chain, and the table that picks the
chain's next settings comes from one invocation.

Each training and scoring runs in a spawned process on one thread, `--parallel` at a time (the machine's
cores by default); a variant's scoring takes the first free core once its model is trained. Phase times
are wall and CPU seconds, as in learns.json; trainings side by side share the cores, so compare CPU
seconds.

    .venv/bin/python bench/body_sweep.py [--learns out/learns] [--variant chain --variant lr_1e-3 ...]
        [--seed 0] [--parallel 2] [--resume] [--quick]

Writes bench/results/body_sweep.json and body_sweep.md (``--quick``: body_sweep_quick.*, a few steps on
the ``learns --quick`` folder, to check the plumbing).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench._common import machine, write_result  # noqa: E402
from bench.learns import BODY_TRAINING, CHAIN, COMMON, open_work, score_stage2_phase, train_body_phase  # noqa: E402

# Overrides of CHAIN[...]["body"], by name. "chain" is the chain's own setting, the row to beat.
VARIANTS = {
    "chain": {},
    "lr_1e-3": {"learning_rate": 1e-3},
    "steps_x1.6": {"steps_scale": 1.6},
    # inside stage 2's 40 CPU-minutes; body found 50%, the target with no margin (body_sweep_steps.md)
    "steps_x0.9": {"steps_scale": 0.9},
    "no_ema": {"ema": False},
    "uncached": {"cache_latents": False},  # the same draws, from the VAE each step: more CPU minutes
    "hflip": {"hflip": 0.5},
}
COLUMNS = ("steps", "body found", "body PCK@0.2", "pose control given / own row", "train CPU min")


def body_config(learns: str, out: str, chain: dict, overrides: dict, seed: int = 0):
    """The chain's stage-2 `BodyTrainConfig` on the learns folder `learns`, with `overrides`
    (``steps_scale`` multiplies the chain's steps) and the training `seed` (the chain's is 0)."""
    from generation.training.body_config import BodyTrainConfig

    settings = {**chain["body"], **overrides}
    if "steps_scale" in settings:
        settings["steps"] = round(chain["body"]["steps"] * settings.pop("steps_scale"))
    return BodyTrainConfig(
        out=out,
        manifest=(os.path.join(learns, "manifest"),),
        pretrained=os.path.join(learns, "vae"),
        preset="mini",
        resume="latest",
        seed=seed,
        **{**BODY_TRAINING, **COMMON, **settings},
    )


def sweep_graph(learns: str, work: str, names: list[str], chain: dict, seed: int = 0) -> dict:
    """The `Phases.run_graph` graph: ``train_NAME`` then ``score_NAME`` per variant, one thread each, in
    that priority order, so a variant's scoring takes the first free core before the next training."""
    graph = {}
    for name in names:
        run = os.path.join(work, name)
        graph[f"train_{name}"] = (
            train_body_phase,
            (body_config(learns, run, chain, VARIANTS[name], seed),),
            (),
            1,
        )
        graph[f"score_{name}"] = (
            score_stage2_phase,
            (run, os.path.join(learns, "manifest"), chain["sample_steps"], run + "_pictures.npz"),
            (f"train_{name}",),
            1,
        )
    return graph


def table(rows: dict) -> str:
    """The markdown table of `rows` ({variant: {"overrides", "steps", "stage2", "train_cpu_s"}}): the
    steps trained say what "the chain's" setting was when the table was made."""
    lines = ["| variant | overrides | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * len(COLUMNS)]
    for name, r in rows.items():
        s2 = r["stage2"]
        drawn, pc = s2["training_rows"], s2["pose_control"]
        pck = "–" if drawn["body_pck_0.2"] is None else f"{drawn['body_pck_0.2']:.2f}"
        own = "–" if pc["pck_own"] is None else f"{pc['pck_own']:.2f} / {pc['pck_other']:.2f}"
        over = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(the chain's)"
        cells = [
            str(r["steps"]),
            f"{drawn['body_detected_share']:.0%}",
            pck,
            own,
            f"{r['train_cpu_s'] / 60:.1f}",
        ]
        lines.append(f"| {name} | {over} | " + " | ".join(cells) + " |")
    first = next(iter(rows.values()))["stage2"]
    lines.append("")
    lines.append(
        f"Real rows at this framing: body found {first['real_rows']['body_detected_share']:.0%}; through "
        f"the VAE {first['vae_real_rows']['body_detected_share']:.0%}, PCK "
        f"{first['vae_real_rows']['body_pck_0.2'] or 0:.2f} (the most a sample from this VAE can show)."
    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--learns", help="a finished bench/learns.py folder (default out/learns, or out/learns_quick)"
    )
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="repeatable; default all")
    p.add_argument(
        "--parallel",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="phases (trainings and scorings) at once",
    )
    p.add_argument("--work", help="run folders (default out/body_sweep[_quick])")
    p.add_argument(
        "--results", default="body_sweep", help="name of the .json and .md written in bench/results"
    )
    p.add_argument("--seed", type=int, default=0, help="training seed of every variant (the chain's is 0)")
    p.add_argument("--resume", action="store_true", help="keep finished phases of a cut-off invocation")
    p.add_argument("--quick", action="store_true", help="a few steps each, to check the plumbing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    suffix = "_quick" if args.quick else ""
    chain = CHAIN["quick" if args.quick else "cpu"]
    learns = args.learns or os.path.join(ROOT, "out", f"learns{suffix}")
    for part in ("manifest", "vae"):
        if not os.path.isdir(os.path.join(learns, part)):
            p.error(f"{learns} has no {part}/: run bench/learns.py{' --quick' if args.quick else ''} first")
    names = args.variant or list(VARIANTS)
    work = args.work or os.path.join(ROOT, "out", f"body_sweep{suffix}")
    phases, load_before = open_work(work, args.resume)
    phases.run_graph(sweep_graph(learns, work, names, chain, args.seed), cores=max(1, args.parallel))

    done, cpu, wall = phases.state["done"], phases.state["cpu_seconds"], phases.state["seconds"]
    rows = {
        name: {
            "overrides": VARIANTS[name],
            "steps": done[f"train_{name}"]["step"],
            "train_cpu_s": round(cpu[f"train_{name}"], 1),
            "train_wall_s": round(wall[f"train_{name}"], 1),
            "score_wall_s": round(wall[f"score_{name}"], 1),
            "stage2": done[f"score_{name}"],
        }
        for name in names
    }
    result = {
        "benchmark": "body_sweep",
        "what": "stage-2 training variants on one learns folder's manifest and VAE, scored as learns.stage2",
        "learns": os.path.relpath(learns, ROOT),
        "chain_body": chain["body"],
        "parallel": args.parallel,
        "seed": args.seed,
        "invocations": phases.state["invocations"],
        "machine": machine(load_before),
        "variants": rows,
    }
    out = os.path.join(ROOT, "bench", "results", f"{args.results}{suffix}")
    write_result(out + ".json", result)
    with open(out + ".md", "w", encoding="utf-8") as f:
        f.write(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
