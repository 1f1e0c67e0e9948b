"""The shared training loop: accelerate, EMA, LR schedule, checkpoints with exact resume, metrics, guards.

`train(task, config)` runs any `TrainTask`. It works the same on one CPU, one GPU or several GPUs
under ``accelerate launch``. Exact resume rests on three things:

- all training randomness comes from one ``torch.Generator`` per process, saved in each checkpoint;
- the data order is a function of (seed, epoch) only, and the position inside the epoch is saved
  (the dataset's own ``state_dict`` when it has one, else a count of consumed micro-batches that are
  skipped again on resume);
- optimizer, LR scheduler, weights and EMA are restored from the checkpoint.

A resumed run keeps the checkpoint's state but the settings given now: a changed learning rate, AdamW
or EMA setting is put in force after loading (the checkpoint would otherwise bring back the old
values) and config.json records the settings in force plus ``changed_on_resume``.

**The run folder** (``--out``). A folder is a run of a task when its ``config.json`` is a JSON object
whose ``"task"`` is the task's name (``"hand"``, ``"body"``, ...): `_write_config` writes it before any
model is loaded, so every run that got past its data check carries it. `train` writes into:

- a missing or empty folder (dot-files do not count): a new run;
- a run of the same task with ``--resume``: continues it (``latest``: its newest checkpoint);
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
import math
import os
import shutil
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from manifests.datasets import ManifestDataLoader, ResumableStream
from manifests.progress import progress_bar

from ..guards import SEED_LIMIT, make_generator
from . import checkpoint as ckpt
from .config import TrainConfig
from .errors import NonFiniteLossError, RunFolderError, TrackerMissingError, TrainingOOMError
from .metrics import CURVES_FILE, METRICS_FILE, MetricsLog
from .task import TrainTask

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
VALIDATION_DIR = "validation"
# Settings that may change between a run and its resumption without a warning.
_RESUMABLE_CHANGES = {
    "resume",
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


@dataclass
class TrainResult:
    run: str
    step: int
    finished: bool  # False when stopped by interrupt_after
    last_checkpoint: str | None
    final_loss: float | None


def weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """dtype for frozen models under the run's mixed precision (trained weights stay float32)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    kwargs = dict(
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    if config.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise ImportError(
                "--use-8bit-adam needs bitsandbytes: pip install bitsandbytes (CUDA only)"
            ) from exc
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def oom_message(config: TrainConfig, task: TrainTask, where: str) -> str:
    hints = [
        f"--batch-size (now {config.batch_size}; raise --gradient-accumulation-steps to keep the effective batch)"
    ]
    if not config.gradient_checkpointing:
        hints.append("--gradient-checkpointing")
    if config.precision == "fp32":
        hints.append("--precision bf16 (or fp16)")
    if not config.use_8bit_adam:
        hints.append("--use-8bit-adam (with bitsandbytes)")
    if config.ema:
        hints.append("--no-ema")
    hints.extend(task.oom_hints)
    return f"out of memory during {where}. Lower memory use with: " + "; ".join(hints)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc)
    )


class _Batches:
    """Endless stream of batches whose order depends on (seed, epoch) only, with a savable position.

    Manifest datasets go through `ManifestDataLoader`: they shard over ranks themselves and restore
    the position without reading the skipped rows. A map-style dataset gets a seeded
    `DistributedSampler` (one share per rank, reshuffled per epoch) and is resumed by skipping the
    micro-batches already consumed. Any other IterableDataset must shard over ranks by itself.
    """

    def __init__(self, dataset, task: TrainTask, config: TrainConfig, accelerator, state: ckpt.TrainerState):
        self.dataset, self.task, self.config = dataset, task, config
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        saved = state.data_state or {}
        self.epoch = int(saved.get("epoch", state.epoch))
        self.index = int(saved.get("batches_in_epoch", 0))
        self.resuming = state.step > 0
        self.loader = None
        if isinstance(dataset, ResumableStream):
            # Not passed through accelerator.prepare, which would shard the batches a second time.
            self.loader = ManifestDataLoader(
                dataset, batch_size=config.batch_size, num_workers=config.num_workers, collate_fn=task.collate
            )
            self.loader.set_epoch(self.epoch)
            if state.data_state:
                self.loader.load_state_dict(state.data_state)

    def _plain_loader(self):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        sampler = None
        if not isinstance(self.dataset, torch.utils.data.IterableDataset):
            sampler = torch.utils.data.DistributedSampler(
                self.dataset,
                num_replicas=self.world,
                rank=self.rank,
                shuffle=True,
                seed=self.config.seed,
                drop_last=True,
            )
            sampler.set_epoch(self.epoch)
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.config.batch_size,
            sampler=sampler,
            num_workers=self.config.num_workers,
            collate_fn=self.task.collate,
            drop_last=sampler is not None,
        )

    def data_state(self) -> dict:
        if self.loader is not None:
            return self.loader.state_dict()
        return {"epoch": self.epoch, "batches_in_epoch": self.index}

    def __iter__(self):
        while True:
            count, skip = 0, self.index if self.loader is None else 0
            for i, batch in enumerate(self.loader if self.loader is not None else self._plain_loader()):
                count += 1
                if i < skip:
                    continue
                self.index = self.index + 1 if self.loader is not None else i + 1
                yield batch
            if count == 0 and not self.resuming:
                raise RuntimeError("the training dataset yielded no batch (empty after filtering?)")
            self.epoch, self.index, self.resuming = self.epoch + 1, 0, False
            if self.loader is not None:
                self.loader.set_epoch(self.epoch)


