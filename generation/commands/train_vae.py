"""`handfirst-gen train-vae`: every option is a `VaeTrainConfig` field (see its help)."""

from __future__ import annotations

from ..training.vae_config import VaeTrainConfig
from . import add_training_arguments, run_training

HELP = (
    "Train a diffusers AutoencoderKL (SD layout: 8x downsampling, 4 latent channels) from scratch on a "
    "manifest's hand crops and images. The run folder gets metrics.jsonl, config.json, checkpoints/, "
    "validation/ (reconstructions) and, at the end, a Stable Diffusion folder (unet/ vae/ text_encoder/ "
    "tokenizer/ scheduler/) that train-hand and train-body load with --preset mini --pretrained RUN."
)


def add_arguments(parser) -> None:
    add_training_arguments(parser, VaeTrainConfig)


def run(args) -> int:
    from ..training.vae import train_vae

    return run_training("train-vae", VaeTrainConfig, args, train_vae)
