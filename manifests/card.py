"""`handfirst-manifests card M`: a Hugging Face dataset card (``README.md``) for a manifest folder.

The card makes the folder pushable to the Hub as it is (``huggingface-cli upload user/name M
--repo-type dataset``) and loadable with ``datasets.load_dataset(M)``:

- YAML front matter with two configs, ``hands`` (the default: one row per hand crop) and ``images``,
  each pointing at its table's Parquet shards (the ``_stats/`` and ``_manifest.json`` sidecars are
  left out), plus the licence, size category and tags;
- the preview sheet (``preview.png`` beside the card);
- counts by status, split, label and handedness from `manifests.stats`;
- the schema of both tables with every field's documentation (`manifests.schema.FIELD_DOCS`);
- the settings the manifest was produced with and the code version, from ``_manifest.json``.

The licence is the user's call (``--license``); without it, the card names the licence of the source
datasets it knows (`SOURCE_LICENCES`) and says "unknown" otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import re

from .errors import ManifestError
from .hub import CARD_MARK, hub_metadata, shard_schemas
from .reader import Manifest, is_manifest_root, open_manifest
from .schema import FIELD_DOCS, SCHEMAS, TABLES
from .stats import manifest_stats
from .storage import atomic_write_bytes, filesystem, join

logger = logging.getLogger(__name__)


class CardExistsError(ManifestError):
    """The manifest root holds a README.md or preview.png that the card command did not write."""


# Licence of the photos each source adapter reads, as the Hub's metadata spells it.
SOURCE_LICENCES = {
    "hagrid": {
        "license": "other",
        "license_name": "hagrid",
        "license_link": "https://github.com/hukenovs/hagrid/blob/master/license/en_us.pdf",
        "text": "HaGRID licence (a reworked CC BY-SA 4.0; attribution required)",
    },
    "interhand": {"license": "cc-by-nc-4.0", "text": "InterHand2.6M: CC BY-NC 4.0"},
}
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))  # fmt: skip


def size_category(rows: int) -> str:
    return next((name for bound, name in SIZE_CATEGORIES if rows < bound), "n>100M")


def licence_for(datasets: list[str], license: str | None) -> dict:
    """The card's licence metadata: the user's `license`, else the one known source's, else unknown."""
    if license:
        return {"license": license, "text": license}
    known = [SOURCE_LICENCES[d] for d in datasets if d in SOURCE_LICENCES]
    if len(known) == 1 and len(datasets) == 1:
        return known[0]
    names = ", ".join(datasets) or "no images"
    return {"license": "unknown", "text": f"unknown (sources: {names}); set it with --license"}


def _yaml_value(value) -> str:
    return json.dumps(value)  # a JSON string or number is a valid YAML flow scalar


def front_matter(schemas: dict, licence: dict, rows: int, name: str) -> str:
    lines = ["---", f"pretty_name: {_yaml_value(name)}", f"license: {_yaml_value(licence['license'])}"]
    for key in ("license_name", "license_link"):
        if key in licence:
            lines.append(f"{key}: {_yaml_value(licence[key])}")
    lines += [
        "size_categories:",
        f"- {size_category(rows)}",
        "task_categories:",
        "- text-to-image",
        "tags:",
        "- hands",
        "- pose",
        "- keypoints",
        "- segmentation",
        "- handfirst",
        *hub_metadata(schemas),  # one config per table, hands first (the default), with its features
        "---",
    ]
    return "\n".join(lines)


MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def escape_markdown(text) -> str:
    """`text` as literal markdown on one line: every markdown character backslash-escaped."""
    return MARKDOWN_SPECIALS.sub(r"\\\1", " ".join(str(text).split()))


def _fence(code: str) -> str:
    """A code fence longer than any run of backticks in `code`, so `code` cannot close it."""
    return "`" * max(3, 1 + max((len(run) for run in re.findall("`+", code)), default=0))


def _counts_table(title: str, counts: dict) -> list[str]:
    if not counts:
        return []
    rows = [
        f"| {escape_markdown(k)} | {v} |"
        for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    ]
    return [f"| {title} | rows |", "|---|---:|", *rows, ""]


def _schema_table(table: str) -> list[str]:
    rows = [
        f"| `{f.name}` | `{f.type}` | {FIELD_DOCS[table].get(f.name, '').replace('|', '/')} |"
        for f in SCHEMAS[table]
    ]
    return [f"### `{table}`", "", "| field | type | meaning |", "|---|---|---|", *rows, ""]


def published_config(config: dict, root: str) -> dict:
    """The producing settings as a published card shows them: a path or URL inside the manifest
    `root` becomes relative to it ("." for the root itself), any other one its last name, so no local
    path (a home folder, a mount point) leaves the machine."""
    local = "://" not in root
    base = os.path.abspath(root) if local else root.rstrip("/")

    def show(value):
        if not isinstance(value, str) or ("/" not in value and "\\" not in value):
            return value
        full = value.rstrip("/") if "://" in value else os.path.abspath(value)
        if full == base:
            return "."
        prefix = base + (os.sep if local else "/")
        if full.startswith(prefix):
            return full[len(prefix) :].replace(os.sep, "/")
        return full.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]

    return {key: show(value) for key, value in config.items()}


