"""The run folder of a training run (``--out``): what may be written where, and its config.json.

**The run folder** (``--out``). A folder is a run of a task when its ``config.json`` is a JSON object
whose ``"task"`` is the task's name (``"hand"``, ``"body"``, ...): `write_run_config` writes it before any
model is loaded, so every run that got past its data check carries it. `train` writes into:

- a missing or empty folder (dot-files do not count): a new run;
- a run of the same task with ``--resume``: continues it (``latest``: its newest checkpoint);
- a run of the same task that stopped before its first step (a failed start: its config.json and
  nothing training writes, see `never_trained`): started again, so a corrected command needs no flag;
- a run of the same task with ``--overwrite``: starts it over. Its config.json, metrics.jsonl,
  checkpoints/, validation/ and final model are deleted first; anything else (a latent cache, which
  checks its own fingerprint, or files of the user) stays.

Anything else is refused with a `RunFolderError` before a file is written: a folder of other files
or of another task's run (whatever the options), and an existing run without ``--resume`` or
``--overwrite`` (which would interleave two runs' metrics and checkpoints).
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import torch
from accelerate import Accelerator

from . import checkpoint as ckpt
from .config import TrainConfig
from .errors import RunFolderError
from .metrics import CURVES_FILE, METRICS_FILE
from .task import TrainTask

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


VALIDATION_DIR = "validation"


# Settings that may change between a run and its resumption without a warning.
_RESUMABLE_CHANGES = {
    "resume",
    "allow_download",
    "overwrite",
    "steps",
    "interrupt_after",
    "num_workers",
    "log_every",
    "validate_every",
    "checkpoint_every",
    "checkpoints_total_limit",
    "report_to",
}


# What a run writes besides the task's final model (`TrainTask.final_entries`); --overwrite deletes these.
RUN_ENTRIES = (CONFIG_FILE, METRICS_FILE, CURVES_FILE, "logs", ckpt.CHECKPOINTS_DIR, VALIDATION_DIR)


def recorded_task(run: str) -> str | None:
    """The task name `run`'s config.json records, or None when the folder holds no run record."""
    try:
        with open(os.path.join(run, CONFIG_FILE), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if (
        isinstance(record, dict)
        and isinstance(record.get("task"), str)
        and isinstance(record.get("config"), dict)
    ):
        return record["task"]
    return None


def read_source_run(run: str, task: str) -> dict:
    """The config.json record of the finished `task` run that ``--init-from`` names; `RunFolderError`
    naming the folder when it is not one (not a run, another task's, or no final model yet)."""
    command = f"train-{task}"
    kind = recorded_task(run) if os.path.isdir(run) else None
    if kind != task:
        what = (
            "not a folder"
            if not os.path.isdir(run)
            else (f"a train-{kind} run" if kind else f"not a training run (no {CONFIG_FILE} naming its task)")
        )
        raise RunFolderError(f"--init-from {run!r} is {what}; it must be a finished {command} run folder")
    if not os.path.isfile(os.path.join(run, "model_index.json")):
        raise RunFolderError(
            f"--init-from {run!r} is a {command} run without its final model (not finished?): finish it with "
            "--resume latest first"
        )
    with open(os.path.join(run, CONFIG_FILE), encoding="utf-8") as f:
        return json.load(f)


def check_run_folder(run: str, task: str, config: TrainConfig) -> str:
    """How this run may use the folder `run` (see the module docstring): ``"new"``, ``"resume"`` or
    ``"overwrite"``. Raises `RunFolderError` naming the folder and the way out; writes nothing."""
    command = f"train-{task}"
    if config.resume and config.overwrite:
        raise RunFolderError(
            "--resume and --overwrite exclude each other (continue the run, or start it over)"
        )
    if os.path.lexists(run) and not os.path.isdir(run):
        raise RunFolderError(f"--out {run!r} exists and is not a folder")
    if not os.path.isdir(run) or not [e for e in os.listdir(run) if not e.startswith(".")]:
        return "new"
    kind = recorded_task(run)
    if kind != task:
        what = f"a train-{kind} run" if kind else f"not a training run (no {CONFIG_FILE} naming its task)"
        raise RunFolderError(
            f"--out {run!r} is not empty and is {what}; {command} writes only into a new or empty folder "
            f"or a {command} run folder: choose another --out"
        )
    if config.resume:
        return "resume"
    if config.overwrite:
        return "overwrite"
    if never_trained(run, task):
        logger.info(
            "%s: a run that stopped before its first step (only its config.json); starting it again", run
        )
        return "new"
    found = ckpt.list_checkpoints(run)
    last = f"checkpoints up to step {found[-1][0]}" if found else "no checkpoint yet"
    raise RunFolderError(
        f"--out {run!r} already holds a {command} run ({last}); pass --resume latest to continue it, or "
        "--overwrite to start it over (deleting its checkpoints, metrics, validation images and final model)"
    )


def never_trained(run: str, task: str) -> bool:
    """Whether the run folder `run` holds a start that failed before training: a config.json of `task`
    and none of the files training writes (metrics lines, checkpoints, validation images, a final
    model). Such a folder blocks nothing: the corrected command starts it again."""
    if recorded_task(run) != task:
        return False
    metrics = os.path.join(run, METRICS_FILE)
    if os.path.isfile(metrics) and os.path.getsize(metrics) > 0:
        return False
    if ckpt.list_checkpoints(run):
        return False
    return not any(os.path.lexists(os.path.join(run, name)) for name in (VALIDATION_DIR, "model_index.json"))


def clear_run(run: str, task: TrainTask) -> list[str]:
    """Delete what a run of `task` wrote into `run` (`RUN_ENTRIES` and the task's final model), and
    nothing else; returns the names removed."""
    from manifests.names import unsafe_name

    removed = []
    for name in dict.fromkeys([*RUN_ENTRIES, *task.final_entries(run)]):
        path = os.path.join(run, name)
        if unsafe_name(name) or not os.path.lexists(path):
            continue  # a name from model_index.json that is not a plain entry of the folder is left alone
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed.append(name)
    logger.warning("--overwrite: removed %s from %s", ", ".join(removed), run)
    return removed


def resume_changes(run: str, config: TrainConfig) -> dict:
    """Settings of this invocation that differ from the ones `run`'s config.json records (old, new),
    leaving out those meant to change between invocations (`_RESUMABLE_CHANGES`)."""
    try:
        with open(os.path.join(run, CONFIG_FILE), encoding="utf-8") as f:
            old = json.load(f).get("config", {})
    except (OSError, ValueError, AttributeError):
        return {}
    try:
        # Through the config class, so an older spelling of the same value (one manifest as a string)
        # reads as the value it means and is not reported as a change.
        old = json.loads(json.dumps(type(config).from_dict(old).to_dict(), default=str))
    except (TypeError, ValueError):
        pass  # a record the config class cannot read: compare it as written
    new = json.loads(json.dumps(config.to_dict(), default=str))  # tuples as lists, as the file holds them
    return {k: [old.get(k), v] for k, v in new.items() if old.get(k) != v and k not in _RESUMABLE_CHANGES}


def write_run_config(
    run: str,
    config: TrainConfig,
    task: TrainTask,
    accelerator: Accelerator,
    resumed: str | None,
    changed: dict | None = None,
):
    path = os.path.join(run, CONFIG_FILE)
    new = config.to_dict()
    import accelerate
    import diffusers

    record = {
        "task": task.name,
        "config": new,
        "data": task.describe(),
        "num_processes": accelerator.num_processes,
        "resumed_from": resumed,
        "changed_on_resume": changed or {},
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "accelerate": accelerate.__version__,
        },
    }
    tmp = path + ".tmp"  # written whole, then renamed: a reader never sees half a config
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, default=str)
    os.replace(tmp, path)
