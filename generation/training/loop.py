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

The run folder it writes into is checked and described by `generation.training.run_folder`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from manifests.progress import progress_bar

from ..guards import SEED_LIMIT, make_generator
from ..models.attention import use_float32_attention
from . import checkpoint as ckpt
from .batches import Batches, batch_size
from .config import TrainConfig
from .errors import NonFiniteLossError, TrackerMissingError, TrainingOOMError
from .metrics import MetricsLog
from .run_folder import VALIDATION_DIR, check_run_folder, clear_run, resume_changes, write_run_config
from .task import TrainTask

logger = logging.getLogger(__name__)


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


# Devices with torch's fused AdamW kernel: one pass over all tensors instead of a loop of small ops per
# tensor, torch's CPU default. With the foreach EMA, the update takes 0.45x-0.48x the loops' time on a
# CPU (bench/optimizer_step.py).
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """AdamW over `params`, fused where every parameter is a float on a `FUSED_ADAMW_DEVICES` device
    (the model moves later, but only between such devices); bitsandbytes' 8-bit AdamW when asked."""
    params = list(params)
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
    fused = all(p.is_floating_point() and p.device.type in FUSED_ADAMW_DEVICES for p in params)
    return torch.optim.AdamW(params, fused=fused or None, **kwargs)


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
            # A checkpoint from before the fused kernel would bring back the per-tensor loop.
            fused=optimizer.defaults.get("fused"),
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


def train(task: TrainTask, config: TrainConfig | None = None) -> TrainResult:
    """Train `task` with `config` (default: ``task.config``); see the module docstring."""
    config = (config or task.config).resolve()
    config.validate()
    try:
        accelerator, resume_dir = _open_run(task, config)
        session = _Session(task, config, accelerator, resume_dir)
        try:
            stopped_early = session.loop()
        except Exception as exc:
            if _is_oom(exc):
                raise TrainingOOMError(
                    oom_message(config, task, f"training step {session.state.step + 1}")
                ) from exc
            raise
        return session.finish(stopped_early)
    finally:
        # accelerate keeps one process-wide state that fixes every later Accelerator's mixed precision:
        # forget it (the process group stays), so that a next run in this process may choose its own.
        AcceleratorState._reset_state()


def _open_run(task: TrainTask, config: TrainConfig) -> tuple[Accelerator, str | None]:
    """Check the run folder and the data, start accelerate, record the run's config.json and build the
    task's models; returns the accelerator and the checkpoint to resume from (None: a fresh start)."""
    run = config.out
    # Every process decides before any of them writes (creating the Accelerator below is the first
    # point where all processes meet), so all of them see the folder as the user left it.
    folder_use = check_run_folder(run, task.name, config)

    # Model folders and data first: a wrong path or a bad manifest must fail before the run folder is
    # made and before minutes of model loading.
    task.check_models()
    task.check_data()

    check_tracker(config.report_to)
    accelerator = Accelerator(
        mixed_precision={"fp32": "no"}.get(config.precision, config.precision),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        project_config=ProjectConfiguration(project_dir=run, logging_dir=os.path.join(run, "logs")),
        log_with=config.report_to,
    )
    main = accelerator.is_main_process
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
        write_run_config(run, config, task, accelerator, resume_dir, changed)
    set_seed(config.seed % 2**32)  # numpy's global seed takes [0, 2**32); smaller seeds are unchanged

    try:
        task.build(accelerator)
    except Exception as exc:
        if _is_oom(exc):
            raise TrainingOOMError(oom_message(config, task, "model loading")) from exc
        raise
    if main:  # again, now with what the task learned while building (model sources, sizes)
        write_run_config(run, config, task, accelerator, resume_dir, changed)
    return accelerator, resume_dir


