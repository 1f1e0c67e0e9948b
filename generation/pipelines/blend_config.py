"""The settings of latent blending, apart from `generation.pipelines.blending` so that building a CLI does not
import torch. `GenerateConfig` declares its blending options from these fields (one default each).

Units: every keep-mask is built at image resolution, hand by hand. ``d0`` and ``band`` are shares of each
hand's size (the longer side of its pasted mask's box); ``min_core`` is a share of what ``fixed`` keeps of
each hand and ``min_kept`` a share of the hand's mask pixels: the growth stops at the lower of the two.
The defaults were chosen by measurement (docs/fidelity.md, "Blending at the hand's own scale";
bench/blend_sweep.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from manifests.settings import SettingError, Settings, setting

# The names of `generation.pipelines.blending.BLEND_MODES`, in the order the CLI offers them (a test keeps the two
# equal).
BLEND_MODE_NAMES = ("sequential", "fixed", "none")

# Settings of sidecars whose keep-masks were built at latent resolution, in latent pixels. Such a
# sidecar cannot be replayed with blending (docs/fidelity.md); `generation.generate.sidecars` refuses it.
LATENT_PIXEL_SETTINGS = ("expand_pixels",)


@dataclass
class BlendConfig(Settings):
    """How stage-1 hand latents are blended into stage 2's (see `generation.pipelines.blending`)."""

    CLI_FLAGS = False  # generate offers these as --blend, --d0, ...; the Python API names the fields

    mode: str = setting(
        "sequential", "latent blending: sequential (the method), fixed or none", choices=BLEND_MODE_NAMES
    )
    # 0: a grown start would keep the hand canvas's grey around each hand for the first steps
    # (docs/fidelity.md, "Blending start").
    d0: float = setting(
        0.0, "sequential: initial growth of each hand's keep-mask, share of the hand's size", ge=0, le=1
    )
    band: float = setting(
        0.04,
        "sequential: how far the body grows into each hand over the window, share of the hand's size",
        ge=0,
        le=1,
    )
    expand_start: float = setting(
        0.2, "sequential: fraction of the schedule where the body starts growing into the hands", ge=0, le=1
    )
    expand_end: float = setting(
        0.8, "sequential: fraction where the growth ends and the keep-mask stays fixed", ge=0, le=1
    )
    min_core: float = setting(
        0.985,
        "sequential: each hand keeps at least this share of what the whole hand mask keeps of it (caps the "
        "growth; 0: no cap)",
        ge=0,
        le=1,
    )

    min_kept: float = setting(
        0.75,
        "sequential: a hand may give the body its pixels down to this share of them, even past min_core "
        "(1: min_core alone decides)",
        ge=0,
        le=1,
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