def _batch_size(batch) -> int:
    """Samples in a collated batch: the leading size of its first tensor (or list)."""
    for v in batch.values() if isinstance(batch, dict) else [batch]:
        if torch.is_tensor(v) or isinstance(v, (list, tuple)):
            return len(v)
    return 1


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
    found = ckpt.list_checkpoints(run)
    last = f"checkpoints up to step {found[-1][0]}" if found else "no checkpoint yet"
    raise RunFolderError(
        f"--out {run!r} already holds a {command} run ({last}); pass --resume latest to continue it, or "
        "--overwrite to start it over (deleting its checkpoints, metrics, validation images and final model)"
    )


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


def tracker_config(config: TrainConfig) -> dict:
    """The run's settings as trackers take them: bool, int, float, str or None (lists and dicts as JSON)."""
    scalar = (bool, int, float, str, type(None))
    return {
        k: v if isinstance(v, scalar) else json.dumps(v, default=str) for k, v in config.to_dict().items()
    }


def check_tracker(name: str | None) -> None:
    """``--report-to NAME`` needs NAME's package: a one-line error before any work when it is missing."""
    import importlib.util

    if name and importlib.util.find_spec(name) is None:
        raise TrackerMissingError(f"--report-to {name} needs the {name} package: pip install {name}")


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
        pass  # a record this version no longer reads: compare it as written
    new = json.loads(json.dumps(config.to_dict(), default=str))  # tuples as lists, as the file holds them
    return {k: [old.get(k), v] for k, v in new.items() if old.get(k) != v and k not in _RESUMABLE_CHANGES}


def apply_settings_after_resume(config: TrainConfig, optimizer, lr_scheduler, ema) -> None:
    """Put this invocation's optimisation settings in force over what a checkpoint restored.

    `accelerator.load_state` brings back the optimizer's hyper-parameters and the scheduler's base
    learning rate as they were saved, which would silently ignore a changed ``--learning-rate`` (and
    AdamW / EMA settings) while config.json records the new value. The schedule's shape already
    follows the new settings (its lambdas are rebuilt, not saved); only the step count is the
    checkpoint's. With unchanged settings this reproduces the restored values exactly."""
    for group in optimizer.param_groups:
        group.update(
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay,
            eps=config.adam_epsilon,
            initial_lr=config.learning_rate,
        )
    sched = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps the torch scheduler
    if hasattr(sched, "lr_lambdas"):
        sched.base_lrs = [config.learning_rate] * len(optimizer.param_groups)
        lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        sched._last_lr = lrs
    if ema is not None:
        ema.decay, ema.use_ema_warmup = config.ema_decay, config.ema_warmup


