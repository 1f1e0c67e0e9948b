"""Attention that keeps float32 under CPU bfloat16 autocast.

On CPUs with bfloat16 matrix units (AMX), `--precision bf16` roughly halves the time of a convolution,
but PyTorch's CPU flash attention is several times slower in bfloat16 than in float32 (its backward
most of all: 4.5x at 400 tokens and head size 8, the mini stage-2 UNet's first level). So a CPU bf16
run keeps attention, projections included, in float32 and autocasts the rest; see `bench/cpu_precision.py`.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


def upcast(x):
    """A floating-point tensor as float32; anything else (None, integer masks) as it is."""
    return x.float() if torch.is_tensor(x) and x.is_floating_point() else x


class Float32AttnProcessor(AttnProcessor2_0):
    """`AttnProcessor2_0` with autocast off: float32 inputs, weights and (B, N, C) float32 output."""

    def __call__(
        self,
        attn: Attention,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        with torch.autocast(hidden_states.device.type, enabled=False):
            return super().__call__(
                attn,
                upcast(hidden_states),
                upcast(encoder_hidden_states),
                upcast(attention_mask),
                upcast(temb),
                *args,
                **kwargs,
            )


def use_float32_attention(model: torch.nn.Module, enabled: bool = True) -> int:
    """Give every diffusers `Attention` in `model` a `Float32AttnProcessor` (with `enabled` False,
    diffusers' default `AttnProcessor2_0` back); the number of layers set."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for layer in layers:
        layer.set_processor(Float32AttnProcessor() if enabled else AttnProcessor2_0())
    return len(layers)
