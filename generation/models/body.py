"""The body outpainter's model: a diffusers `ControlNetModel` beside a frozen Stable Diffusion UNet.

The ControlNet starts as a copy of the base UNet's encoder (`ControlNetModel.from_unet`) with
zero-initialised output convolutions, so at step 0 it adds exactly nothing to the UNet. Its
conditioning embedding takes the stacked condition image of `generation.pipelines.condition` at pixel resolution.

Two base kinds (`BASE_KINDS`):
- ``standard``: a text-to-image UNet; the model input is the noisy latents (4 channels).
- ``inpainting``: a 9-channel SD-inpainting UNet; the model input is, in diffusers' order, the noisy
  latents, the repaint mask (1 = paint here, i.e. everywhere but the hands) and the latents of the
  masked image (the hand pixels, the rest grey). The ControlNet, copied from that UNet, sees the same
  9-channel input.

`predict_noise` is the single forward pass used by both training and the pipeline's denoising loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel

log = logging.getLogger(__name__)

# The conditioning embedding downsamples by 2 per entry after the first; ControlNet's default
# (16, 32, 96, 256) matches SD's VAE factor of 8. Smaller VAEs (tiny test models) take a prefix.
_EMBEDDING_CHANNELS = (16, 32, 96, 256)


@dataclass(frozen=True)
class BaseKind:
    """How a base UNet's input is assembled from the latents; `in_channels(latent_channels)`."""

    name: str
    extra_channels: int  # beyond the noisy latents
    takes_masked_image: bool

    def in_channels(self, latent_channels: int) -> int:
        return latent_channels + self.extra_channels


BASE_KINDS = {
    "standard": BaseKind("standard", 0, False),
    # latents (4) + repaint mask (1) + masked-image latents (4)
    "inpainting": BaseKind("inpainting", 5, True),
}


def base_kind(name: str) -> BaseKind:
    try:
        return BASE_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown base kind {name!r}; expected one of {sorted(BASE_KINDS)}") from None


def infer_base_kind(unet: UNet2DConditionModel, latent_channels: int) -> BaseKind:
    """The base kind whose input width matches `unet.config.in_channels`, or a clear error."""
    for kind in BASE_KINDS.values():
        if kind.in_channels(latent_channels) == unet.config.in_channels:
            return kind
    expected = {k.name: k.in_channels(latent_channels) for k in BASE_KINDS.values()}
    raise ValueError(
        f"base UNet takes {unet.config.in_channels} input channels, which matches no base kind for "
        f"{latent_channels}-channel latents (expected {expected})"
    )


def check_base_unet(unet: UNet2DConditionModel, kind: str, latent_channels: int) -> None:
    """Refuse a UNet whose input width does not fit `kind` (e.g. inpainting asked, 4-channel weights given)."""
    want = base_kind(kind).in_channels(latent_channels)
    if unet.config.in_channels != want:
        hint = (
            " (inpainting needs SD-inpainting weights, e.g. a folder of stable-diffusion-inpainting)"
            if kind == "inpainting"
            else ""
        )
        raise ValueError(
            f"base UNet has {unet.config.in_channels} input channels but base kind {kind!r} needs {want}{hint}"
        )


def vae_scale_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def embedding_channels_for(scale_factor: int) -> tuple[int, ...]:
    """ControlNet conditioning-embedding widths that downsample pixels by exactly `scale_factor`."""
    steps = int(round(math.log2(scale_factor)))
    if 2**steps != scale_factor or not 0 <= steps < len(_EMBEDDING_CHANNELS):
        raise ValueError(
            f"VAE scale factor {scale_factor} is not a power of two up to {2 ** (len(_EMBEDDING_CHANNELS) - 1)}"
        )
    return _EMBEDDING_CHANNELS[: steps + 1]


def _zero_last_conv(embedding) -> None:
    torch.nn.init.zeros_(embedding.conv_out.weight)
    torch.nn.init.zeros_(embedding.conv_out.bias)


def _kaiming_embedding(embedding) -> None:
    """Every convolution of the embedding Kaiming-normal for its SiLUs (fan-in, ReLU gain), biases zero."""
    for conv in (embedding.conv_in, *embedding.blocks, embedding.conv_out):
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        torch.nn.init.zeros_(conv.bias)


