"""Checks of a base model folder from its config files alone, before a run folder is made or a weight is
loaded: the layout, latent channels, the VAE's downsampling and scaling factor, the UNet's input
channels, the text encoder's width against the UNet's cross-attention, and a ControlNet against the UNet
it is to steer.

Every failure is one `ModelFolderError` line that names the option, the folder and the value. Light:
json only, no torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from manifests.storage import filesystem, read_json

from .errors import ModelFolderError

WEIGHT_SUFFIXES = (".safetensors", ".bin")
SD_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# A ControlNet must share these with the UNet it steers (`generation.models.body.controlnet_from_pretrained`).
CONTROLNET_SHARED = ("in_channels", "block_out_channels", "cross_attention_dim", "layers_per_block")


@dataclass(frozen=True)
class BaseFacts:
    """What a run needs to know of a Stable Diffusion folder before loading it."""

    folder: str
    latent_channels: int
    vae_scale_factor: int
    scaling_factor: float
    unet_in_channels: int
    unet_sample_size: int
    unet: dict

    @property
    def native_resolution(self) -> int:
        return self.unet_sample_size * self.vae_scale_factor


def read_config(folder: str, part: str, option: str, name: str = "config.json", what: str = "model") -> dict:
    path = os.path.join(folder, part, name) if part else os.path.join(folder, name)
    try:
        data = read_json(*filesystem(path))  # regular files only, bounded: a FIFO cannot hang the check
    except FileNotFoundError:
        if not part:
            raise ModelFolderError(
                f"{option} {folder!r} is not a diffusers {what} folder (no {name})"
            ) from None
        raise ModelFolderError(
            f"{option} {folder!r}: no {os.path.join(part, name)} (not a diffusers folder)"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFolderError(
            f"{option} {folder!r}: {os.path.join(part, name)} is unreadable ({exc})"
        ) from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{option} {folder!r}: {os.path.join(part, name)} is not a JSON object")
    return data


def check_sd_folder(folder: str, option: str = "--pretrained", unet_subfolder: str = "unet") -> BaseFacts:
    """Check the layout and configs of a Stable Diffusion folder; its `BaseFacts`."""
    parts = [p if p != "unet" else unet_subfolder for p in SD_PARTS]
    missing = [p for p in parts if not os.path.isdir(os.path.join(folder, p))]
    if missing:
        raise ModelFolderError(
            f"{option} {folder!r} lacks subfolder(s) {missing}; expected a diffusers Stable Diffusion layout "
            f"with {parts}"
        )
    for part in ("vae", unet_subfolder, "text_encoder"):
        found = os.listdir(os.path.join(folder, part))
        if not any(name.endswith(WEIGHT_SUFFIXES) for name in found):
            raise ModelFolderError(
                f"{option} {folder!r}: {part}/ holds no weights file ({' or '.join(WEIGHT_SUFFIXES)}); the "
                "download or copy is incomplete"
            )
    vae = read_config(folder, "vae", option)
    unet = read_config(folder, unet_subfolder, option)
    text = read_config(folder, "text_encoder", option)
    read_config(folder, "scheduler", option, "scheduler_config.json")
    latent = vae.get("latent_channels", 4)
    scale = 2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1)
    factor = vae.get("scaling_factor", 0.18215)
    if not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise ModelFolderError(f"{option} {folder!r}: vae scaling_factor {factor!r} is not a positive number")
    if scale != 8:
        raise ModelFolderError(
            f"{option} {folder!r}: the VAE downsamples by {scale}; manifests' heatmaps and masks assume 8"
        )
    if unet.get("out_channels", latent) != latent:
        raise ModelFolderError(
            f"{option} {folder!r}: the UNet predicts {unet.get('out_channels')} channels, the VAE has {latent} "
            "latent channels"
        )
    hidden = text.get("hidden_size")
    cross = unet.get("cross_attention_dim")
    if hidden is not None and cross is not None and hidden != cross:
        raise ModelFolderError(
            f"{option} {folder!r}: the text encoder's width {hidden} is not the UNet's cross_attention_dim {cross}"
        )
    return BaseFacts(
        folder=folder,
        latent_channels=int(latent),
        vae_scale_factor=scale,
        scaling_factor=float(factor),
        unet_in_channels=int(unet.get("in_channels", 4)),
        unet_sample_size=int(unet.get("sample_size", 64) or 64),
        unet=unet,
    )


def check_unet_inputs(facts: BaseFacts, want: int, option: str, what: str) -> None:
    """The base UNet takes `want` input channels (`what` says which kind of UNet that is)."""
    if facts.unet_in_channels != want:
        raise ModelFolderError(
            f"{option} {facts.folder!r}: the UNet takes {facts.unet_in_channels} input channels; {what} needs {want}"
        )


def check_controlnet_folder(folder: str, unet: dict | None, option: str = "--init-controlnet") -> dict:
    """A diffusers ControlNet folder whose architecture fits `unet` (a UNet config; None: not checked)."""
    config = read_config(folder, "", option, what="ControlNet")
    if unet is not None:
        differ = [
            k
            for k in CONTROLNET_SHARED
            if k in config and k in unet and _as_tuple(config[k]) != _as_tuple(unet[k])
        ]
        if differ:
            raise ModelFolderError(
                f"{option} {folder!r} does not fit the base UNet: {', '.join(differ)} differ (a ControlNet is "
                "trained for one UNet architecture, e.g. SD 1.5's)"
            )
    return config


def _as_tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)