def card_text(m: Manifest, name: str, license: str | None = None, preview: str | None = None) -> str:
    stats = manifest_stats(m)
    fs, root = filesystem(m.url)
    schemas = {t: s for t, s in shard_schemas(fs, root.rstrip("/")).items() if t in m.tables}
    datasets = sorted(stats.get("images", {}).get("counts", {}).get("dataset", {}))
    licence = licence_for(datasets, license)
    rows = stats["rows"].get("images", stats["rows"].get("hands", 0))
    body = [front_matter(schemas, licence, rows, name), CARD_MARK, "", f"# {escape_markdown(name)}", ""]
    code = "\n".join(
        [
            "import datasets",
            f'hands = datasets.load_dataset({name!r}, "hands", split="train")     # the default config',
            f'images = datasets.load_dataset({name!r}, "images", split="train")',
        ]
    )
    body += [
        "Hand annotations made by the `prep` pipeline of handfirst: "
        "MediaPipe hand keypoints and body pose, hand masks, square hand crops, keypoint heatmaps and "
        "captions, in two Parquet tables (`images`: one row per input photo, whatever happened to it; "
        "`hands`: one row per hand).",
        "",
        f"{_fence(code)}python",
        code,
        _fence(code),
        "",
    ]
    if preview:
        body += [f"![Preview: hand crops with keypoints and masks, images with the body pose]({preview})", ""]
    body += ["## Licence", "", escape_markdown(licence["text"]), ""]
    body += ["## Counts", "", *(f"- {t}: {n} rows" for t, n in stats["rows"].items()), ""]
    image_counts = stats.get("images", {}).get("counts", {})
    hand_counts = stats.get("hands", {}).get("counts", {})
    for title, section in (
        ("status", image_counts),
        ("split", image_counts),
        ("label", image_counts),
        ("handedness", hand_counts),
    ):
        body += _counts_table(title, section.get(title, {}))
    body += [
        "## Schema",
        "",
        f"Schema version {stats.get('schema_version')}. The two tables have different schemas: read one "
        'at a time (`pandas.read_parquet("hands")`; polars and DuckDB: `"hands/*.parquet"`), '
        "never the root as one table.",
        "",
    ]
    for table in TABLES:
        if table in m.tables:
            body += _schema_table(table)
    body += [
        "## How it was made",
        "",
        f"Code version `{stats.get('code_version')}`, created {stats.get('created_at')}. Settings:",
        "",
        "```json",
        json.dumps(published_config(m.config, m.url), indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    return "\n".join(body)


def _is_card(fs, path: str) -> bool:
    with fs.open(path, "rb") as f:
        return CARD_MARK.encode() in f.read(64 * 2**10)


def _check_ours(fs, path: str, root: str, overwrite: bool, ours, what: str) -> None:
    """Refuse to replace a file this command did not write, unless `overwrite`."""
    if overwrite or not fs.exists(path):
        return
    try:
        mine = fs.isfile(path) and ours(fs, path)
    except Exception:  # noqa: BLE001 - unreadable: not one of ours
        mine = False
    if not mine:
        raise CardExistsError(
            f"{root}: {what} exists and was not written by this command; move it away or pass --overwrite"
        )


def write_card(
    path: str,
    name: str | None = None,
    license: str | None = None,
    preview: bool = True,
    overwrite: bool = False,
) -> str:
    """Write ``README.md`` (and ``preview.png`` unless `preview` is False) into the manifest root.

    Returns the card's URL. Both files are written atomically. A ``README.md`` or ``preview.png`` this
    command did not write is refused (`CardExistsError`) unless `overwrite`.
    """
    from .preview import is_preview_png, make_preview

    fs, root = filesystem(str(path))
    root = root.rstrip("/")
    m = open_manifest(path)
    if not is_manifest_root(fs, root):
        raise ManifestError(
            f"{m.url}: a card describes a manifest root (with images/ and hands/), not one table"
        )
    name = name or root.rsplit("/", 1)[-1]
    card = join(root, "README.md")
    _check_ours(fs, card, root, overwrite, _is_card, "README.md")
    if preview:
        _check_ours(fs, join(root, "preview.png"), root, overwrite, is_preview_png, "preview.png")
    picture = None
    if preview:
        try:
            make_preview(m, out=m.url.rstrip("/") + "/preview.png")
            picture = "preview.png"
        except Exception as exc:  # noqa: BLE001 - a card without a picture beats no card
            logger.warning("%s: no preview in the card: %s", m.url, exc)
    text = card_text(m, name, license=license, preview=picture)
    atomic_write_bytes(fs, card, text.encode("utf-8"))
    return m.url.rstrip("/") + "/README.md"