class _Session:
    """One training run after `_open_run`: the model under accelerate with its optimizer, LR schedule,
    EMA, generator, data stream and metrics, restored from `resume_dir` when given."""

    def __init__(
        self, task: TrainTask, config: TrainConfig, accelerator: Accelerator, resume_dir: str | None
    ):
        self.task, self.config, self.accelerator, self.run = task, config, accelerator, config.out
        self.rank, self.main = accelerator.process_index, accelerator.is_main_process
        model = task.trainable()
        if config.gradient_checkpointing:
            if not hasattr(model, "enable_gradient_checkpointing"):
                raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
            model.enable_gradient_checkpointing()
        model.train()
        if accelerator.device.type == "cpu" and accelerator.mixed_precision == "bf16":
            # bf16 speeds up a CPU's convolutions but slows its attention (see models/attention.py).
            layers = use_float32_attention(model)
            logger.info("CPU bf16: %d attention layers kept in float32", layers)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names, self.params = [n for n, _ in named], [p for _, p in named]
        optimizer = make_optimizer(config, self.params)
        lr_scheduler = get_scheduler(
            config.lr_schedule,
            optimizer,
            num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=config.steps * accelerator.num_processes,
        )
        self.ema = None
        if config.ema:
            self.ema = EMAModel(
                self.params,
                decay=config.ema_decay,
                use_ema_warmup=config.ema_warmup,
                power=3 / 4,
                foreach=True,  # one kernel per op over all shadow tensors, not a Python loop of them
            )
            self.ema.to(accelerator.device)
        self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
        dataset = task.dataset(accelerator)
        # Wrapped into torch's [0, 2**64): unchanged for every seed small enough not to overflow.
        self.generator = make_generator((config.seed * 7919 + self.rank) % SEED_LIMIT, accelerator.device)

        self.state = ckpt.TrainerState()
        if config.report_to:
            accelerator.init_trackers(
                f"{task.name}-{os.path.basename(os.path.abspath(self.run))}", config=tracker_config(config)
            )
        self.metrics = MetricsLog(
            self.run, enabled=self.main, tracker=accelerator if config.report_to else None
        )
        if resume_dir:
            self._resume(resume_dir)
        # Resuming drops the lines past the checkpoint; a fresh start in a run folder (--resume latest
        # before its first checkpoint) drops them all, so two attempts never interleave.
        self.metrics.truncate_after(self.state.step)
        self.last_checkpoint = resume_dir
        self.batches = Batches(dataset, task, config, accelerator, self.state)
        self.final_loss = None

    def _resume(self, resume_dir: str) -> None:
        logger.info("resuming from %s", resume_dir)
        self.accelerator.load_state(resume_dir)
        self.state = ckpt.read_state(resume_dir)
        self.state.data_state = ckpt.load_data_state(resume_dir, self.rank)
        ckpt.load_generator(self.generator, resume_dir, self.rank)
        if self.ema is not None:
            ckpt.load_ema(self.ema, self.names, resume_dir, self.state.ema)
        apply_settings_after_resume(self.config, self.optimizer, self.lr_scheduler, self.ema)

    @contextlib.contextmanager
    def _ema_weights(self):
        """The model with the EMA weights in place (unchanged without EMA), restored afterwards."""
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
        try:
            yield self.accelerator.unwrap_model(self.model)
        finally:
            if self.ema is not None:
                self.ema.restore(self.params)

    def save_checkpoint(self) -> str:
        accelerator, state, main = self.accelerator, self.state, self.main
        final = ckpt.checkpoint_path(self.run, state.step)
        tmp = final + ".tmp"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp, safe_serialization=True)
        ckpt.save_generator(self.generator, tmp, self.rank)
        state.epoch, state.batches_in_epoch = self.batches.epoch, self.batches.index
        state.data_state = self.batches.data_state()
        ckpt.save_data_state(tmp, self.rank, state.data_state)
        if main:
            state.ema = ckpt.save_ema(self.ema, self.names, tmp) if self.ema is not None else {}
            ckpt.write_state(tmp, state)
        accelerator.wait_for_everyone()
        if main:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            ckpt.rotate(self.run, self.config.checkpoints_total_limit)
        accelerator.wait_for_everyone()
        logger.info("saved %s", final)
        return final

    def validate(self) -> None:
        if self.main:
            with self._ema_weights() as unwrapped:
                was_training = unwrapped.training
                unwrapped.eval()
                try:
                    path = os.path.join(self.run, VALIDATION_DIR, f"step-{self.state.step:06d}.png")
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    extra = self.task.validate(unwrapped, self.state.step, path) or {}
                    if extra:
                        self.metrics.write(
                            {"step": self.state.step, **{f"val_{k}": v for k, v in extra.items()}}
                        )
                finally:
                    unwrapped.train(was_training)
        self.accelerator.wait_for_everyone()

    def micro_step(self, batch) -> dict:
        """Forward, backward and (at the end of an accumulation window) the optimizer step on one batch;
        returns the loss terms. A non-finite loss on any process stops the run."""
        accelerator, config = self.accelerator, self.config
        with accelerator.accumulate(self.model):
            terms = self.task.loss(self.model, batch, self.generator)
            loss = terms["loss"]
            finite = torch.isfinite(loss.detach())
            if accelerator.num_processes > 1:
                finite = accelerator.reduce(finite.float(), reduction="sum") == accelerator.num_processes
            if not bool(finite):
                detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                where = self.last_checkpoint or "none yet (nothing was saved)"
                raise NonFiniteLossError(
                    f"non-finite loss at step {self.state.step + 1} ({detail}); stopping. Last good checkpoint: "
                    f"{where}. Try a lower --learning-rate, --precision bf16 instead of fp16, or "
                    "check the data for broken crops."
                )
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return terms

    def log(self, sums: dict, logged_steps: int, local_samples: int, since: float, now: float) -> dict:
        """Write one metrics line: the mean loss terms over the `logged_steps` steps since `since`, the
        learning rate, epoch, samples seen and throughput (reduced over processes)."""
        accelerator = self.accelerator
        means = {k: v / logged_steps for k, v in sums.items()}
        if accelerator.num_processes > 1:
            packed = torch.tensor(list(means.values()), device=accelerator.device)
            means = dict(zip(means, accelerator.reduce(packed, reduction="mean").tolist()))
        interval_samples = local_samples
        if accelerator.num_processes > 1:
            interval_samples = int(
                accelerator.reduce(torch.tensor(local_samples, device=accelerator.device), "sum")
            )
        self.state.samples_seen += interval_samples
        record = {
            "step": self.state.step,
            **means,
            "lr": self.lr_scheduler.get_last_lr()[0],
            "epoch": self.batches.epoch,
            "samples_seen": self.state.samples_seen,
            "steps_per_s": logged_steps / max(now - since, 1e-9),
            "samples_per_s": interval_samples / max(now - since, 1e-9),
        }
        self.metrics.write(record)
        self.final_loss = means.get("loss")
        return record

    def loop(self) -> bool:
        """Train up to `config.steps`; returns True when `interrupt_after` stopped it early."""
        config, state = self.config, self.state
        start_step = state.step
        sums: dict[str, float] = {}
        logged_steps, last_log_time = 0, time.perf_counter()
        micro: dict[str, float] = {}
        n_micro, local_samples = 0, 0
        bar = progress_bar(
            total=config.steps,
            initial=state.step,
            enabled=self.main,
            desc=f"train-{self.task.name}",
            unit="step",
        )
        try:
            for batch in self.batches:
                if state.step >= config.steps:
                    break
                batch = self.task.prepare_batch(batch, self.accelerator.device)
                terms = self.micro_step(batch)
                for k, v in terms.items():
                    micro[k] = micro.get(k, 0.0) + float(v.detach())
                n_micro += 1
                local_samples += batch_size(batch)
                if not self.accelerator.sync_gradients:
                    continue

                # One optimizer step is complete.
                if self.ema is not None:
                    self.ema.step(self.params)
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
                    (config.checkpoint_every and state.step % config.checkpoint_every == 0)
                    or done
                    or interrupted
                )
                # Log at checkpoints too, so a resumed run's metrics never depend on unsaved partial sums.
                if state.step % config.log_every == 0 or checkpoint_now:
                    now = time.perf_counter()
                    record = self.log(sums, logged_steps, local_samples, last_log_time, now)
                    bar.set_postfix(loss=f"{self.final_loss:.4f}", samples_s=f"{record['samples_per_s']:.1f}")
                    sums, logged_steps, last_log_time, local_samples = {}, 0, now, 0

                if checkpoint_now:
                    self.last_checkpoint = self.save_checkpoint()
                if (config.validate_every and state.step % config.validate_every == 0) or done:
                    self.validate()
                if done:
                    break
                if interrupted:
                    logger.info(
                        "stopping after %d steps in this run (interrupt_after); resume with --resume latest",
                        config.interrupt_after,
                    )
                    return True
        finally:
            bar.close()
            self.metrics.close()
        return False

    def finish(self, stopped_early: bool) -> TrainResult:
        """After the loop: the last checkpoint and the final model when the run is complete."""
        finished = self.state.step >= self.config.steps and not stopped_early
        if finished:
            if self.last_checkpoint is None or ckpt.read_state(self.last_checkpoint).step != self.state.step:
                self.last_checkpoint = self.save_checkpoint()
            if self.main:
                with self._ema_weights() as unwrapped:
                    self.task.save_final(unwrapped, self.run)
            self.accelerator.wait_for_everyone()
        self.task.close()
        self.accelerator.end_training()
        final_loss = self.final_loss
        if final_loss is not None and not math.isfinite(final_loss):
            final_loss = None
        return TrainResult(
            run=self.run,
            step=self.state.step,
            finished=finished,
            last_checkpoint=self.last_checkpoint,
            final_loss=final_loss,
        )
