"""report.json, report.md, per_image.jsonl and report.png of an evaluation; report.json -> a paper-style
Markdown table; several reports side by side (`--compare`).

One row per method (a report's ``label``), the columns of every registered metric
(`generation.evaluate.metrics`) in table order, the best value of each column in bold when there are
several rows; counts, settings and the reasons for missing values follow the
table as notes, so the table can be pasted into a paper or README as it is.
"""

from __future__ import annotations

import json
import logging
import os

from .detect import REAL, find_generated, load_generated, load_real
from .metrics import ordered
from .registry import Column

logger = logging.getLogger(__name__)

REPORT_KEYS = ("hands", "body", "fid", "kid", "fid_hands", "kid_hands", "clip_score", "reasons", "settings")
POSE_KEYS = ("detected_share", "pck_0.1", "pck_0.2", "mean_error_px", "oks_ap", "count")

# Counts after the metrics' columns: not metrics, never ranked.
COUNT_COLUMNS = (
    Column("Images", ("images", "evaluated"), None, "int"),
    Column("Hands", ("hands", "count"), None, "int"),
)


def columns() -> list[Column]:
    """Every table column: each registered metric's, in table order, then the counts."""
    return [c for m in ordered() for c in m.columns] + list(COUNT_COLUMNS)


def _get(report: dict, path: tuple[str, ...]):
    value = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def load_report(path: str) -> dict:
    """A report.json (or a folder holding one); checks the required keys are there."""
    if os.path.isdir(path):
        path = os.path.join(path, "report.json")
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the report ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in REPORT_KEYS if k not in report]
    if missing:
        raise ValueError(f"{path}: not an evaluation report (missing keys {missing})")
    report.setdefault("label", os.path.basename(os.path.dirname(os.path.abspath(path))))
    return report


def shown_path(value):
    """A setting as the compare table shows it: a path inside the working folder relative to it, so a
    table made here and published carries no path of this machine."""
    if isinstance(value, str) and os.path.isabs(value):
        rel = os.path.relpath(value)
        if not rel.startswith(".."):
            return rel
    return value


def markdown_table(reports: list[dict], title: str | None = None) -> str:
    """Paper-style Markdown: the table, then counts, settings and the reasons for '–' cells."""
    # Every column always, so tables of different runs line up; '–' cells are explained in the notes.
    cols = columns()
    best = {}
    if len(reports) > 1:
        for c in cols:
            values = [_get(r, c.path) for r in reports]
            values = [v for v in values if v is not None]
            if c.higher_is_better is not None and values:
                best[c.header] = max(values) if c.higher_is_better else min(values)
    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines.append("| Method | " + " | ".join(c.header for c in cols) + " |")
    lines.append("|---|" + "|".join("---:" for _ in cols) + "|")
    for r in reports:
        cells = []
        for c in cols:
            v = _get(r, c.path)
            text = c.format(v)
            if v is not None and c.header in best and c.format(best[c.header]) == text:
                text = f"**{text}**"
            cells.append(text)
        label = str(r.get("label", "?")).replace("|", "\\|")  # a '|' would split the Markdown cell
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Notes:", ""]
    lines += [f"- {m.legend}" for m in ordered() if m.legend]
    for r in reports:
        s = r.get("settings", {})
        im = r.get("images", {})
        parts = [
            f"{im.get('evaluated', '?')} images",
            f"{_get(r, ('hands', 'count'))} target hands",
            f"{_get(r, ('body', 'count'))} target bodies",
        ]
        if im.get("missing"):
            parts.append(f"{im['missing']} generated images missing (not scored)")
        if im.get("unreadable"):
            parts.append(f"{im['unreadable']} unreadable (scored as misses)")
        line = f"- **{r.get('label', '?')}**: " + ", ".join(parts)
        settings = {
            k: s[k]
            for k in (
                "generated",
                "manifest",
                "split",
                "detector",
                "gate",
                "min_body_visibility",
                "inception",
                "clip",
            )
            if s.get(k) is not None
        }
        if settings:
            line += "; settings: " + ", ".join(f"{k}={shown_path(v)}" for k, v in settings.items())
        lines.append(line)
        by_reason: dict[str, list[str]] = {}
        for key, why in (r.get("reasons") or {}).items():
            by_reason.setdefault(why, []).append(key)
        for why, keys in by_reason.items():
            lines.append(f"  - {', '.join(sorted(keys))} not computed: {why}")
        for note in r.get("notes") or []:
            lines.append(f"  - {note}")
    return "\n".join(lines) + "\n"


def compare(paths: list[str], out: str, title: str | None = None) -> dict:
    """Render several reports side by side into `out`/compare.md, compare.json and compare.png (a bar chart
    per metric column); returns the data and the picture's path (None when no column has a value)."""
    reports = [load_report(p) for p in paths]
    os.makedirs(out, exist_ok=True)
    md = markdown_table(reports, title or "Comparison")
    with open(os.path.join(out, "compare.md"), "w", encoding="utf-8") as f:
        f.write(md)
    cols = columns()
    rows = [
        {"label": r.get("label"), "report": p, **{c.header: _get(r, c.path) for c in cols}}
        for r, p in zip(reports, paths)
    ]
    data = {"rows": rows, "columns": [c.header for c in cols]}
    with open(os.path.join(out, "compare.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    from .pictures import compare_picture

    picture = compare_picture(rows, cols, out)
    return {"markdown": md, **data, "picture": picture}


def write_report_picture(
    manifest, generated: str, out: str, errors, rows, targets, detections, label
) -> None:
    """``out/report.png`` (`pictures.report_picture`); a failure to draw is logged, never raised."""
    import pyarrow.compute as pc

    from .pictures import report_picture, worst_and_best

    def load_image(image_id: str):
        if generated != REAL:
            return load_generated(find_generated(generated, image_id))
        [row] = manifest.read("images", filter=pc.field("image_id") == image_id).to_pylist()
        return load_real(row)

    shown = set(sum(worst_and_best(errors), []))
    frames = {i: (rows[i]["width"], rows[i]["height"]) for i in shown}
    try:
        report_picture(out, errors, load_image, frames, targets, {d.image_id: d for d in detections}, label)
    except Exception as exc:  # noqa: BLE001 - the numbers are written; a picture must not undo that
        logger.warning("could not draw %s/report.png: %s", out, exc)


def write_report(report: dict, out: str, per_image: list[dict] | None = None) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, default=float)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(markdown_table([report], title=f"Evaluation: {report['label']}"))
    if per_image is not None:
        with open(os.path.join(out, "per_image.jsonl"), "w", encoding="utf-8") as f:
            for row in per_image:
                f.write(json.dumps(row) + "\n")
