"""Summary statistics of a manifest: counts by category and distributions of sizes and scores.

Only cheap columns are read (no crops or images), so this is fast even for large manifests.
`manifest_stats` returns a JSON-ready dict; `format_stats` renders it as plain-text tables.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from .reader import Manifest, open_manifest

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
# Hand-size buckets (original pixels, longer side of the keypoint box): the paper's weak spot is small hands.
SIZE_BUCKETS = (0, 32, 64, 128, 256, math.inf)

IMAGE_COUNTS = ("status", "label", "split", "dataset")
HAND_COUNTS = ("handedness", "label", "split", "mask_method", "keypoint_source", "crop_size")
HAND_DISTRIBUTIONS = ("hand_size", "handedness_score", "mask_score")
IMAGE_DISTRIBUTIONS = ("num_hands", "body_score")


def counts(values) -> dict[str, int]:
    """Value -> count, most common first; null is counted as "null"."""
    c = Counter("null" if v is None else str(v) for v in values)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def _finite(values) -> np.ndarray:
    vals = np.array([v for v in values if v is not None], dtype=np.float64)
    return vals[np.isfinite(vals)]


def distribution(values) -> dict:
    """{"n", "nulls", "nonfinite", "mean", "p0", "p5", ..., "p100"} of the finite values (None where empty).

    NaN and infinity are counted in "nonfinite" and left out of the statistics, so one bad row
    neither turns every quantile into NaN nor makes the JSON output invalid.
    """
    present = [v for v in values if v is not None]
    vals = _finite(present)
    out = {
        "n": int(vals.size),
        "nulls": int(len(values) - len(present)),
        "nonfinite": len(present) - int(vals.size),
    }
    out["mean"] = float(vals.mean()) if vals.size else None
    for q in QUANTILES:
        out[f"p{round(q * 100)}"] = float(np.quantile(vals, q)) if vals.size else None
    return out


def size_buckets(values) -> dict[str, int]:
    vals = _finite(values)
    out = {}
    for lo, hi in zip(SIZE_BUCKETS[:-1], SIZE_BUCKETS[1:]):
        name = f">={lo:g}" if math.isinf(hi) else f"{lo:g}-{hi:g}"
        out[name] = int(((vals >= lo) & (vals < hi)).sum())
    return out


def with_body(images) -> int:
    """Images rows with a body pose: non-null ``body_keypoints``, counted from Arrow's validity bitmaps
    one row group at a time (the keypoint lists are never converted to Python objects)."""
    return sum(
        len(rows) - rows.column(0).null_count for _, rows in images.iter_row_groups(["body_keypoints"])
    )


def manifest_stats(manifest: Manifest | str) -> dict:
    """Counts and distributions of both tables (or the one table of a table directory)."""
    m = manifest if isinstance(manifest, Manifest) else open_manifest(manifest)
    info = m.info
    out = {
        "manifest": m.url,
        "schema_version": info.get("schema_version"),
        "code_version": info.get("code_version"),
        "created_at": info.get("created_at"),
        "rows": {t: tab.num_rows for t, tab in m.tables.items()},
        "shards": {t: len(tab.shards) for t, tab in m.tables.items()},
    }
    if "images" in m.tables:
        t = m.read("images", list(IMAGE_COUNTS) + list(IMAGE_DISTRIBUTIONS)).to_pydict()
        out["images"] = {
            "counts": {c: counts(t[c]) for c in IMAGE_COUNTS},
            "distributions": {c: distribution(t[c]) for c in IMAGE_DISTRIBUTIONS},
            "with_body": with_body(m.images),
        }
    if "hands" in m.tables:
        t = m.read("hands", list(HAND_COUNTS) + list(HAND_DISTRIBUTIONS)).to_pydict()
        out["hands"] = {
            "counts": {c: counts(t[c]) for c in HAND_COUNTS},
            "distributions": {c: distribution(t[c]) for c in HAND_DISTRIBUTIONS},
            "hand_size_buckets": size_buckets(t["hand_size"]),
        }
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _table(title: str, header: list[str], rows: list[list]) -> list[str]:
    cells = [header] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title]
    for k, r in enumerate(cells):
        lines.append(
            "  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        )
        if k == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines + [""]


def _count_tables(table: str, section: dict) -> list[str]:
    lines = []
    total = max(1, sum(next(iter(section["counts"].values())).values()))
    for col, c in section["counts"].items():
        rows = [[k, v, f"{100 * v / total:.1f}%"] for k, v in c.items()]
        lines += _table(f"{table} by {col}", [col, "count", "share"], rows)
    return lines


def _dist_table(table: str, section: dict) -> list[str]:
    keys = ["n", "nulls", "nonfinite", "mean"] + [f"p{round(q * 100)}" for q in QUANTILES]
    rows = [[name] + [d[k] for k in keys] for name, d in section["distributions"].items()]
    return _table(f"{table} distributions", ["field"] + keys, rows)


def format_stats(stats: dict) -> str:
    """Plain-text tables of `manifest_stats` output."""
    lines = [
        f"manifest {stats['manifest']}",
        f"  schema {stats.get('schema_version')}, code {stats.get('code_version')}, created {stats.get('created_at')}",
        "  " + ", ".join(f"{t}: {n} rows in {stats['shards'][t]} shards" for t, n in stats["rows"].items()),
        "",
    ]
    if "images" in stats:
        lines += _count_tables("images", stats["images"])
        lines += _dist_table("images", stats["images"])
        lines += [f"images with a body pose: {stats['images']['with_body']}", ""]
    if "hands" in stats:
        lines += _count_tables("hands", stats["hands"])
        lines += _dist_table("hands", stats["hands"])
        b = stats["hands"]["hand_size_buckets"]
        total = max(1, sum(b.values()))
        lines += _table(
            "hands by size (px, longer side of the keypoint box)",
            ["hand_size", "count", "share"],
            [[k, v, f"{100 * v / total:.1f}%"] for k, v in b.items()],
        )
    return "\n".join(lines).rstrip() + "\n"
