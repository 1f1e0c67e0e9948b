"""prep: the distributed annotation pipeline, from photos to Parquet manifests.

>>> import prep
>>> summary = prep.run(input="../shared/data/hagrid_mini", out="out/manifest", label_from_dir=True)
"""

from .config import PrepConfig
from .records import HandAnnotation, ImageRecord


def run(config: PrepConfig | None = None, **kwargs) -> dict:
    """Annotate a dataset into a manifest; see `prep.runner.run` (imported lazily: it pulls in Dask)."""
    from .runner import run as _run

    return _run(config, **kwargs)


__all__ = ["HandAnnotation", "ImageRecord", "PrepConfig", "run"]
