"""`handfirst-manifests card`: a Hugging Face dataset card for a manifest folder."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import Settings, from_args, setting
from ..settings import add_arguments as add_settings

HELP = "write a Hugging Face dataset card (README.md + preview.png) so the folder loads with datasets and pushes to the Hub"


@dataclass
class CardConfig(Settings):
    name: str | None = setting(None, "dataset name in the card (default: the folder's name)")
    license: str | None = setting(None, "licence id for the Hub metadata (default: the source's, if known)")
    preview: bool = setting(True, "render preview.png (--no-preview skips it)")
    overwrite: bool = setting(
        False, "replace a README.md / preview.png this command did not write (default: refuse)"
    )


def add_arguments(parser) -> None:
    parser.add_argument("path", help="manifest root (with images/ and hands/); local or URL")
    add_settings(parser, CardConfig, title="card settings")


def run(args) -> int:
    from ..card import write_card

    s = from_args(CardConfig, args).validate()
    url = write_card(args.path, name=s.name, license=s.license, preview=s.preview, overwrite=s.overwrite)
    print(f"wrote {url}")
    return 0
