"""Stable Diffusion components (UNet, VAE, text encoder, tokenizer, scheduler), tiny or full size.

There is one code path. A *preset* only decides where the components come from:

- ``sd``: a local diffusers folder of a Stable Diffusion checkpoint (``unet/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/``), loaded with ``from_pretrained(path, subfolder=...)``.
- ``tiny``: the same diffusers / transformers classes built from small configs with random weights
  (UNet block_out_channels (32, 64), a 4-level VAE so latents are 1/8 of the pixels as in SD, a 2-layer
  CLIP text encoder and a tiny byte-level BPE tokenizer written to a local folder at run time). Tests,
  the demo and CI use it; a training step takes a fraction of a second on a CPU.
- ``mini``: larger from-scratch components sized so that the whole chain (`train-vae`, then stage 1
  and stage 2 from its folder) learns on a 2-core CPU in about an hour (`mini_vae_config`,
  `mini_unet_config`). With ``pretrained`` it loads that folder, so ``--preset mini --pretrained RUN``
  starts stage 1 or 2 from a `train-vae` run with the mini learning rate and resolution.

Everything downstream (model widening, training, pipelines) sees the same `SDComponents` either way.
Stage 1 (hands) and stage 2 (body) both build from here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from .errors import ModelFolderError
from .hub import looks_like_hub_id
from .presets import (
    mini_unet_config,
    mini_vae_config,
    tiny_text_config,
    tiny_tokenizer,
    tiny_unet_config,
    tiny_vae_config,
)
from .schedulers import noise_schedule_overrides, scheduler_config

logger = logging.getLogger(__name__)


SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class SDComponents:
    """The five parts of a latent diffusion model, as diffusers / transformers objects.

    - unet: `UNet2DConditionModel` (4 latent channels in and out for SD, before any widening).
    - vae: `AutoencoderKL`; latents are ``vae.config.scaling_factor * vae.encode(x).latent_dist.sample()``.
    - text_encoder: `CLIPTextModel`; tokenizer: `CLIPTokenizer` with ``model_max_length`` 77.
    - scheduler: `DDPMScheduler` for training (sampling pipelines convert it with ``from_config``).
    - source: "tiny" or the folder the weights came from, recorded in run configs.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDPMScheduler
    source: str

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def check_model_folder(path: str, subfolders=SD_SUBFOLDERS, what: str = "Stable Diffusion folder") -> str:
    """Raise `ModelFolderError` naming `path` and every missing subfolder; return the path."""
    if not path:
        raise ModelFolderError(
            f"no {what} given: pass --pretrained PATH (a local diffusers folder) or use --preset tiny"
        )
    if not os.path.isdir(path):
        raise ModelFolderError(f"{what} not found: {path!r} is not a directory")
    missing = [s for s in subfolders if not os.path.isdir(os.path.join(path, s))]
    if missing:
        raise ModelFolderError(
            f"{what} {path!r} lacks subfolder(s) {missing}; expected a diffusers layout with {list(subfolders)}"
        )
    return path


# Weight files that torch unpickles; a saved pipeline part must hold safetensors instead.
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_saved_pipeline(path, what: str, saved_by: str) -> str:
    """The folder a pipeline's `from_pretrained` is about to read, as a str; a clear `ModelFolderError`
    when it is a local path that is not a directory (``"{what} folder not found"``) or has no
    model_index.json (the message names `saved_by`, what writes such a folder).

    A string that looks like a Hub id (``org/name``, not existing locally) is returned unchecked, so the
    ordinary diffusers loading path still handles it."""
    path = os.fspath(path)
    if not looks_like_hub_id(path):
        if not os.path.isdir(path):
            raise ModelFolderError(f"{what} folder not found: {path!r} is not a directory")
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise ModelFolderError(f"{path!r} has no model_index.json: not a saved pipeline ({saved_by})")
        check_pipeline_parts(path)
    return path


