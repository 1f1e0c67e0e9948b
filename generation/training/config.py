"""Run settings of training as plain dataclasses on the project's one settings mechanism.

`TrainConfig` holds what every training run needs (optimisation, precision, checkpoints, logging).
A task subclasses it with its own fields (`HandTrainConfig` for stage 1, `BodyTrainConfig` for
stage 2). Every field is declared with `manifests.settings.setting` (help, choices, range), so a new
field is a new ``--kebab-case`` CLI option and a checked value with no other change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from manifests.decode import CAPTION_CHOICES
from manifests.settings import OLD_PRECISION_NAMES, SettingError, Settings, precision_setting, setting

from ..guards import MAX_SEED

REPORT_TO = ("tensorboard", "wandb")
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


# Learning rate per preset when --learning-rate is not given: the tiny random models need a large one
# to learn anything in a few hundred steps; 1e-5 is the usual rate for fine-tuning Stable Diffusion.
# The mini preset trains from scratch too (from a train-vae folder); its UNet is about 8x the tiny one's
# width, so it gets half the tiny rate (bench/learns.py records what that reaches; no sweep was made).
PRESET_LEARNING_RATES = {"tiny": 1e-3, "mini": 5e-4, "sd": 1e-5}
# Training side per preset when --resolution is not given. The tiny preset trains at 64 px whatever the
# manifest's crop size, so the CPU demo stays fast; sd trains at SD-1.5's native 512 px.
# mini: 64 px hand crops (8x8 latents: a 21-keypoint heatmap still separates the fingers there, and the
# chain fits the CPU budget); its body runs pass --resolution 128 so that hands stay a few latent pixels wide.
PRESET_RESOLUTION = {"tiny": 64, "mini": 64, "sd": 512}


@dataclass
class TrainConfig(Settings):
    """Settings shared by every training task. Fields in order of how often people change them."""

    RENAMED = {"mixed_precision": OLD_PRECISION_NAMES["mixed_precision"]}

    out: str = setting(
        "runs/train", "run folder: checkpoints, metrics.jsonl, config.json, validation grids, final model"
    )
    steps: int = setting(
        1000, "optimizer steps in total (a resumed run continues up to this count)", ge=1, le=10**9
    )
    batch_size: int = setting(4, "samples per device per micro-batch", ge=1, le=65536)
    learning_rate: float = setting(1e-5, "peak learning rate", gt=0, le=10)
    lr_schedule: str = setting("constant_with_warmup", "learning-rate schedule", choices=LR_SCHEDULES)
    lr_warmup_steps: int = setting(0, "linear warm-up steps", ge=0)
    gradient_accumulation_steps: int = setting(
        1, "micro-batches per optimizer step (effective batch = batch x this x GPUs)", ge=1, le=65536
    )
    precision: str = precision_setting(
        "mixed precision: fp32 (none), fp16 or bf16 (bf16 on Ampere or newer GPUs, and on CPUs with "
        "AMX, where attention stays float32)"
    )
    gradient_checkpointing: bool = setting(
        False, "recompute activations in the backward pass: less memory, ~30%% slower"
    )
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0 disables clipping)", ge=0)
    use_8bit_adam: bool = setting(
        False, "bitsandbytes 8-bit AdamW (must be installed; a clear error otherwise)"
    )
    adam_beta1: float = setting(0.9, "AdamW beta1", ge=0, lt=1)
    adam_beta2: float = setting(0.999, "AdamW beta2", ge=0, lt=1)
    adam_weight_decay: float = setting(1e-2, "AdamW weight decay", ge=0)
    adam_epsilon: float = setting(1e-8, "AdamW epsilon", gt=0)
    ema: bool = setting(
        True, "keep an exponential moving average of the weights; the final model and validation use it"
    )
    ema_decay: float = setting(0.9999, "EMA decay (warm-up starts lower)", gt=0, lt=1)
    ema_warmup: bool = setting(
        True, "EMA warm-up: the decay grows with the step count (useful for short runs)"
    )
    checkpoint_every: int = setting(
        500, "save a resumable checkpoint every N optimizer steps (0: only at the end)", ge=0
    )
    checkpoints_total_limit: int = setting(
        3, "keep at most this many checkpoints (oldest deleted; 0 keeps all)", ge=0
    )
    validate_every: int = setting(
        500, "write a validation image grid every N steps (0: only at the end)", ge=0
    )
    log_every: int = setting(10, "append a metrics.jsonl line every N steps (means over those steps)", ge=1)
    seed: int = setting(0, "seed for initialisation, data order and training noise", ge=0, le=MAX_SEED)
    resume: str | None = setting(
        None,
        "'latest' (the newest checkpoint in the run folder, or a fresh start if none) or a checkpoint folder",
    )
    overwrite: bool = setting(
        False,
        "start an existing run folder of the same task over: its checkpoints, metrics, validation images and "
        "final model are deleted (without it, such a folder is refused unless --resume is given)",
    )
    interrupt_after: int | None = setting(
        None,
        "stop after this many steps in this invocation, with a checkpoint (fit a job time limit; continue with --resume latest)",
        ge=1,
    )
    num_workers: int = setting(0, "DataLoader worker processes", ge=0, le=1024)
    allow_tf32: bool = setting(True, "allow TF32 matmuls on Ampere+ GPUs")
    report_to: str | None = setting(
        None,
        "also log the metrics to tensorboard (RUN/logs) or wandb, through accelerate's trackers; the package "
        "must be installed (default: metrics.jsonl and curves.png only)",
        choices=REPORT_TO,
    )

    def resolve(self):
        """Fill settings whose default depends on others; returns the config.

        A `learning_rate` left as None takes its preset's rate from `PRESET_LEARNING_RATES`. With
        ``init_from`` the model is the source run's, so its preset (which then only sets defaults) and,
        unless given, its training resolution are taken from that run's config.json.
        """
        source = recorded_run(self.init_from) if getattr(self, "init_from", None) else {}
        if source.get("config", {}).get("preset") in PRESET_LEARNING_RATES:
            self.preset = source["config"]["preset"]

        if getattr(self, "resolution", 0) is None and isinstance(
            source.get("data", {}).get("resolution"), int
        ):
            self.resolution = source["data"]["resolution"]
        if getattr(self, "learning_rate", 0) is None:
            self.learning_rate = PRESET_LEARNING_RATES.get(getattr(self, "preset", "sd"), 1e-5)
        return self


def preset_for(preset: str | None, pretrained: str | None) -> str:
    """The preset a run uses: the one ``--pretrained`` implies (a `train-vae` run folder: mini; any other
    folder or a Hub id: sd), ``--preset`` only to build from nothing (tiny when not given). A ``--preset``
    that contradicts the folder is a `SettingError`: weights are never silently ignored."""
    if not pretrained:
        return preset or "tiny"
    vae_run = recorded_run(pretrained).get("task") == "vae" if os.path.isdir(pretrained) else False
    implied = "mini" if vae_run else "sd"
    if preset in (None, implied):
        return implied
    what = "a train-vae run (preset mini)" if vae_run else "a Stable Diffusion model (preset sd)"
    if preset == "tiny":
        why = "builds random components and would ignore its weights"
    else:
        why = "contradicts it"
    raise SettingError(f"--preset {preset} {why}: --pretrained {pretrained!r} is {what}; drop --preset")


def recorded_run(run: str) -> dict:
    """A run folder's config.json record ({} when there is none or it is unreadable: the task's own
    check names the problem)."""
    import json

    try:
        with open(os.path.join(run, "config.json"), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def check_manifest_and_weights(config) -> None:
    """Checks of a task config with ``manifest``, ``preset`` and ``pretrained`` fields: a manifest is
    given (with ``manifest_weights``, one weight per manifest), and ``--preset sd`` has a Stable
    Diffusion folder unless ``--init-from`` brings the whole model. Raises SettingError."""
    if not config.manifest:
        raise SettingError("--manifest is required (a manifest written by prep)")
    weights = getattr(config, "manifest_weights", None)
    if weights is not None and len(weights) != len(config.manifest):
        raise SettingError(
            f"--manifest-weights gives {len(weights)} weight(s) for {len(config.manifest)} --manifest "
            "value(s); give one weight per manifest, in the same order"
        )
    if config.preset == "sd" and not config.pretrained and not getattr(config, "init_from", None):
        raise SettingError(
            "--preset sd needs --pretrained PATH (a Stable Diffusion folder in diffusers layout, or a Hub id)"
        )
    init_from = getattr(config, "init_from", None)
    if not init_from:
        preset_for(config.preset, config.pretrained)  # a --preset that contradicts --pretrained
    if init_from and os.path.abspath(init_from) == os.path.abspath(config.out):
        raise SettingError(
            f"--init-from {init_from!r} is the run folder itself (--out); use --resume latest to continue a run"
        )


# Prediction types defined at zero signal-to-noise (the image cannot be recovered from epsilon there).
ZERO_SNR_PREDICTIONS = ("v_prediction", "sample")


def check_noise_schedule(config) -> None:
    """Epsilon prediction is undefined at zero SNR: --zero-terminal-snr needs v or sample prediction,
    named explicitly since the default is whatever the base folder's scheduler says."""
    if config.zero_terminal_snr and config.prediction_type not in ZERO_SNR_PREDICTIONS:
        raise SettingError(
            f"--zero-terminal-snr needs --prediction-type {' or '.join(ZERO_SNR_PREDICTIONS)}: "
            "epsilon prediction is undefined at zero signal (got "
            f"{config.prediction_type or 'the scheduler default'})"
        )


