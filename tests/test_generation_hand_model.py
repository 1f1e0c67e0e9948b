"""HandUNet: zero-init widening, the mask head, gradients, save/load, and shape checks."""

import pytest
import torch
import torch.nn.functional as F

from generation.models.hand import HandUNet
from generation.models.loading import build_components


@pytest.fixture(scope="module")
def base_unet():
    torch.manual_seed(0)
    unet = build_components("tiny", resolution=64).unet
    # A "pretrained" UNet has non-trivial weights everywhere, output layer included.
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return unet


def _inputs(batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 4, 8, 8, generator=g),
        torch.tensor([10, 500][:batch]),
        torch.randn(batch, 77, 32, generator=g),
        torch.rand(batch, 21, 8, 8, generator=g),
    )


@pytest.mark.parametrize("head", ["conv", "channel"])
def test_widened_unet_predicts_exactly_what_the_pretrained_one_does(base_unet, head):
    model = HandUNet.from_unet(base_unet, mask_head_type=head).eval()
    latents, t, text, heatmaps = _inputs()
    with torch.no_grad():
        expected = base_unet(latents, t, text).sample
        out = model(latents, t, text, heatmaps)
        out_other_pose = model(latents, t, text, torch.rand_like(heatmaps))
    assert model.unet.conv_in.in_channels == 4 + 21
    assert torch.equal(model.unet.conv_in.weight[:, 4:], torch.zeros_like(model.unet.conv_in.weight[:, 4:]))
    torch.testing.assert_close(out.sample, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out_other_pose.sample, expected, rtol=0, atol=1e-6)
    # The mask head starts at logit 0 (probability 0.5) everywhere, at latent resolution.
    assert out.mask_logits.shape == (2, 1, 8, 8)
    assert torch.count_nonzero(out.mask_logits) == 0


def test_gradients_reach_the_new_input_channels_and_the_mask_head(base_unet):
    torch.manual_seed(0)
    model = HandUNet.from_unet(base_unet).train()
    latents, t, text, heatmaps = _inputs()
    target = torch.ones(2, 1, 8, 8)

    def backward():
        model.zero_grad()
        out = model(latents, t, text, heatmaps)
        (out.sample.pow(2).mean() + F.binary_cross_entropy_with_logits(out.mask_logits, target)).backward()

    backward()
    new_channels = model.unet.conv_in.weight.grad[:, 4:]
    assert (new_channels.abs().flatten(1).sum(1) > 0).float().mean() > 0.9  # nearly every filter learns
    # Zero-initialised last layer: it gets the gradient first; the hidden layer follows after one step.
    last = model.mask_head[-1]
    assert last.weight.grad.abs().sum() > 0 and last.bias.grad.abs().sum() > 0
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    backward()
    for name, p in model.mask_head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_the_same_gradients(base_unet):
    latents, t, text, heatmaps = _inputs()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = HandUNet.from_unet(base_unet).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
            assert model.unet.down_blocks[0].gradient_checkpointing
        out = model(latents, t, text, heatmaps)
        (out.sample.pow(2).mean() + out.mask_logits.mean()).backward()
        grads.append(model.unet.conv_in.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_save_and_load_round_trip(base_unet, tmp_path):
    torch.manual_seed(0)
    model = HandUNet.from_unet(base_unet, heatmap_sigma=1.25).eval()
    with torch.no_grad():
        model.mask_head[-1].weight.normal_()  # make the mask head non-trivial
    model.save_pretrained(tmp_path / "unet")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = HandUNet.from_pretrained(tmp_path / "unet").eval()
    assert loaded.config.heatmap_sigma == 1.25 and loaded.config.num_keypoints == 21
    latents, t, text, heatmaps = _inputs()
    with torch.no_grad():
        a, b = model(latents, t, text, heatmaps), loaded(latents, t, text, heatmaps)
    assert torch.equal(a.sample, b.sample) and torch.equal(a.mask_logits, b.mask_logits)
    assert a.mask_logits.abs().sum() > 0


def test_shape_errors_are_clear(base_unet):
    model = HandUNet.from_unet(base_unet)
    latents, t, text, heatmaps = _inputs()
    with pytest.raises(ValueError, match=r"heatmaps must be \(B, 21, h, w\)"):
        model(latents, t, text, heatmaps[:, :20])
    with pytest.raises(ValueError, match="do not match latents"):
        model(latents, t, text, heatmaps[:, :, :4, :4])
    with pytest.raises(ValueError, match="in_channels is 4, expected"):
        HandUNet(unet_config=dict(base_unet.config))
    with pytest.raises(ValueError, match="unknown mask_head_type"):
        HandUNet.from_unet(base_unet, mask_head_type="mlp")
