"""Noise schedules: SD 1.x's training schedule, its per-run overrides, and the sampling schedulers."""

from __future__ import annotations

import inspect

from diffusers import DDIMScheduler, DDPMScheduler

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def scheduler_config(prediction_type: str = "epsilon", num_train_timesteps: int = 1000) -> dict:
    """SD 1.x's noise schedule (scaled linear betas 0.00085..0.012)."""
    return {
        "num_train_timesteps": num_train_timesteps,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction_type,
        "clip_sample": False,
        "steps_offset": 1,
        "set_alpha_to_one": False,
    }


def noise_schedule_overrides(prediction_type: str | None = None, zero_terminal_snr: bool = False) -> dict:
    """Scheduler-config overrides for a training run: its prediction type, and optionally a schedule
    rescaled to zero signal at the last timestep, sampled with "trailing" timesteps.

    SD's schedule keeps sqrt(alpha_bar_T) = 0.068 of the image at t = T, so a model learns to read the
    image's low frequencies (brightness, colour) from the starting noise, which at sampling time is pure
    noise: one seed then draws every image too bright or too dark (Lin et al. 2024, "Common Diffusion
    Noise Schedules and Sample Steps are Flawed"). At zero terminal SNR the first step must take them
    from the condition instead. Epsilon prediction is undefined there, so it needs v or sample
    prediction (the settings check that).
    """
    overrides = {"prediction_type": prediction_type} if prediction_type else {}
    if zero_terminal_snr:
        overrides.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return overrides


def sampling_scheduler(train_scheduler, kind: str = "ddim"):
    """A sampling scheduler sharing the training scheduler's noise schedule and prediction type."""
    kinds = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}
    if kind not in kinds:
        raise ValueError(f"unknown sampling scheduler {kind!r}; expected one of {sorted(kinds)}")
    return kinds[kind].from_config(train_scheduler.config)


def scheduler_step_kwargs(scheduler, generator, eta: float = 0.0) -> dict:
    """The extra arguments `scheduler.step` takes: ``generator`` for the stochastic samplers (DDPM's
    ancestral step draws fresh noise, which must come from the caller's seed, not the global RNG) and
    DDIM's ``eta``."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs
