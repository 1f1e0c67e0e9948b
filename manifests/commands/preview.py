"""`handfirst-manifests preview`: a contact sheet of a manifest's hand crops and images."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import SettingError, Settings, from_args, setting
from ..settings import add_arguments as add_settings

HELP = "contact sheet PNG of hand crops and full images with poses and masks"


@dataclass
class PreviewConfig(Settings):
    out: str | None = setting(None, "PNG to write (path or URL); required")
    n: int = setting(24, "hand crops to show", ge=0)
    images: int = setting(4, "full images to show", ge=0)
    seed: int = setting(0, "which row groups to sample", ge=0)
    tile: int = setting(160, "hand tile size in pixels", ge=1)

    def validate(self) -> PreviewConfig:
        super().validate()
        if not self.out:
            raise SettingError("out (--out) is required: the PNG to write")
        return self


def add_arguments(parser) -> None:
    parser.add_argument("path", help="manifest root or table directory; local or URL")
    add_settings(parser, PreviewConfig, title="preview settings")


def run(args) -> int:
    from ..preview import make_preview

    s = from_args(PreviewConfig, args).validate()
    sheet = make_preview(args.path, out=s.out, n=s.n, images=s.images, seed=s.seed, tile=s.tile)
    print(f"wrote {s.out} ({sheet.shape[1]}x{sheet.shape[0]})")
    return 0
