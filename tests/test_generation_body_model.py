"""The body outpainter's ControlNet on a frozen SD UNet: initialisation, base kinds, trainable parts."""

import pytest
import torch

from generation.models.body import (
    BASE_KINDS,
    build_body_model,
    embedding_channels_for,
    fit_base_unet,
    model_input,
    predict_noise,
)
from generation.models.loading import ModelFolderError, build_components
from generation.pipelines.condition import ConditionConfig, conditioning_channels


def _inputs(in_channels: int, cond_channels: int = 7, res: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, in_channels, res // 8, res // 8, generator=g)
    cond = torch.rand(2, cond_channels, res, res, generator=g)
    text = torch.randn(2, 77, 32, generator=g)
    return latents, torch.tensor([10, 700]), text, cond


@pytest.mark.parametrize("kind", sorted(BASE_KINDS))
def test_from_unet_controlnet_adds_exactly_nothing_at_step_zero(kind):
    torch.manual_seed(0)
    comps = build_components("tiny", resolution=64)
    controlnet = build_body_model(comps, kind)
    unet = comps.unet
    assert controlnet.config.conditioning_channels == 7
    assert controlnet.config.in_channels == unet.config.in_channels == BASE_KINDS[kind].in_channels(4)
    # The copied encoder really is the UNet's, not a fresh init.
    assert torch.equal(controlnet.conv_in.weight, unet.conv_in.weight)
    sample, t, text, cond = _inputs(unet.config.in_channels)
    with torch.no_grad():
        down, mid = controlnet(sample, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
        assert len(down) > 0
        assert all(torch.count_nonzero(r) == 0 for r in down) and torch.count_nonzero(mid) == 0
        with_cn = predict_noise(unet, controlnet, sample, t, text, cond)
        alone = unet(sample, t, encoder_hidden_states=text).sample
    assert torch.equal(with_cn, alone)
    assert with_cn.shape == (2, 4, 8, 8)


def test_controlnet_is_not_a_no_op_once_its_zero_convs_move():
    torch.manual_seed(0)
    comps = build_components("tiny", resolution=64)
    controlnet = build_body_model(comps)
    with torch.no_grad():
        # Only the zero convolutions stand between the condition and the prediction.
        zero_convs = [
            *controlnet.controlnet_down_blocks,
            controlnet.controlnet_mid_block,
            controlnet.controlnet_cond_embedding.conv_out,
        ]
        for conv in zero_convs:
            conv.weight.normal_(0, 0.02)
    sample, t, text, cond = _inputs(4)
    with torch.no_grad():
        a = predict_noise(comps.unet, controlnet, sample, t, text, cond)
        b = predict_noise(comps.unet, controlnet, sample, t, text, torch.zeros_like(cond))
    assert not torch.allclose(a, b)


def _first_gradient(controlnet, unet, cond) -> torch.Tensor:
    """The gradient of one noise-MSE step on the ControlNet's zero convolutions, for condition `cond`."""
    controlnet.zero_grad()
    sample, t, text, _ = _inputs(4, seed=1)
    target = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    loss = ((predict_noise(unet, controlnet, sample, t, text, cond) - target) ** 2).mean()
    loss.backward()
    return torch.cat([b.weight.grad.flatten() for b in controlnet.controlnet_down_blocks])


def test_the_condition_shapes_the_first_training_step():
    """A fresh ControlNet must learn from its condition at once: its zero convolutions' first gradient
    differs between two condition images (while the prediction at step 0 is still the base UNet's)."""
    torch.manual_seed(0)
    comps = build_components("tiny", resolution=64)
    controlnet = build_body_model(comps)
    _, _, _, cond = _inputs(4, seed=3)
    other = torch.roll(cond, shifts=16, dims=-1)
    with torch.no_grad():
        sample, t, text, _ = _inputs(4, seed=1)
        same = [predict_noise(comps.unet, controlnet, sample, t, text, c) for c in (cond, other)]
    assert torch.equal(*same)
    a, b = _first_gradient(controlnet, comps.unet, cond), _first_gradient(controlnet, comps.unet, other)
    assert a.abs().sum() > 0
    assert (a - b).abs().max() > 1e-3 * a.abs().max()


def test_a_zero_condition_embedding_leaves_the_first_step_blind_to_the_condition():
    """diffusers' initialisation (the embedding's last conv at zero), kept as a setting: the first
    gradient is the same whatever the condition."""
    torch.manual_seed(0)
    comps = build_components("tiny", resolution=64)
    controlnet = build_body_model(comps, condition_embedding_init="zero")
    _, _, _, cond = _inputs(4, seed=3)
    a = _first_gradient(controlnet, comps.unet, cond)
    b = _first_gradient(controlnet, comps.unet, torch.roll(cond, shifts=16, dims=-1))
    assert a.abs().sum() > 0 and torch.equal(a, b)
    with pytest.raises(ValueError, match="condition embedding init"):
        build_body_model(comps, condition_embedding_init="ones")


def test_condition_config_sets_the_controlnet_input_width():
    comps = build_components("tiny", resolution=64)
    cfg = ConditionConfig(channels=("pose", "mask"))
    assert (
        build_body_model(comps, condition_config=cfg).config.conditioning_channels
        == conditioning_channels(cfg)
        == 4
    )


def test_embedding_downsamples_by_the_vae_factor():
    assert embedding_channels_for(8) == (16, 32, 96, 256)
    assert embedding_channels_for(2) == (16, 32)
    with pytest.raises(ValueError, match="not a power of two"):
        embedding_channels_for(6)


def test_inpainting_needs_inpainting_weights_for_a_loaded_base():
    comps = build_components("tiny", resolution=64)
    comps.source = "/models/stable-diffusion-v1-5"  # as if loaded: fit_base_unet must not rebuild it
    with pytest.raises(
        ValueError,
        match=r"base UNet has 4 input channels but base kind 'inpainting' needs 9 .*inpainting weights",
    ):
        fit_base_unet(comps, "inpainting")
    with pytest.raises(ValueError, match="unknown base kind 'depth'"):
        fit_base_unet(comps, "depth")


def test_inpainting_input_is_latents_mask_masked_latents_in_diffusers_order():
    latents, mask, masked = (
        torch.full((1, 4, 2, 2), 1.0),
        torch.full((1, 1, 2, 2), 2.0),
        torch.full((1, 4, 2, 2), 3.0),
    )
    x = model_input(BASE_KINDS["inpainting"], latents, (mask, masked))
    assert x.shape == (1, 9, 2, 2) and x[0, :, 0, 0].tolist() == [1] * 4 + [2] + [3] * 4
    assert model_input(BASE_KINDS["standard"], latents, None) is latents
    with pytest.raises(ValueError, match="inpainting base needs"):
        model_input(BASE_KINDS["inpainting"], latents, None)


@pytest.mark.parametrize("train_base_unet", [False, True])
def test_base_unet_frozen_unless_asked(train_base_unet, tmp_path):
    from accelerate import Accelerator

    from generation.training.body import BodyTask
    from generation.training.body_config import BodyTrainConfig

    task = BodyTask(BodyTrainConfig(manifest="m", out=str(tmp_path / "r"), train_base_unet=train_base_unet))
    task.build(Accelerator(cpu=True))
    trainable = {id(p) for p in task.trainable().parameters() if p.requires_grad}
    controlnet = task.trainable().controlnet if train_base_unet else task.trainable()
    expected = {id(p) for p in controlnet.parameters()}
    if train_base_unet:
        expected |= {id(p) for p in task.unet.parameters()}
    assert trainable == expected
    frozen = [task.vae, task.text_encoder] + ([] if train_base_unet else [task.unet])
    assert not any(p.requires_grad for m in frozen for p in m.parameters())


def test_missing_base_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFolderError, match="not found"):
        build_components("sd", pretrained=str(tmp_path / "no-such-sd"))
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(ModelFolderError, match=r"lacks subfolder\(s\)"):
        build_components("sd", pretrained=str(tmp_path / "half"))


def _pretrained_openpose(tmp_path, unet, seed: int = 1) -> str:
    """A 3-channel ControlNet for `unet` whose every weight (zero convolutions too) is non-zero, saved
    as a diffusers folder: the stand-in for control_v11p_sd15_openpose."""
    from generation.models.body import controlnet_from_unet

    source = controlnet_from_unet(unet, conditioning_channels=3, scale_factor=8)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in source.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    source.save_pretrained(str(tmp_path / "openpose"))
    return str(tmp_path / "openpose")


def test_a_pretrained_controlnet_is_widened_and_unchanged_with_the_hand_channels_at_zero(tmp_path):
    from diffusers import ControlNetModel

    from generation.models.body import controlnet_from_pretrained
    from generation.pipelines.condition import channel_slices

    comps = build_components("tiny", resolution=64)
    path = _pretrained_openpose(tmp_path, comps.unet)
    source = ControlNetModel.from_pretrained(path)
    widened = controlnet_from_pretrained(path, comps.unet, ConditionConfig())
    assert widened.config.conditioning_channels == conditioning_channels(ConditionConfig()) == 7
    sample, t, text, cond = _inputs(4, cond_channels=7)
    pose = channel_slices(ConditionConfig())["pose"]
    cond[:, pose.stop :] = 0  # hand pixels and mask at zero
    with torch.no_grad():
        down_w, mid_w = widened(
            sample, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False
        )
        down_s, mid_s = source(
            sample, t, encoder_hidden_states=text, controlnet_cond=cond[:, pose], return_dict=False
        )
    assert mid_s.abs().max() > 1e-3  # the source really adds something
    diffs = [(a - b).abs().max().item() for a, b in zip([*down_w, mid_w], [*down_s, mid_s])]
    assert max(diffs) < 1e-5
    # The hand channels start at zero, and they are what training moves.
    conv = widened.controlnet_cond_embedding.conv_in
    assert torch.count_nonzero(conv.weight[:, pose.stop :]) == 0 and conv.weight[:, pose].abs().sum() > 0


def test_a_pretrained_controlnet_that_does_not_fit_is_a_clear_error(tmp_path):
    from generation.models.body import ControlNetInitError, controlnet_from_pretrained

    comps = build_components("tiny", resolution=64)
    path = _pretrained_openpose(tmp_path, comps.unet)
    with pytest.raises(ControlNetInitError, match="needs a 'pose' group"):
        controlnet_from_pretrained(path, comps.unet, ConditionConfig(channels=("hands", "mask")))
    inpainting = build_components("tiny", resolution=64)
    unet9 = fit_base_unet(inpainting, "inpainting")
    with pytest.raises(ControlNetInitError, match="in_channels differ"):
        controlnet_from_pretrained(path, unet9, ConditionConfig())
    with pytest.raises(ModelFolderError, match="not a diffusers ControlNet folder"):
        controlnet_from_pretrained(str(tmp_path), comps.unet, ConditionConfig())