class CheckedFromPretrained:
    """A diffusers pipeline mixin: `from_pretrained` checks a local folder first (`check_saved_pipeline`),
    so a missing or incomplete folder is one clear error. The class names what it loads in
    ``folder_kind`` and what writes such a folder in ``saved_by``."""

    folder_kind: str = "pipeline"
    saved_by: str = "written by save_pretrained"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved pipeline; a missing local folder is a clear error."""
        path = check_saved_pipeline(pretrained_model_name_or_path, cls.folder_kind, cls.saved_by)
        return super().from_pretrained(path, **kwargs)


def pipeline_parts(index_file: str) -> list[str]:
    """The component subfolder names a saved pipeline's model_index.json lists (its non-null
    ``[library, class]`` entries); `ModelFolderError` when the file is unreadable."""
    try:
        with open(index_file, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{index_file}: not a readable model_index.json ({exc})") from None
    if not isinstance(index, dict):
        raise ModelFolderError(f"{index_file}: expected a JSON object, got {type(index).__name__}")
    return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and None not in v]


def check_pipeline_parts(path: str) -> None:
    """Every component model_index.json lists must have a non-empty subfolder: diffusers would
    otherwise build some parts from nothing (a tokenizer without a vocabulary or length limit) and fail
    much later with an unrelated error."""
    parts = pipeline_parts(os.path.join(path, "model_index.json"))
    folders = {k: os.path.join(path, k) for k in parts}
    missing = [k for k, folder in folders.items() if not os.path.isdir(folder) or not os.listdir(folder)]
    if missing:
        raise ModelFolderError(
            f"{path!r} lacks the part(s) {missing} that its model_index.json lists (missing or empty "
            "subfolder): the saved pipeline is incomplete; copy the whole folder again"
        )
    for part, folder in folders.items():
        names = os.listdir(folder)
        pickled = sorted(n for n in names if n.endswith(PICKLED_WEIGHTS))
        if pickled and not any(n.endswith(".safetensors") for n in names):
            raise ModelFolderError(
                f"{path!r}: its {part} holds pickled weights ({pickled[0]}) and no .safetensors; only "
                "safetensors weights are loaded (a pickle can run code): convert them with safetensors first"
            )


# ---------------------------------------------------------------------------------------------------
# Builders, one per preset


def build_random(
    resolution: int,
    vae_config: Callable[[int], dict],
    unet_config: Callable[..., dict],
    hidden_size: int,
    source: str,
    prediction_type: str | None = None,
    seed: int = 0,
    zero_terminal_snr: bool = False,
) -> SDComponents:
    """Randomly initialised components of one preset architecture for `resolution`-pixel images."""
    if resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8 (the VAE's downsampling), got {resolution}")
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(
        tiny_text_config(
            len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, hidden_size=hidden_size
        )
    )
    vae = AutoencoderKL.from_config(vae_config(resolution))
    unet = UNet2DConditionModel.from_config(
        unet_config(resolution // 8, cross_attention_dim=text_encoder.config.hidden_size)
    )
    scheduler = DDPMScheduler.from_config(
        scheduler_config(), **noise_schedule_overrides(prediction_type, zero_terminal_snr)
    )
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler, source=source)


def build_tiny(
    resolution: int = 64,
    prediction_type: str | None = None,
    seed: int = 0,
    zero_terminal_snr: bool = False,
    **_,
) -> SDComponents:
    """Randomly initialised small components for `resolution`-pixel images (a multiple of 8)."""
    return build_random(
        resolution, tiny_vae_config, tiny_unet_config, 32, "tiny", prediction_type, seed, zero_terminal_snr
    )


def build_sd(
    pretrained: str | None = None,
    prediction_type: str | None = None,
    unet_subfolder: str = "unet",
    zero_terminal_snr: bool = False,
    **_,
) -> SDComponents:
    """Load a local Stable Diffusion folder; `prediction_type` overrides the scheduler's if given, and
    `zero_terminal_snr` rescales its schedule (`noise_schedule_overrides`)."""
    check_model_folder(
        pretrained, subfolders=("vae", "text_encoder", "tokenizer", "scheduler", unet_subfolder)
    )
    tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder=unet_subfolder)
    overrides = noise_schedule_overrides(prediction_type, zero_terminal_snr)
    scheduler = DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler", **overrides)
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler, source=os.path.abspath(pretrained))


def build_mini(
    resolution: int = 64,
    prediction_type: str | None = None,
    seed: int = 0,
    pretrained: str | None = None,
    zero_terminal_snr: bool = False,
    **kw,
) -> SDComponents:
    """The mini preset: a `train-vae` folder when `pretrained` is given (loaded like ``sd``), else
    randomly initialised mini-size components (what `train-vae` starts from)."""
    if pretrained:
        return build_sd(
            pretrained, prediction_type=prediction_type, zero_terminal_snr=zero_terminal_snr, **kw
        )
    return build_random(
        resolution, mini_vae_config, mini_unet_config, 64, "mini", prediction_type, seed, zero_terminal_snr
    )


PRESETS: dict[str, Callable[..., SDComponents]] = {"tiny": build_tiny, "mini": build_mini, "sd": build_sd}


def build_components(preset: str = "tiny", **kwargs) -> SDComponents:
    """Components for `preset` ("tiny", "mini" or "sd"); kwargs go to the preset's builder.

    >>> c = build_components("tiny", resolution=64)
    >>> c = build_components("sd", pretrained="/models/stable-diffusion-v1-5")
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[preset](**kwargs)


def dtype_argument(dtype: torch.dtype, loader=None) -> dict:
    """The ``from_pretrained`` keyword that loads in `dtype`: ``dtype`` where the installed diffusers
    takes it (newer releases deprecate ``torch_dtype``), else ``torch_dtype``. `loader` is the class
    whose ``from_pretrained`` is called (default `DiffusionPipeline`)."""
    import re

    from diffusers import DiffusionPipeline

    doc = (loader or DiffusionPipeline).from_pretrained.__doc__ or ""
    takes_dtype = re.search(r"^\s*dtype \(", doc, re.MULTILINE) is not None
    return {"dtype" if takes_dtype else "torch_dtype": dtype}


def freeze(module: torch.nn.Module, device, dtype: torch.dtype) -> torch.nn.Module:
    """Eval mode, no gradients, on `device` in `dtype` (cast only when it differs)."""
    module.requires_grad_(False).eval()
    return module.to(device) if module.dtype == dtype else module.to(device, dtype=dtype)


def record_sample_size(unet, pixels: int, vae_scale_factor: int) -> None:
    """Write the side a UNet is trained at into its config (`sample_size`, in latent pixels).

    Pipelines and `generate` draw at ``sample_size x vae_scale_factor`` by default. A base folder's
    value is the side its own training used (8 latents in a 64 px train-vae folder, 64 in SD 1.5), so a
    run at another side must replace it, or its model is sampled at a size it never saw."""
    size = pixels // vae_scale_factor
    if unet.config.sample_size != size:
        unet.register_to_config(sample_size=size)


def save_components(components: SDComponents, folder: str) -> str:
    """Write `components` as a diffusers Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/,
    scheduler/), loadable with ``build_components("sd", pretrained=folder)``; e.g. a tiny stand-in
    for a real checkpoint in tests and demos."""
    for name in SD_SUBFOLDERS:
        getattr(components, name).save_pretrained(os.path.join(folder, name))
    return folder
