"""The settings of latent blending, apart from `generation.pipelines.blending` so that building a CLI does not
import torch. `GenerateConfig` declares its blending options from these fields (one default each).
"""

from __future__ import annotations

from dataclasses import dataclass

from manifests.settings import SettingError, Settings, setting

# The names of `generation.pipelines.blending.BLEND_MODES`, in the order the CLI offers them (a test keeps the two
# equal).
BLEND_MODE_NAMES = ("sequential", "fixed", "none")


@dataclass
class BlendConfig(Settings):
    """How stage-1 hand latents are blended into stage 2's (see `generation.pipelines.blending`)."""

    CLI_FLAGS = False  # generate offers these as --blend, --d0, ...; the Python API names the fields

    mode: str = setting(
        "sequential", "latent blending: sequential (the method), fixed or none", choices=BLEND_MODE_NAMES
    )
    # 0: a dilated start keeps a ring of the hand canvas's grey outside each hand in the latents for the
    # first steps (docs/fidelity.md, "Blending start").
    d0: int = setting(0, "sequential: initial dilation of the hand mask, latent pixels", ge=0, le=64)
    expand_pixels: int = setting(
        3, "sequential: total erosion over the expansion window, latent pixels", ge=0, le=256
    )
    expand_start: float = setting(
        0.2, "sequential: fraction of the schedule where erosion starts", ge=0, le=1
    )
    expand_end: float = setting(
        0.8, "sequential: fraction where erosion ends and the mask stays fixed", ge=0, le=1
    )
    # 2 keeps 3x3 latent pixels (24x24 image px with SD's VAE) of every hand; 0 turns the cap off.
    min_core: int = setting(
        2,
        "sequential: each hand region keeps a core this deep, latent pixels (its erosion is capped at its "
        "inner radius minus this; 0: no cap, small hands may be erased)",
        ge=0,
        le=64,
    )

    def __post_init__(self):
        self.validate()

    def validate(self) -> BlendConfig:
        super().validate()
        if self.expand_start > self.expand_end:
            raise SettingError(
                f"need expand_start <= expand_end, got {self.expand_start} and {self.expand_end}"
            )
        return self
