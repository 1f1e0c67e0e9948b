"""Preset model configs: the tiny and mini architectures (random weights) and SD 1.5's UNet.

- ``tiny``: UNet block_out_channels (32, 64), a 4-level VAE so latents are 1/8 of the pixels as in SD, a
  2-layer CLIP text encoder and a tiny byte-level BPE tokenizer written to a local folder at run time.
  Tests, the demo and CI use it; a training step takes a fraction of a second on a CPU.
- ``mini``: larger from-scratch components sized so that the whole chain (`train-vae`, then stage 1
  and stage 2 from its folder) learns on a 2-core CPU in about an hour.

`generation.models.loading` builds the components from these configs.
"""

from __future__ import annotations

import json
import os
import tempfile

from transformers import CLIPTextConfig, CLIPTokenizer

# Words the tiny tokenizer knows as whole tokens; anything else falls back to byte-level characters,
# so every caption still tokenizes.
TINY_WORDS = (
    "a", "an", "the", "of", "hand", "hands", "showing", "gesture", "left", "right", "person", "photo",
    "call", "dislike", "fist", "four", "like", "mute", "ok", "one", "palm", "peace", "rock", "stop",
    "three", "two", "up", "inverted", "grabbing", "grip", "point", "thumb", "index", "middle", "little",
)  # fmt: skip


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
