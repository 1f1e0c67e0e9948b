"""What a batch writes per image and records in it: the file paths, PNG saving, the sidecar written last,
and the model fingerprints and library versions a sidecar records.

Every path is made by `manifests.names.path_in`, which refuses any name that is not one plain file
name: nothing is ever written outside the output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform

import numpy as np
from PIL import Image

from manifests.names import path_in


def save_png(array: np.ndarray, path: str) -> None:
    """Write an (H, W[, C]) uint8 array as a PNG atomically."""
    tmp = path + ".tmp.png"
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)  # a crash never leaves a half-written image that resume would take as done


def output_paths(out_dir: str, name: str) -> dict[str, str]:
    """Where the files of request `name` go: image, sidecar, overview, stage1 folder, sidecar temp file.

    Raises `manifests.names.UnsafeNameError` for a name that is not a safe file name."""
    sidecar = path_in(out_dir, name, ".json")
    return {
        "image": path_in(out_dir, name, ".png"),
        "sidecar": sidecar,
        "overview": path_in(out_dir, name, "_overview.png"),
        "stage1": path_in(out_dir, name, "_stage1"),
        # Hidden, so that a crash never leaves a file that looks like a finished sidecar.
        "sidecar_tmp": os.path.join(out_dir, f".{os.path.basename(sidecar)}.tmp"),
    }


def is_done(out_dir: str, name: str) -> bool:
    """Whether request `name` has its PNG and its sidecar (the sidecar is written last): resume skips it."""
    paths = output_paths(out_dir, name)
    return os.path.isfile(paths["image"]) and os.path.isfile(paths["sidecar"])


def write_image_and_sidecar(paths: dict[str, str], image: np.ndarray, sidecar: dict) -> None:
    """The last two files of an image, in the order resume relies on."""
    tmp = paths["sidecar_tmp"]
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(sidecar, f, indent=2, default=str)
    # The PNG goes last but one and the sidecar last: `is_done` needs both, so resume redoes a
    # request that was interrupted anywhere in between.
    save_png(image, paths["image"])
    os.replace(tmp, paths["sidecar"])


def weights_fingerprint(folder: str) -> str:
    """sha1 over every file's relative path and size and the first and last MiB of each weight file:
    cheap even for full-size models, and it changes when the weights do."""
    digest = hashlib.sha1()
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in ("checkpoints", "validation", "latent_cache"))
        for name in sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            size = os.path.getsize(path)
            digest.update(f"{rel}:{size}\n".encode())
            if name.endswith((".safetensors", ".bin", ".json", ".txt")):
                with open(path, "rb") as f:
                    digest.update(f.read(1 << 20))
                    if size > 2 << 20:
                        f.seek(-(1 << 20), os.SEEK_END)
                        digest.update(f.read())
    return digest.hexdigest()


def versions() -> dict:
    """Versions that decide the pixels: the modules' own ``__version__`` (e.g. torch's build tag)."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "numpy"):
        out[pkg] = getattr(importlib.import_module(pkg), "__version__", None)
    for dist in ("handfirst", "mediapipe"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out
