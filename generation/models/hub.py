"""Where a model named on the command line lives: a local folder, or a Hugging Face Hub id found in the
local Hugging Face cache.

`find_model` turns what the user passed (``--pretrained``, ``--init-controlnet``, baseline's
``--pretrained`` / ``--controlnet``) into a local folder:

- an existing folder is used as it is;
- a Hub id (``org/name``) is looked up in the local cache (``HF_HUB_CACHE`` / ``HF_HOME``, the layout
  ``hf download`` writes: ``models--org--name/snapshots/<commit>/`` with ``refs/main``). This works with
  ``HF_HUB_OFFLINE=1``. It is downloaded only when the caller allows downloads (``--allow-download``),
  and then only the files diffusers loads (configs, tokenizer files, weights; no ``.ckpt`` or ONNX);
- anything else is a `ModelFolderError` naming the value and, for an id, how to fetch it.

Light: imports neither torch nor diffusers, so the checks before a run stay fast.
"""

from __future__ import annotations

import os
import re

from .errors import ModelFolderError

# org/name, as the Hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# What a download leaves out: single-file checkpoints and other frameworks' weights that the diffusers
# folder layout does not load.
DOWNLOAD_IGNORE = ("*.ckpt", "*.onnx", "*.onnx_data", "*.msgpack", "*.h5", "*.pb", "*.ot", "*.tflite")


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` that is not an existing path, an absolute path or a relative one starting with '.'."""
    name = os.fspath(name)
    return bool(_HUB_ID.match(name)) and not os.path.exists(name) and not name.startswith(".")


def fetch_hint(repo_id: str) -> str:
    return f"`hf download {repo_id}` (or `huggingface-cli download {repo_id}`)"


def cached_snapshot(repo_id: str) -> str | None:
    """The local snapshot folder of `repo_id` in the Hugging Face cache, or None when it is not there."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None


def find_model(name: str | os.PathLike, what: str, option: str, allow_download: bool = False) -> str:
    """The local folder of model `name` (see the module docstring). `what` names the model in errors
    (``"Stable Diffusion folder"``) and `option` the command-line option it came from (``--pretrained``)."""
    name = os.fspath(name)
    if os.path.isdir(name):
        return name
    if not looks_like_hub_id(name):
        raise ModelFolderError(
            f"{option} {name!r}: {what} not found (not a directory, and not a Hub id of the form org/name)"
        )
    folder = cached_snapshot(name)
    if folder is not None:
        return folder
    if not allow_download:
        from huggingface_hub import constants

        raise ModelFolderError(
            f"{option} {name!r}: no such folder, and the Hub id is not in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); fetch it with {fetch_hint(name)}, or pass --allow-download"
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, ignore_patterns=list(DOWNLOAD_IGNORE))
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, no access: one line naming the id
        raise ModelFolderError(
            f"{option} {name!r}: download failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            f"fetch it with {fetch_hint(name)}"
        ) from None