def _write_config(
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


def train(task: TrainTask, config: TrainConfig | None = None) -> TrainResult:
    """Train `task` with `config` (default: ``task.config``); see the module docstring."""
    config = (config or task.config).resolve()
    config.validate()
    run = config.out
    # Every process decides before any of them writes (creating the Accelerator below is the first
    # point where all processes meet), so all of them see the folder as the user left it.
    folder_use = check_run_folder(run, task.name, config)

    # Data first: a bad manifest must fail before minutes of model loading.
    task.check_data()

    check_tracker(config.report_to)
    accelerator = Accelerator(
        mixed_precision={"fp32": "no"}.get(config.precision, config.precision),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        project_config=ProjectConfiguration(project_dir=run, logging_dir=os.path.join(run, "logs")),
        log_with=config.report_to,
    )
    rank, main = accelerator.process_index, accelerator.is_main_process
    if main:
        if folder_use == "overwrite":
            clear_run(run, task)
        os.makedirs(run, exist_ok=True)
    accelerator.wait_for_everyone()
    if config.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    resume_dir = ckpt.resolve_resume(run, config.resume)
    changed = resume_changes(run, config) if resume_dir else {}
    if changed:
        logger.warning("resuming with changed settings [old, new], in force from here on: %s", changed)
    if main:
        _write_config(run, config, task, accelerator, resume_dir, changed)
    set_seed(config.seed % 2**32)  # numpy's global seed takes [0, 2**32); smaller seeds are unchanged

    try:
        task.build(accelerator)
    except Exception as exc:
        if _is_oom(exc):
            raise TrainingOOMError(oom_message(config, task, "model loading")) from exc
        raise
    if main:  # again, now with what the task learned while building (model sources, sizes)
        _write_config(run, config, task, accelerator, resume_dir, changed)
    model = task.trainable()
    if config.gradient_checkpointing:
        if not hasattr(model, "enable_gradient_checkpointing"):
            raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
        model.enable_gradient_checkpointing()
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    optimizer = make_optimizer(config, params)
    lr_scheduler = get_scheduler(
        config.lr_schedule,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.steps * accelerator.num_processes,
    )
    ema = None
    if config.ema:
        ema = EMAModel(params, decay=config.ema_decay, use_ema_warmup=config.ema_warmup, power=3 / 4)
        ema.to(accelerator.device)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    dataset = task.dataset(accelerator)
    # Wrapped into torch's [0, 2**64): unchanged for every seed small enough not to overflow.
    generator = make_generator((config.seed * 7919 + rank) % SEED_LIMIT, accelerator.device)

    state = ckpt.TrainerState()
    if config.report_to:
        accelerator.init_trackers(
            f"{task.name}-{os.path.basename(os.path.abspath(run))}", config=tracker_config(config)
        )
    metrics = MetricsLog(run, enabled=main, tracker=accelerator if config.report_to else None)
    if resume_dir:
        logger.info("resuming from %s", resume_dir)
        accelerator.load_state(resume_dir)
        state = ckpt.read_state(resume_dir)
        state.data_state = ckpt.load_data_state(resume_dir, rank)
        ckpt.load_generator(generator, resume_dir, rank)
        if ema is not None:
            ckpt.load_ema(ema, names, resume_dir, state.ema)
        apply_settings_after_resume(config, optimizer, lr_scheduler, ema)
    # Resuming drops the lines past the checkpoint; a fresh start in a run folder (--resume latest
    # before its first checkpoint) drops them all, so two attempts never interleave.
    metrics.truncate_after(state.step)
    last_checkpoint = resume_dir
    batches = _Batches(dataset, task, config, accelerator, state)

    def save_checkpoint() -> str:
        final = ckpt.checkpoint_path(run, state.step)
        tmp = final + ".tmp"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp, safe_serialization=True)
        ckpt.save_generator(generator, tmp, rank)
        state.epoch, state.batches_in_epoch, state.data_state = (
            batches.epoch,
            batches.index,
            batches.data_state(),
        )
        ckpt.save_data_state(tmp, rank, state.data_state)
        if main:
            state.ema = ckpt.save_ema(ema, names, tmp) if ema is not None else {}
            ckpt.write_state(tmp, state)
        accelerator.wait_for_everyone()
        if main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            ckpt.rotate(run, config.checkpoints_total_limit)
        accelerator.wait_for_everyone()
        logger.info("saved %s", final)
        return final

    def validate() -> None:
        if main:
            unwrapped = accelerator.unwrap_model(model)
            if ema is not None:
                ema.store(params)
                ema.copy_to(params)
            was_training = unwrapped.training
            unwrapped.eval()
            try:
                path = os.path.join(run, VALIDATION_DIR, f"step-{state.step:06d}.png")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                extra = task.validate(unwrapped, state.step, path) or {}
                if extra:
                    metrics.write({"step": state.step, **{f"val_{k}": v for k, v in extra.items()}})
            finally:
                unwrapped.train(was_training)
                if ema is not None:
                    ema.restore(params)
        accelerator.wait_for_everyone()

    # ---- the loop --------------------------------------------------------------------------------
    start_step = state.step
    sums: dict[str, float] = {}
    logged_steps, last_log_time = 0, time.perf_counter()
    final_loss = None
    micro: dict[str, float] = {}
    n_micro, local_samples = 0, 0
    bar = progress_bar(
        total=config.steps, initial=state.step, enabled=main, desc=f"train-{task.name}", unit="step"
    )
    stopped_early = False
    try:
        for batch in batches:
            if state.step >= config.steps:
                break
            batch = task.prepare_batch(batch, accelerator.device)
            with accelerator.accumulate(model):
                terms = task.loss(model, batch, generator)
                loss = terms["loss"]
                finite = torch.isfinite(loss.detach())
                if accelerator.num_processes > 1:
                    finite = accelerator.reduce(finite.float(), reduction="sum") == accelerator.num_processes
                if not bool(finite):
                    detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                    where = last_checkpoint or "none yet (nothing was saved)"
                    raise NonFiniteLossError(
                        f"non-finite loss at step {state.step + 1} ({detail}); stopping. Last good checkpoint: "
                        f"{where}. Try a lower --learning-rate, --precision bf16 instead of fp16, or "
                        "check the data for broken crops."
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in terms.items():
                micro[k] = micro.get(k, 0.0) + float(v.detach())
            n_micro += 1
            local_samples += _batch_size(batch)
            if not accelerator.sync_gradients:
                continue

            # One optimizer step is complete.
            if ema is not None:
                ema.step(params)
            state.step += 1
            for k, v in micro.items():
                sums[k] = sums.get(k, 0.0) + v / n_micro
            micro, n_micro = {}, 0
            logged_steps += 1
            bar.update(1)

            done = state.step >= config.steps
            interrupted = (
                config.interrupt_after is not None and state.step - start_step >= config.interrupt_after
            )
            checkpoint_now = (
                (config.checkpoint_every and state.step % config.checkpoint_every == 0) or done or interrupted
            )
            # Log at checkpoints too, so a resumed run's metrics never depend on unsaved partial sums.
            if state.step % config.log_every == 0 or checkpoint_now:
                now = time.perf_counter()
                means = {k: v / logged_steps for k, v in sums.items()}
                if accelerator.num_processes > 1:
                    packed = torch.tensor(list(means.values()), device=accelerator.device)
                    means = dict(zip(means, accelerator.reduce(packed, reduction="mean").tolist()))
                rate = logged_steps / max(now - last_log_time, 1e-9)
                interval_samples = local_samples
                if accelerator.num_processes > 1:
                    interval_samples = int(
                        accelerator.reduce(torch.tensor(local_samples, device=accelerator.device), "sum")
                    )
                state.samples_seen += interval_samples
                record = {
                    "step": state.step,
                    **means,
                    "lr": lr_scheduler.get_last_lr()[0],
                    "epoch": batches.epoch,
                    "samples_seen": state.samples_seen,
                    "steps_per_s": rate,
                    "samples_per_s": interval_samples / max(now - last_log_time, 1e-9),
                }
                metrics.write(record)
                final_loss = means.get("loss")
                bar.set_postfix(loss=f"{final_loss:.4f}", samples_s=f"{record['samples_per_s']:.1f}")
                sums, logged_steps, last_log_time, local_samples = {}, 0, now, 0

            if checkpoint_now:
                last_checkpoint = save_checkpoint()
            if (config.validate_every and state.step % config.validate_every == 0) or done:
                validate()
            if done:
                break
            if interrupted:
                stopped_early = True
                logger.info(
                    "stopping after %d steps in this run (interrupt_after); resume with --resume latest",
                    config.interrupt_after,
                )
                break
    except Exception as exc:
        if _is_oom(exc):
            raise TrainingOOMError(oom_message(config, task, f"training step {state.step + 1}")) from exc
        raise
    finally:
        bar.close()
        metrics.close()

    finished = state.step >= config.steps and not stopped_early
    if finished:
        if last_checkpoint is None or ckpt.read_state(last_checkpoint).step != state.step:
            last_checkpoint = save_checkpoint()
        if main:
            unwrapped = accelerator.unwrap_model(model)
            if ema is not None:
                ema.store(params)
                ema.copy_to(params)
            task.save_final(unwrapped, run)
            if ema is not None:
                ema.restore(params)
        accelerator.wait_for_everyone()
    task.close()
    accelerator.end_training()
    if final_loss is not None and not math.isfinite(final_loss):
        final_loss = None
    return TrainResult(
        run=run, step=state.step, finished=finished, last_checkpoint=last_checkpoint, final_loss=final_loss
    )