# How a new ControlNet's conditioning embedding (the convolutions from the condition image to the
# ControlNet's first features) starts. Either way the zero convolutions (the ControlNet's outputs) start
# at zero, so at step 0 the base UNet's prediction is unchanged.
# - ``zero``: diffusers' and the ControlNet paper's: PyTorch's default initialisation, last conv at zero.
#   The condition image is mostly black, so the default biases swamp it and each layer shrinks it: with
#   that last conv randomised, two different conditions differ by 1e-5 of the features they are added
#   to, and with it at zero the condition's first gradient is second order. A ControlNet trained beside a
#   from-scratch base (300 steps overfitting 4 images) learned to ignore its condition: swapping it
#   moved the residuals by 1e-4 of their size, and every image came out the same.
# - ``kaiming``: scale-keeping (`_kaiming_embedding`): two conditions differ by 6% of those features,
#   and the zero convolutions' first gradient already depends on the condition.
CONDITION_EMBEDDING_INITS: dict[str, Callable] = {"zero": _zero_last_conv, "kaiming": _kaiming_embedding}


def controlnet_from_unet(
    unet: UNet2DConditionModel,
    conditioning_channels: int,
    scale_factor: int = 8,
    condition_embedding_init: str = "kaiming",
) -> ControlNetModel:
    """`ControlNetModel.from_unet` with the encoder weights copied and the zero convolutions at zero;
    the conditioning embedding starts per `condition_embedding_init`
    (`CONDITION_EMBEDDING_INITS`)."""
    if condition_embedding_init not in CONDITION_EMBEDDING_INITS:
        raise ValueError(
            f"unknown condition embedding init {condition_embedding_init!r}; "
            f"expected one of {sorted(CONDITION_EMBEDDING_INITS)}"
        )
    controlnet = ControlNetModel.from_unet(
        unet,
        conditioning_channels=conditioning_channels,
        conditioning_embedding_out_channels=embedding_channels_for(scale_factor),
        load_weights_from_unet=True,
    )
    with torch.no_grad():
        CONDITION_EMBEDDING_INITS[condition_embedding_init](controlnet.controlnet_cond_embedding)
    return controlnet


def fit_base_unet(components, kind: str) -> UNet2DConditionModel:
    """Make `components.unet` fit base `kind` and return it.

    Randomly initialised (tiny) components get a fresh UNet of the right input width; loaded weights
    are only checked, because widening a text-to-image UNet does not make an inpainting model.
    """
    latent_channels = components.vae.config.latent_channels
    want = base_kind(kind).in_channels(latent_channels)
    if components.source == "tiny" and components.unet.config.in_channels != want:
        components.unet = UNet2DConditionModel.from_config({**components.unet.config, "in_channels": want})
    check_base_unet(components.unet, kind, latent_channels)
    return components.unet


def build_body_model(
    components,
    kind: str = "standard",
    condition_config=None,
    init_controlnet: str | None = None,
    condition_embedding_init: str = "kaiming",
) -> ControlNetModel:
    """Fit the base UNet to `kind` (in place) and initialise a ControlNet for the condition image: a
    copy of the UNet's encoder (its conditioning embedding per `condition_embedding_init`), or with
    `init_controlnet` a pretrained one (`controlnet_from_pretrained`)."""
    from ..pipelines.condition import conditioning_channels

    unet = fit_base_unet(components, kind)
    if init_controlnet:
        return controlnet_from_pretrained(init_controlnet, unet, condition_config)
    return controlnet_from_unet(
        unet,
        conditioning_channels(condition_config),
        vae_scale_factor(components.vae),
        condition_embedding_init,
    )


class ControlNetInitError(ValueError):
    """A pretrained ControlNet does not fit the base UNet or the condition image."""


# The config entries a ControlNet shares with the UNet it steers; a pretrained one must match them.
_SHARED_WITH_UNET = ("in_channels", "block_out_channels", "cross_attention_dim", "layers_per_block")


