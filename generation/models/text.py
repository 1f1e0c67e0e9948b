"""Text encoding: captions to CLIP token ids and to the text encoder's hidden states (SD's conditioning)."""

from __future__ import annotations

import torch

from .loading import ModelFolderError

MAX_TOKENS = 4096  # longer than any CLIP text encoder's context; beyond it the length was never set


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
