"""CPU bf16 training keeps attention in float32 (`generation.models.attention`), and the trainer uses it."""

import logging

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from safetensors.torch import load_file

from generation.cli import main
from generation.models.attention import Float32AttnProcessor, use_float32_attention
from generation.models.loading import build_components


def _attention(processor=None) -> Attention:
    torch.manual_seed(0)
    layer = Attention(query_dim=32, cross_attention_dim=16, heads=4, dim_head=8)
    if processor is not None:
        layer.set_processor(processor)
    return layer


def test_float32_attention_under_cpu_bf16_autocast_matches_float32():
    x, context = torch.randn(2, 50, 32), torch.randn(2, 7, 16)
    reference = _attention()(x, context)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        default = _attention()(x, context)
        kept = _attention(Float32AttnProcessor())(x, context)
    assert default.dtype == torch.bfloat16 and (default.float() - reference).abs().max() > 1e-3
    assert kept.dtype == torch.float32
    torch.testing.assert_close(kept, reference, rtol=1e-5, atol=1e-6)


def test_float32_attention_takes_bf16_inputs_and_gradients_reach_the_weights():
    layer = _attention(Float32AttnProcessor())
    x = torch.randn(1, 16, 32, dtype=torch.bfloat16, requires_grad=True)
    context = torch.randn(1, 7, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x, context).sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.to_q.parameters())


def test_use_float32_attention_sets_every_attention_layer_of_a_unet():
    unet = build_components("tiny", resolution=64, seed=0).unet
    expected = sum(isinstance(m, Attention) for m in unet.modules())
    assert expected > 0 and use_float32_attention(unet) == expected
    assert all(isinstance(p, Float32AttnProcessor) for p in unet.attn_processors.values())
    assert use_float32_attention(unet, enabled=False) == expected
    assert all(type(p) is AttnProcessor2_0 for p in unet.attn_processors.values())


@pytest.mark.parametrize("precision, kept", [("bf16", True), ("fp32", False)])
def test_cpu_bf16_training_keeps_attention_float32_and_saves_float32_weights(
    tmp_path, synthetic_manifest, caplog, precision, kept
):
    out = tmp_path / "vae"
    args = ["train-vae", "--preset", "tiny", "--manifest", str(synthetic_manifest), "--out", str(out)]
    args += ["--steps", "2", "--batch-size", "2", "--image-resolution", "64", "--num-validation-crops", "1"]
    args += ["--checkpoint-every", "0", "--validate-every", "0", "--precision", precision]
    with caplog.at_level(logging.INFO, logger="generation.training.loop"):
        assert main(args) == 0
    assert any("attention layers kept in float32" in r.getMessage() for r in caplog.records) is kept
    weights = load_file(str(out / "vae" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
