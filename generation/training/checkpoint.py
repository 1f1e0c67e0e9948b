"""Checkpoint folders of a run: naming, atomic completion, rotation, and the loop's own state.

A checkpoint is ``RUN/checkpoints/checkpoint-<step>/`` holding:

- what ``accelerator.save_state`` writes: trained weights (``model.safetensors``), optimizer,
  LR scheduler and RNG states (accelerate reloads these with ``weights_only=True``);
- ``ema.safetensors``: the EMA shadow weights, keyed by parameter name;
- ``train_rng_<rank>.safetensors``: each process's training-noise generator state;
- ``data_state_<rank>.json``: each process's position in its share of the data;
- ``trainer_state.json``: step, epoch, data position and EMA counters. Written last.

Everything is written into ``checkpoint-<step>.tmp`` and renamed when complete, so a crash while
saving never leaves a checkpoint that ``--resume latest`` would pick up.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainerState:
    """The loop's position. `batches_in_epoch` counts micro-batches already consumed in `epoch`;
    `data_state` is the main process's data position (each process's own is in data_state_<rank>.json)."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples_seen: int = 0
    data_state: dict | None = None
    ema: dict = field(default_factory=dict)


def checkpoints_root(run: str) -> str:
    return os.path.join(run, CHECKPOINTS_DIR)


def checkpoint_path(run: str, step: int) -> str:
    return os.path.join(checkpoints_root(run), f"checkpoint-{step}")


def list_checkpoints(run: str) -> list[tuple[int, str]]:
    """Complete checkpoints of `run` as (step, path), oldest first."""
    root = checkpoints_root(run)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _NAME.match(name)
        if m and os.path.isfile(os.path.join(root, name, STATE_FILE)):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(found)


def resolve_resume(run: str, resume: str | None) -> str | None:
    """'latest' -> newest complete checkpoint of `run` (None if there is none); a path must be one."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(run)
        if not found:
            logger.info("--resume latest: no checkpoint in %s yet, starting fresh", checkpoints_root(run))
            return None
        return found[-1][1]
    if not os.path.isfile(os.path.join(resume, STATE_FILE)):
        raise FileNotFoundError(
            f"cannot resume from {resume!r}: not a complete checkpoint folder (no {STATE_FILE}); "
            f"use --resume latest or one of {[p for _, p in list_checkpoints(run)]}"
        )
    return resume


def save_ema(ema, names: list[str], path: str) -> dict:
    """Shadow weights to safetensors keyed by parameter name; returns the EMA counters for the state file."""
    tensors = {name: p.detach().contiguous().cpu() for name, p in zip(names, ema.shadow_params)}
    save_file(tensors, os.path.join(path, EMA_FILE))
    return {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}


def load_ema(ema, names: list[str], path: str, counters: dict) -> None:
    tensors = load_file(os.path.join(path, EMA_FILE))
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(
            f"{path}/{EMA_FILE} lacks EMA weights for {missing[:5]} (trained parameters changed?)"
        )
    device = ema.shadow_params[0].device if ema.shadow_params else "cpu"
    shadow = [tensors[n].to(device) for n in names]
    ema.load_state_dict({**counters, "shadow_params": shadow})


def save_generator(generator: torch.Generator, path: str, rank: int) -> None:
    save_file({"state": generator.get_state()}, os.path.join(path, f"train_rng_{rank}.safetensors"))


def load_generator(generator: torch.Generator, path: str, rank: int) -> None:
    file = os.path.join(path, f"train_rng_{rank}.safetensors")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} missing: the checkpoint was written by a run with fewer processes")
    generator.set_state(load_file(file)["state"])


def save_data_state(path: str, rank: int, data_state: dict | None) -> None:
    """Each process's own data position (ranks read disjoint parts of the data)."""
    with open(os.path.join(path, f"data_state_{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(data_state, f)


def load_data_state(path: str, rank: int) -> dict | None:
    file = os.path.join(path, f"data_state_{rank}.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{file} missing: the checkpoint was written by a run with fewer processes")
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def write_state(path: str, state: TrainerState) -> None:
    with open(os.path.join(path, STATE_FILE), "w", encoding="utf-8") as f:
        json.dump(asdict(state), f, indent=2)


def read_state(path: str) -> TrainerState:
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
        return TrainerState(**json.load(f))


def rotate(run: str, keep: int) -> None:
    """Delete the oldest complete checkpoints beyond `keep` (0 keeps all) and stale .tmp folders."""
    root = checkpoints_root(run)
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.endswith(".tmp"):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    if keep > 0:
        for _, path in list_checkpoints(run)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
