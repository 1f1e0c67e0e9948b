"""prep: the distributed annotation pipeline, from photos to Parquet manifests.

>>> import prep
>>> summary = prep.run(input="../shared/data/hagrid_mini", out="out/manifest", label_from_dir=True)
"""

import warnings

from .config import PrepConfig
from .records import HandAnnotation, ImageRecord

# mediapipe 0.10.x calls a protobuf API that newer protobuf deprecates, once per image: pure noise.
warnings.filterwarnings(
    "ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated", category=UserWarning
)


# The public names that live in modules with heavy imports (Dask, pyarrow, MediaPipe), each imported
# on first use: name -> module.
_LAZY = {
    "ANNOTATORS": "annotators",
    "get_annotator": "annotators",
    "detection_config": "annotators",
    "load_image": "imageio",
    "hand_caption": "captions",
    "image_caption": "captions",
    "dask_client": "cluster",
    "log_cluster": "cluster",
}


def run(config: PrepConfig | None = None, **kwargs) -> dict:
    """Annotate a dataset into a manifest; see `prep.runner.run` (imported lazily: it pulls in Dask)."""
    from .runner import run as _run

    return _run(config, **kwargs)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


__all__ = ["HandAnnotation", "ImageRecord", "PrepConfig", "run", *_LAZY]
