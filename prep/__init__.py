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


def run(config: PrepConfig | None = None, **kwargs) -> dict:
    """Annotate a dataset into a manifest; see `prep.runner.run` (imported lazily: it pulls in Dask)."""
    from .runner import run as _run

    return _run(config, **kwargs)


__all__ = ["HandAnnotation", "ImageRecord", "PrepConfig", "run"]
