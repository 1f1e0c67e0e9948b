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

import inspect
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

logger = logging.getLogger(__name__)

SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
MAX_TOKENS = 4096  # longer than any CLIP text encoder's context; beyond it the length was never set

# Words the tiny tokenizer knows as whole tokens; anything else falls back to byte-level characters,
# so every caption still tokenizes.
TINY_WORDS = (
    "a", "an", "the", "of", "hand", "hands", "showing", "gesture", "left", "right", "person", "photo",
    "call", "dislike", "fist", "four", "like", "mute", "ok", "one", "palm", "peace", "rock", "stop",
    "three", "two", "up", "inverted", "grabbing", "grip", "point", "thumb", "index", "middle", "little",
)  # fmt: skip


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


class ModelFolderError(FileNotFoundError):
    """A model folder is missing or lacks a part it needs."""


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
    looks_local = os.path.isabs(path) or path.startswith(".") or path.count("/") != 1 or os.path.exists(path)
    if looks_local:
        if not os.path.isdir(path):
            raise ModelFolderError(f"{what} folder not found: {path!r} is not a directory")
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise ModelFolderError(f"{path!r} has no model_index.json: not a saved pipeline ({saved_by})")
        check_pipeline_parts(path)
    return path


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
# Tiny configs


def tiny_unet_config(sample_size: int = 8, cross_attention_dim: int = 32) -> dict:
    """A 2-level UNet2DConditionModel config (block_out_channels (32, 64)), as in diffusers' own tests."""
    return {
        "sample_size": sample_size,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }


def tiny_vae_config(sample_size: int = 64) -> dict:
    """A 4-level AutoencoderKL config: 8x downsampling and 4 latent channels, exactly like SD's VAE."""
    return {
        "sample_size": sample_size,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (32, 32, 32, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "scaling_factor": 0.18215,
    }


def mini_vae_config(sample_size: int = 64) -> dict:
    """The mini preset's VAE: SD's 8x downsampling and 4 latent channels at (32, 64, 128, 128) widths,
    3.9M parameters. At 64 px, 5000 `train-vae` steps (batch 8, L1 + edge loss, about 19 minutes on an
    idle 2-core CPU) reconstruct the 46 hagrid_mini hand crops at 30.3 dB PSNR (bench/learns.py)."""
    return {**tiny_vae_config(sample_size), "block_out_channels": (32, 64, 128, 128)}


def mini_unet_config(sample_size: int = 8, cross_attention_dim: int = 64) -> dict:
    """The mini preset's UNet: 3 levels (64, 128, 128), 2 layers per block, cross-attention on the two
    finer levels, 8.6M parameters. A training step of batch 8 on 8x8
    latents takes about 0.1 s on two CPU cores, so thousands of steps fit in the stage-1 budget."""
    return {
        **tiny_unet_config(sample_size, cross_attention_dim),
        "block_out_channels": (64, 128, 128),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    }


def tiny_text_config(
    vocab_size: int, bos_token_id: int, eos_token_id: int, hidden_size: int = 32
) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=hidden_size,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
    )


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


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte maps to a printable unicode character."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_tiny_tokenizer_files(folder: str, words=TINY_WORDS) -> tuple[str, str]:
    """Write a small CLIP BPE ``vocab.json`` and ``merges.txt`` into `folder`; return their paths.

    The vocabulary is the 256 byte-level characters (plain and word-final), one merge chain per word
    in `words`, and the start / end tokens, about 600 entries.
    """
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            merges.append(f"{symbols[0]} {symbols[1]}")
            merged = symbols[0] + symbols[1]
            if merged not in vocab:
                vocab.append(merged)
            symbols = [merged] + symbols[2:]
    merges = list(dict.fromkeys(merges))
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    vocab_path, merges_path = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f)
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_path, merges_path


def tiny_tokenizer(folder: str | None = None) -> CLIPTokenizer:
    """A CLIPTokenizer over the tiny vocabulary (files written to `folder`, or a temporary folder).

    transformers 5 ignores ``vocab_file=`` / ``merges_file=`` keywords, so the paths go positionally.
    """
    if folder is None:
        with tempfile.TemporaryDirectory() as tmp:
            return tiny_tokenizer(tmp)
    vocab_path, merges_path = write_tiny_tokenizer_files(folder)
    return CLIPTokenizer(vocab_path, merges_path, model_max_length=77)


# ---------------------------------------------------------------------------------------------------
# Builders, one per preset


def build_tiny(
    resolution: int = 64,
    prediction_type: str | None = None,
    seed: int = 0,
    zero_terminal_snr: bool = False,
    **_,
) -> SDComponents:
    """Randomly initialised small components for `resolution`-pixel images (a multiple of 8)."""
    if resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8 (the VAE's downsampling), got {resolution}")
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(
        tiny_text_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    )
    vae = AutoencoderKL.from_config(tiny_vae_config(resolution))
    unet = UNet2DConditionModel.from_config(
        tiny_unet_config(resolution // 8, cross_attention_dim=text_encoder.config.hidden_size)
    )
    scheduler = DDPMScheduler.from_config(
        scheduler_config(), **noise_schedule_overrides(prediction_type, zero_terminal_snr)
    )
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler, source="tiny")


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
    if resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8 (the VAE's downsampling), got {resolution}")
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(
        tiny_text_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, hidden_size=64)
    )
    vae = AutoencoderKL.from_config(mini_vae_config(resolution))
    unet = UNet2DConditionModel.from_config(
        mini_unet_config(resolution // 8, cross_attention_dim=text_encoder.config.hidden_size)
    )
    scheduler = DDPMScheduler.from_config(
        scheduler_config(), **noise_schedule_overrides(prediction_type, zero_terminal_snr)
    )
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler, source="mini")


PRESETS: dict[str, Callable[..., SDComponents]] = {"tiny": build_tiny, "mini": build_mini, "sd": build_sd}


def build_components(preset: str = "tiny", **kwargs) -> SDComponents:
    """Components for `preset` ("tiny", "mini" or "sd"); kwargs go to the preset's builder.

    >>> c = build_components("tiny", resolution=64)
    >>> c = build_components("sd", pretrained="/models/stable-diffusion-v1-5")
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[preset](**kwargs)


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


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """(B,) captions -> (B, model_max_length) int64 token ids, padded and truncated like SD."""
    if tokenizer.model_max_length > MAX_TOKENS:  # transformers' "unset" value is 1e30
        raise ModelFolderError(
            f"the tokenizer has no usable model_max_length ({tokenizer.model_max_length}); its folder lacks "
            "tokenizer_config.json (SD's CLIP tokenizer has 77)"
        )
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def encode_text(tokenizer, text_encoder, prompts: list[str], device=None) -> torch.Tensor:
    """(B,) captions -> (B, 77, D) last hidden states of the CLIP text encoder (SD's conditioning)."""
    device = device or text_encoder.device
    ids = tokenize(tokenizer, prompts).to(device)
    return text_encoder(ids)[0]


def sd15_unet_config() -> dict:
    """Stable Diffusion 1.5's UNet architecture (860M parameters), for benchmarks with random weights."""
    return {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }


def save_components(components: SDComponents, folder: str) -> str:
    """Write `components` as a diffusers Stable Diffusion folder (unet/, vae/, text_encoder/, tokenizer/,
    scheduler/), loadable with ``build_components("sd", pretrained=folder)``; e.g. a tiny stand-in
    for a real checkpoint in tests and demos."""
    for name in SD_SUBFOLDERS:
        getattr(components, name).save_pretrained(os.path.join(folder, name))
    return folder