# The per-stage multi-source fields of `StageTrainConfig`'s subclasses (their help names the stage).
def manifests_setting(what: str):
    return setting(
        (),
        f"{what} written by prep (local path or fsspec URL); several are mixed, sample by sample, by a "
        "seeded draw with --manifest-weights (required, no default)",
    )


def init_from_setting(command: str):
    return setting(
        None,
        f"start from the weights of this finished {command} run (its saved pipeline), with a new optimiser, "
        "LR schedule and step count: pretrain on some manifests, then fine-tune on others",
    )


def cache_latents_setting(images: str):
    return setting(False, f"VAE-encode every {images} once and train from the cached posteriors")


def latent_cache_dir_setting():
    return setting(None, "where to keep the latent cache (default RUN/latent_cache)")


def latent_cache_root(config) -> str:
    """Where a run with ``cache_latents`` keeps its cache."""
    return config.latent_cache_dir or os.path.join(config.out, "latent_cache")


def normalise_sources(config) -> None:
    """One manifest given as a string (older config.json files, the Python API) becomes a 1-tuple;
    lists read from JSON become tuples, so a config compares and serialises the same whichever way
    it came in."""
    m = config.manifest
    if isinstance(m, (str, os.PathLike)):
        m = os.fspath(m)
        config.manifest = (m,) if m else ()
    elif isinstance(m, (list, tuple)):
        config.manifest = tuple(os.fspath(x) if isinstance(x, os.PathLike) else x for x in m)
    if isinstance(config.manifest_weights, list):
        config.manifest_weights = tuple(config.manifest_weights)
    if isinstance(config.init_from, os.PathLike):
        config.init_from = os.fspath(config.init_from)


