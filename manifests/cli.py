"""`python -m manifests` / `handfirst-manifests`: validate, stats, preview, score and card a manifest.

Subcommands live in the `COMMANDS` registry (`manifests.dispatch`): one module each in
`manifests.commands`, imported only when chosen; adding a subcommand is one line in the registry.

Exit codes (`manifests.dispatch`, shared with `handfirst-prep` and `handfirst-gen`): 0 success; 1
`validate` found problems, or the manifest could not be opened or read (the message names the file);
2 a usage error or a setting outside its range; 130 Ctrl-C.
"""

from __future__ import annotations

from .dispatch import configure_logging, dispatch, program_name, verbosity
from .errors import ManifestError

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


def _configure(args) -> None:
    configure_logging(verbosity(args), ("manifests",))


def main(argv: list[str] | None = None) -> int:
    return dispatch(
        program_name(PROG, "manifests"),
        COMMANDS,
        argv,
        configure=_configure,
        errors=(ManifestError, FileNotFoundError),
    )


if __name__ == "__main__":
    raise SystemExit(main())
