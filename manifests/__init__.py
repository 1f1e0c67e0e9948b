"""manifests: the contract between `prep` (which writes manifests) and `generation` (which reads them).

A manifest is a folder with two Parquet tables, ``images`` (one row per input image, whatever happened
to it) and ``hands`` (one row per hand), each a directory of shards with per-shard stats and a
``_manifest.json``. This package imports neither side, and reading, validating and summarising a
manifest imports neither torch nor cv2. The public API, by module:

- `manifests.schema`: ``IMAGES_SCHEMA``, ``HANDS_SCHEMA``, ``FIELD_DOCS`` (every field's meaning,
  the source of ``docs/manifest.md``), ``SCHEMA_VERSION``, ``STATUSES``.
- `manifests.writer`: ``ManifestWriter`` (atomic shards, stats, ``_manifest.json``).
- `manifests.reader`: ``open_manifest(path)`` -> ``Manifest`` (local path or fsspec URL; projection,
  filters, row-group iteration, lookups); `manifests.decode` turns row values into arrays and images.
- `manifests.hub`: ``table_files(path, table)`` (one table's shard files, for pandas, polars, DuckDB,
  ``datasets``; also ``manifests.table_files``) and the root ``README.md`` that makes a manifest a
  Hugging Face dataset and keeps readers from taking the root for one table.
- `manifests.validate`: ``validate_manifest(path)`` -> findings naming shard, row and reason.
- `manifests.stats`: ``manifest_stats(path)``; `manifests.preview`: ``make_preview(path, out)``;
  `manifests.card`: ``write_card(path)`` (a Hugging Face dataset card).
- `manifests.datasets`: ``HandCropDataset``, ``BodyDataset``, ``ManifestDataLoader`` (torch, streamed by
  row group across ranks and workers, seeded shuffles, exact resume).
- `manifests.geometry`, `manifests.pose`, `manifests.transforms`: crop boxes, heatmaps, skeletons and
  the fit/crop transforms both sides share; `manifests.draw`, `manifests.plots`: pictures.
- `manifests.names`: the one rule for names that become file names; `manifests.settings`: the one way
  to declare settings (help, choices, range, ``validate()``, CLI options).
- `manifests.matching`, `manifests.score`, `manifests.mask_agreement`: keypoint matching and scores against
  ground truth, mask agreement.

``python -m manifests`` / ``handfirst-manifests``: ``validate``, ``stats``, ``preview``, ``score``, ``card``.
"""


def __getattr__(name: str):
    """``manifests.table_files``, imported on first use (it pulls in pyarrow; the CLIs import this package)."""
    if name == "table_files":
        from .hub import table_files

        return table_files
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