@dataclass
class StageTrainConfig(TrainConfig):
    """The settings both diffusion stages train with (`HandTrainConfig`, `BodyTrainConfig`), declared
    once; each stage adds its own ``manifest``, ``init_from``, ``out``, ``pretrained`` and ``resolution``."""

    learning_rate: float | None = setting(
        None, "peak learning rate (default: 1e-3 for --preset tiny, 1e-5 for sd)", gt=0, le=10
    )
    manifest_weights: tuple[float, ...] | None = setting(
        None,
        "sampling weight of each --manifest, in order (default: their sizes, so each sample is seen once "
        "per epoch)",
        gt=0,
        le=1e9,
    )
    preset: str | None = setting(
        None,
        "only to build from nothing: tiny (small random components, CPU friendly) or mini (from-scratch "
        "sizes). Default: what --pretrained is (a Stable Diffusion folder or Hub id: sd; a train-vae run: "
        "mini), else tiny; a --preset that contradicts --pretrained is an error",
        choices=("tiny", "mini", "sd"),
    )
    allow_download: bool = setting(
        False,
        "fetch a --pretrained / --init-controlnet Hub id that is not in the local Hugging Face cache "
        "(default: only the cache is read, so HF_HUB_OFFLINE=1 runs work)",
    )
    prediction_type: str | None = setting(
        None,
        "what the UNet predicts (default: the scheduler's)",
        choices=("epsilon", "v_prediction", "sample"),
    )
    zero_terminal_snr: bool = setting(
        False,
        "rescale the noise schedule to zero signal at the last timestep and sample with trailing timesteps, "
        "so the starting noise cannot set the image's brightness (needs --prediction-type v_prediction)",
    )
    text_dropout: float = setting(0.1, "probability of training with an empty caption (text CFG)", ge=0, lt=1)
    caption: str = setting(
        "generated",
        "the caption to train on: generated (prep's, from the label and the hands), source (the source's own, "
        "e.g. img2dataset's text; a row without one uses the generated caption, counted in the log) or both",
        choices=CAPTION_CHOICES,
    )
    shuffle_window: int = setting(4, "row groups whose rows are shuffled together", ge=1)
    validation_steps: int = setting(20, "denoising steps for validation images", ge=1, le=1000)
    sampler: str = setting(
        "ddim", "scheduler saved with the final pipeline: ddim or ddpm", choices=("ddim", "ddpm")
    )

    def __post_init__(self):
        normalise_sources(self)
        if not self.init_from:  # an --init-from run's preset is the run's (`resolve`)
            self.preset = preset_for(self.preset, self.pretrained)

    def resolve(self):
        """`TrainConfig.resolve`, with the preset ``--pretrained`` implies (`preset_for`) when not
        started from another run."""
        self.preset = preset_for(self.preset, self.pretrained)
        return super().resolve()

    def validate(self) -> StageTrainConfig:
        super().validate()
        check_manifest_and_weights(self)
        check_noise_schedule(self)
        return self