def controlnet_from_pretrained(
    path: str, unet: UNet2DConditionModel, condition_config=None
) -> ControlNetModel:
    """Load a local diffusers ControlNet (e.g. ``control_v11p_sd15_openpose``) to fine-tune as the body
    outpainter.

    Its conditioning embedding's first convolution is widened from the source's input channels
    (3 for OpenPose) to the condition image's (7 for pose + hands + mask). The source's channels land
    on the condition's ``pose`` group, drawn in the OpenPose style it was trained on; every new input
    channel starts at zero, so at step 0 with the hand channels at zero the residuals are exactly the
    source ControlNet's.
    """
    from ..pipelines.condition import channel_slices, conditioning_channels
    from .loading import ModelFolderError

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelFolderError(
            f"--init-controlnet {path!r} is not a diffusers ControlNet folder (no config.json)"
        )
    source = ControlNetModel.from_pretrained(path)
    mismatched = [
        k
        for k in _SHARED_WITH_UNET
        if tuple(np.atleast_1d(source.config[k])) != tuple(np.atleast_1d(unet.config[k]))
    ]
    if mismatched:
        raise ControlNetInitError(
            f"--init-controlnet {path!r} does not fit the base UNet: {', '.join(mismatched)} differ "
            "(a ControlNet is trained for one UNet architecture, e.g. SD 1.5's)"
        )
    slices = channel_slices(condition_config)
    wanted, have = conditioning_channels(condition_config), source.config.conditioning_channels
    pose = slices.get("pose")
    if pose is None or pose.stop - pose.start != have:
        raise ControlNetInitError(
            f"--init-controlnet {path!r} sees {have} condition channels; the condition image needs a 'pose' group "
            f"of that width for them (condition channels: {list(slices)})"
        )
    conv = source.controlnet_cond_embedding.conv_in
    widened = torch.nn.Conv2d(wanted, conv.out_channels, conv.kernel_size, conv.stride, conv.padding)
    with torch.no_grad():
        widened.weight.zero_()
        widened.weight[:, pose] = conv.weight
        widened.bias.copy_(conv.bias)
    source.controlnet_cond_embedding.conv_in = widened
    source.register_to_config(conditioning_channels=wanted)
    log.info(
        "ControlNet from %s: conditioning input widened %d -> %d channels (pose at %s)",
        path,
        have,
        wanted,
        pose,
    )
    return source


def repaint_mask(hand_mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) hand mask in [0, 1] -> (B, 1, h, w) SD-inpainting mask: 1 where the model paints.

    Nearest resize, as diffusers' inpainting pipeline does, then inverted: the hands are the known part.
    """
    return 1.0 - F.interpolate(hand_mask.float(), size=latent_hw, mode="nearest")


def masked_image(hand_pixels: torch.Tensor, hand_mask: torch.Tensor) -> torch.Tensor:
    """Hand pixels (B, 3, H, W) in [0, 1] -> the inpainting masked image in [-1, 1], 0 (grey) off the hands."""
    return (hand_pixels * 2.0 - 1.0) * (hand_mask > 0.5)


def model_input(
    kind: BaseKind, latents: torch.Tensor, inpaint: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """Assemble the UNet/ControlNet input: the latents, plus (mask, masked-image latents) for inpainting."""
    if not kind.takes_masked_image:
        return latents
    if inpaint is None:
        raise ValueError("an inpainting base needs the repaint mask and the masked-image latents")
    mask, masked_latents = inpaint
    return torch.cat([latents, mask.to(latents.dtype), masked_latents.to(latents.dtype)], dim=1)


def _dtype(module: torch.nn.Module) -> torch.dtype:
    # Works through wrappers (DDP) that have no `.dtype`.
    return next(module.parameters()).dtype


def predict_noise(
    unet: UNet2DConditionModel,
    controlnet: ControlNetModel,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    condition: torch.Tensor,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """One ControlNet + UNet forward: `sample` (B, in_ch, h, w) from `model_input`, condition (B, C, H, W)
    in [0, 1] with H = h * VAE factor; returns the UNet prediction (B, latent_ch, h, w) in the UNet's dtype.

    Each model gets its inputs in its own dtype, so a float32 ControlNet in training can sit beside a
    half-precision frozen UNet. Such a UNet runs outside autocast with half-precision inputs, as in
    diffusers' ControlNet training (CPU autocast refuses half-precision normalisation weights).
    """
    cdt = _dtype(controlnet)
    down, mid = controlnet(
        sample.to(cdt),
        timestep,
        encoder_hidden_states=encoder_hidden_states.to(cdt),
        controlnet_cond=condition.to(cdt),
        conditioning_scale=conditioning_scale,
        return_dict=False,
    )
    udt = _dtype(unet)
    no_autocast = (
        torch.autocast(sample.device.type, enabled=False)
        if udt != torch.float32
        else contextlib.nullcontext()
    )
    with no_autocast:
        return unet(
            sample.to(udt),
            timestep,
            encoder_hidden_states=encoder_hidden_states.to(udt),
            down_block_additional_residuals=[d.to(udt) for d in down],
            mid_block_additional_residual=mid.to(udt),
            return_dict=False,
        )[0]
