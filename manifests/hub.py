"""What other tools need to read a manifest: each table's files, and the Hugging Face metadata.

A manifest root holds two tables of different schemas, so no tool may read the root as one table:

- `table_files` (or the glob ``ROOT/TABLE/*.parquet``) names one table's Parquet shards, which pandas,
  pyarrow, polars, DuckDB, dask and Hugging Face ``datasets`` all read:

  >>> pd.read_parquet(table_files("out/m", "hands"))            # or pd.read_parquet("out/m/hands")
  >>> pl.read_parquet("out/m/hands/*.parquet")                  # polars and DuckDB take the glob
  >>> duckdb.sql("select * from read_parquet('out/m/hands/*.parquet')")

- every finalized manifest has a ``README.md`` at its root (`write_root_card`): a short dataset card
  whose YAML names one ``datasets`` config per table (``hands``, the default, and ``images``) with
  its features, the encoded pictures (``crop``, ``mask``, ``image``, ``hands_mask``) declared as
  ``Image`` so rows display as pictures. It makes ``datasets.load_dataset(M)`` read the hands table,
  and it is not Parquet, so pyarrow and pandas refuse the root (``Could not read schema from
  'M/README.md'``) instead of mixing the two tables' rows. ``handfirst-manifests card`` replaces it
  with the full card (counts, schema, settings, preview), whose YAML comes from here too.

This module does not import ``datasets``: it writes the card's text, reading one Parquet footer per table.
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import SCHEMAS, TABLES
from .storage import atomic_write_bytes, filesystem, join, url_for

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
# Binary columns holding an encoded picture (JPEG / PNG); `heatmap` is raw bytes and stays binary.
IMAGE_COLUMNS = {"hands": ("crop", "mask"), "images": ("image", "hands_mask")}
# Marks a README.md written by handfirst (this short one or the full card of `handfirst-manifests card`);
# the card command replaces only such a README.md, another one is the user's.
CARD_MARK = "<!-- written by handfirst-manifests card -->"
# Marks the short card `write_root_card` writes, which it may rewrite; any other README.md is kept.
ROOT_CARD_MARK = "<!-- handfirst: the manifest's own card; `handfirst-manifests card` writes the full one -->"
# Table order in the card: hands first, the default config (what the hand generator trains on).
CARD_TABLES = ("hands", "images")


def table_files(path: str, table: str) -> list[str]:
    """The Parquet shards of `table` in the manifest root `path`, in name order, as paths or URLs.

    One list that pandas, pyarrow, polars, DuckDB and ``datasets`` take as it is. The files are those
    the reader checks (`manifests.reader.open_manifest`): a manifest the reader refuses is refused here.
    """
    from .reader import open_manifest

    if table not in TABLES:
        raise ValueError(f"unknown manifest table {table!r}; expected one of {TABLES}")
    return [shard.url for shard in open_manifest(path).table(table).shards]


def _feature(field: pa.Field, table: str) -> dict:
    """One column as a Hugging Face feature in the card's YAML form (`datasets.Features._to_yaml_list`)."""
    if field.name in IMAGE_COLUMNS.get(table, ()):
        return {"name": field.name, "dtype": "image"}
    return {"name": field.name, **_feature_type(field.type)}


def _feature_type(t: pa.DataType) -> dict:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _feature_type(t.value_type)
        return {"sequence": inner.get("dtype", inner)}
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return {"dtype": "binary"}
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return {"dtype": "string"}
    return {"dtype": {"float": "float32", "double": "float64", "halffloat": "float16"}.get(str(t), str(t))}


def _yaml(value, indent: int) -> list[str]:
    """A small YAML emitter for the card's metadata: dicts, lists, and JSON scalars (valid YAML)."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for key, v in value.items():
            if isinstance(v, (dict, list)):
                lines += [f"{pad}{key}:", *_yaml(v, indent + 2)]
            else:
                lines.append(f"{pad}{key}: {json.dumps(v)}")
        return lines
    lines = []
    for item in value:
        inner = _yaml(item, indent + 2)
        lines.append(f"{pad}- {inner[0].lstrip()}")
        lines += inner[1:]
    return lines


def hub_metadata(schemas: dict[str, pa.Schema]) -> list[str]:
    """The YAML lines ``configs:`` and ``dataset_info:`` for the tables in `schemas` (table -> the
    schema of its shards), hands first and the default."""
    tables = [t for t in CARD_TABLES if t in schemas]
    configs = [
        {
            "config_name": t,
            "data_files": [{"split": "train", "path": f"{t}/*.parquet"}],
            **({"default": True} if t == tables[0] else {}),
        }
        for t in tables
    ]
    info = [{"config_name": t, "features": [_feature(f, t) for f in schemas[t]]} for t in tables]
    return ["configs:", *_yaml(configs, 0), "dataset_info:", *_yaml(info, 0)]


def shard_schemas(fs, root: str) -> dict[str, pa.Schema]:
    """Each table's schema as its first shard has it (an older manifest's shards lack the fields added
    since, and the card must declare exactly the columns there are); a table without shards is left out."""
    schemas = {}
    for table in TABLES:
        shards = sorted(fs.glob(join(root, table, "*.parquet")))
        if shards:
            with fs.open(shards[0], "rb") as f:
                schemas[table] = pq.read_schema(f)
    return schemas


def root_card_text(schemas: dict[str, pa.Schema]) -> str:
    """The short card every manifest carries: the metadata, and how to read each table."""
    return "\n".join(
        [
            "---",
            *hub_metadata(schemas),
            "---",
            CARD_MARK,
            ROOT_CARD_MARK,
            "",
            "# A handfirst manifest",
            "",
            "A handfirst manifest: two Parquet tables, `hands` (one row per hand: crop, mask, heatmap,",
            "keypoints, caption) and `images` (one row per input image). Read one table at a time; the",
            "root is not one table.",
            "",
            "```python",
            "import datasets, pandas as pd",
            'hands = datasets.load_dataset("path/to/manifest", split="train")            # the hands table',
            'images = datasets.load_dataset("path/to/manifest", "images", split="train")',
            'hands = pd.read_parquet("path/to/manifest/hands")   # polars, DuckDB: "path/to/manifest/hands/*.parquet"',
            "```",
            "",
            "`handfirst-manifests card` writes the full card (counts, schema, settings, preview).",
            "",
        ]
    )


def write_root_card(path: str) -> str | None:
    """Write the short ``README.md`` into the manifest root `path`, unless a README.md other than an
    earlier short card is there (the full card, or the user's own). Returns its URL, or None when kept."""
    fs, root = filesystem(str(path))
    root = root.rstrip("/")
    card = join(root, CARD_FILE)
    if fs.exists(card):
        with fs.open(card, "rb") as f:
            if ROOT_CARD_MARK.encode() not in f.read(64 * 2**10):
                logger.debug("%s: kept (not the manifest's own short card)", url_for(fs, card))
                return None
    schemas = {**SCHEMAS, **shard_schemas(fs, root)}
    atomic_write_bytes(fs, card, root_card_text(schemas).encode("utf-8"))
    return url_for(fs, card)
