"""`HandUNet`: a Stable Diffusion UNet that sees hand-pose heatmaps and also predicts the hand mask.

Stage 1 of the method. The K keypoint heatmaps (one Gaussian per keypoint, at latent resolution) are
concatenated to the noisy latents, so the UNet's ``conv_in`` takes ``latent_channels + K`` channels.
`HandUNet.from_unet` widens a pretrained 4-channel UNet: the old input weights are copied and the new
ones are zero, so the widened model's noise prediction equals the pretrained one's at step 0.

The mask is read from the UNet's last decoder features (the input of ``conv_out``) by a light head
(see `MASK_HEADS`) whose last layer starts at zero: the mask logits start at 0 (probability 0.5) and
the noise prediction path is untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from manifests.geometry import DEFAULT_SIGMA

NUM_HAND_KEYPOINTS = 21


def _channel_head(channels: int, hidden: int) -> nn.Module:
    """One 3x3 convolution: the same capacity as one extra ``conv_out`` output channel."""
    return nn.Conv2d(channels, 1, kernel_size=3, padding=1)


def _conv_head(channels: int, hidden: int) -> nn.Module:
    """conv3x3 -> SiLU -> conv1x1, a little more capacity for the mask."""
    return nn.Sequential(
        nn.Conv2d(channels, hidden, kernel_size=3, padding=1), nn.SiLU(), nn.Conv2d(hidden, 1, kernel_size=1)
    )


# name -> builder(decoder_channels, hidden_channels) returning a module mapping (B, C, h, w) -> (B, 1, h, w).
MASK_HEADS: dict[str, Callable[[int, int], nn.Module]] = {"channel": _channel_head, "conv": _conv_head}


def _zero_last_conv(head: nn.Module) -> None:
    last = [m for m in head.modules() if isinstance(m, nn.Conv2d)][-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)


@dataclass
class HandUNetOutput(BaseOutput):
    """sample: (B, latent_channels, h, w) noise / v / x0 prediction; mask_logits: (B, 1, h, w) logits."""

    sample: torch.Tensor
    # Defaults to None only so the output can be rebuilt from a dict (accelerate's fp32 conversion does).
    mask_logits: torch.Tensor | None = None


class HandUNet(ModelMixin, ConfigMixin):
    """UNet2DConditionModel with heatmap input channels and a mask head.

    Config:
    - unet_config: the inner `UNet2DConditionModel` config; its ``in_channels`` must be
      ``latent_channels + num_keypoints``.
    - num_keypoints: heatmap channels K (21 for one hand).
    - latent_channels: VAE latent channels (4 for SD).
    - mask_head_type: a `MASK_HEADS` name; mask_head_channels: its hidden width ("conv" only).
    - heatmap_sigma: Gaussian sigma (heatmap pixels) the model was trained with; pipelines render raw
      keypoints with it so sampling matches training.
    - crop_margin: the margin of the square hand crops the model was trained on (prep's ``crop_margin``),
      recorded by `train-hand`; the two-stage pipeline crops the requested hands with it. None when not
      recorded.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        unet_config: dict | None = None,
        num_keypoints: int = NUM_HAND_KEYPOINTS,
        latent_channels: int = 4,
        mask_head_type: str = "conv",
        mask_head_channels: int = 32,
        heatmap_sigma: float = DEFAULT_SIGMA,
        crop_margin: float | None = None,
    ):
        super().__init__()
        if unet_config is None:
            raise ValueError(
                "HandUNet needs a unet_config (see HandUNet.from_unet to widen a pretrained UNet)"
            )
        unet_config = dict(unet_config)
        expected = latent_channels + num_keypoints
        if unet_config.get("in_channels") != expected:
            raise ValueError(
                f"unet_config in_channels is {unet_config.get('in_channels')}, expected latent_channels + "
                f"num_keypoints = {latent_channels} + {num_keypoints} = {expected}"
            )
        if mask_head_type not in MASK_HEADS:
            raise ValueError(
                f"unknown mask_head_type {mask_head_type!r}; expected one of {sorted(MASK_HEADS)}"
            )
        self.unet = UNet2DConditionModel.from_config(unet_config)
        decoder_channels = self.unet.conv_out.in_channels
        self.mask_head = MASK_HEADS[mask_head_type](decoder_channels, mask_head_channels)
        _zero_last_conv(self.mask_head)
        self._decoder_features: torch.Tensor | None = None
        # The last decoder features are the input of conv_out (after conv_norm_out and the activation).
        self.unet.conv_out.register_forward_pre_hook(self._grab_decoder_features)

    def _grab_decoder_features(self, module, args):
        self._decoder_features = args[0]

    def record_sample_size(self, size: int) -> None:
        """Record the latent side this model is trained at (what `default_size` and `generate` use)."""
        if self.config.unet_config.get("sample_size") != size:
            self.register_to_config(unet_config={**self.config.unet_config, "sample_size": size})

    def record_crop_margin(self, margin: float) -> None:
        """Record the margin of the hand crops this model is trained on (what the two-stage pipeline
        crops with)."""
        self.register_to_config(crop_margin=float(margin))

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        num_keypoints: int = NUM_HAND_KEYPOINTS,
        mask_head_type: str = "conv",
        mask_head_channels: int = 32,
        heatmap_sigma: float = DEFAULT_SIGMA,
    ) -> HandUNet:
        """Widen a (pretrained) UNet's ``conv_in`` by `num_keypoints` zero-initialised channels.

        The returned model, fed any heatmaps, predicts exactly what `unet` predicts for the latents alone.
        """
        latent_channels = unet.config.in_channels
        config = dict(unet.config)
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        config["in_channels"] = latent_channels + num_keypoints
        model = cls(
            unet_config=config,
            num_keypoints=num_keypoints,
            latent_channels=latent_channels,
            mask_head_type=mask_head_type,
            mask_head_channels=mask_head_channels,
            heatmap_sigma=heatmap_sigma,
        )
        state = unet.state_dict()
        old = state["conv_in.weight"]
        wide = torch.zeros((old.shape[0], config["in_channels"], *old.shape[2:]), dtype=old.dtype)
        wide[:, :latent_channels] = old
        state["conv_in.weight"] = wide
        model.unet.load_state_dict(state)
        return model if unet.dtype == model.dtype else model.to(dtype=unet.dtype)

    def forward(
        self,
        sample: torch.Tensor,
        timestep,
        encoder_hidden_states: torch.Tensor,
        heatmaps: torch.Tensor,
        return_dict: bool = True,
        **unet_kwargs,
    ):
        """Predict noise (or v / x0) and the hand mask.

        - sample: (B, latent_channels, h, w) noisy latents.
        - timestep: int, 0-d or (B,) tensor.
        - encoder_hidden_states: (B, 77, D) text embeddings.
        - heatmaps: (B, num_keypoints, h, w), values in [0, 1] (zeros = pose dropped for CFG).
        Returns `HandUNetOutput` or ``(sample, mask_logits)``.
        """
        k = self.config.num_keypoints
        if heatmaps.ndim != 4 or heatmaps.shape[1] != k:
            raise ValueError(f"heatmaps must be (B, {k}, h, w), got {tuple(heatmaps.shape)}")
        if heatmaps.shape[0] != sample.shape[0] or heatmaps.shape[2:] != sample.shape[2:]:
            raise ValueError(
                f"heatmaps {tuple(heatmaps.shape)} do not match latents {tuple(sample.shape)}: the batch size "
                "and the spatial size (latent resolution = image size / 8) must agree"
            )
        x = torch.cat([sample, heatmaps.to(sample.dtype)], dim=1)
        self._decoder_features = None
        noise = self.unet(x, timestep, encoder_hidden_states, return_dict=False, **unet_kwargs)[0]
        features, self._decoder_features = self._decoder_features, None
        mask_logits = self.mask_head(features)
        if not return_dict:
            return noise, mask_logits
        return HandUNetOutput(sample=noise, mask_logits=mask_logits)
