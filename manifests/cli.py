"""`python -m manifests` / `handfirst-manifests`: validate, stats, preview, score and card a manifest.

Subcommands live in the `COMMANDS` registry (`manifests.dispatch`): one module each in
`manifests.commands`, imported only when chosen; adding a subcommand is one line in the registry.

Exit codes: 0 success; 1 `validate` found problems; 2 the manifest could not be opened or read
(the message names the file), or a setting is outside its range.
"""

from __future__ import annotations

import logging
import sys

from .dispatch import dispatch
from .errors import ManifestError
from .settings import SettingError

PROG = "handfirst-manifests"

# subcommand -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": (
        "manifests.commands.validate",
        "check a manifest against the contract (exit 1 and list shard/row/reason on failure)",
    ),
    "stats": (
        "manifests.commands.stats",
        "counts by status, label, split, handedness; hand size and score distributions",
    ),
    "preview": (
        "manifests.commands.preview",
        "contact sheet PNG of hand crops and full images with poses and masks",
    ),
    "score": ("manifests.commands.score", "score a manifest's hand keypoints against COCO-style truth"),
    "card": ("manifests.commands.card", "write a Hugging Face dataset card (README.md + preview.png)"),
}


def _common(parser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def _configure(args) -> None:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def main(argv: list[str] | None = None) -> int:
    try:
        return dispatch(PROG, COMMANDS, argv, _common, _configure)
    except (ManifestError, FileNotFoundError, SettingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
