"""Check a manifest against the contract and list every problem with its shard file, row and reason.

What is checked (each finding is a `manifests.errors.Problem`):

1. files (``manifests.layout``): every shard's footer reads, its schema version and field types
   match, it has a stats file, and the row counts of shard, stats file and `_manifest.json` agree;
2. rows, cheap columns:
   - ids are unique and safe file names (`manifests.names`); every hand row's ``image_id`` exists
     in images, in the shard of the same name, with the same split; ``num_hands`` equals the
     image's hand rows;
   - ``status`` is ok / no_hands / error, with ``error`` set exactly for errors, ``num_hands > 0``
     for ok and 0 for no_hands; the per-shard status counts match the stats file;
   - hand keypoints are (21, 3) and lie inside their image, up to ``keypoint_margin`` x the hand's
     size (MediaPipe extrapolates fingers cut by the frame a little past the border); visible body
     keypoints (visibility >= ``body_min_visibility``) lie inside up to ``body_margin`` x the
     image's longer side;
   - ``crop_keypoints`` equal the keypoints mapped through ``crop_box`` and lie inside the crop (up
     to ``crop_margin`` x crop_size); ``bbox`` and ``hand_size`` match the keypoints;
3. rows, encoded columns (``decode=True``): every crop, mask, heatmap, image and hands mask
   decodes, with the stated shapes (``crop_size``, ``heatmap_shape``, ``image_height`` x
   ``image_width``), and each heatmap channel peaks at its crop keypoint (within one heatmap pixel).

Rows are numbered from 0 within their shard file.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow.parquet as pq

from . import decode
from .errors import Problem, RowDecodeError
from .geometry import CropBox, heatmap_peaks, visible_bbox
from .layout import ShardFile, TableScan, infer_table, root_problems, scan_table
from .names import unsafe_name
from .progress import progress_bar
from .schema import NO_MASK, NUM_HAND_KEYPOINTS, STATUSES, TABLES
from .storage import filesystem, join, open_regular, url_for

logger = logging.getLogger(__name__)

LIGHT_COLUMNS = {
    "images": ["image_id", "split", "status", "error", "num_hands", "width", "height", "body_keypoints"],
    "hands": [
        "hand_id",
        "image_id",
        "split",
        "keypoints",
        "bbox",
        "hand_size",
        "crop_box",
        "crop_size",
        "crop_keypoints",
        "handedness",
    ],
}
DECODE_COLUMNS = {
    "images": ["image_id", "status", "image", "image_width", "image_height", "hands_mask"],
    "hands": [
        "hand_id",
        "crop",
        "crop_size",
        "mask",
        "mask_method",
        "heatmap",
        "heatmap_shape",
        "heatmap_dtype",
        "crop_keypoints",
    ],
}


@dataclass
class ValidateConfig:
    """Settings of `validate_manifest`; margins are fractions (see the module docstring)."""

    decode: bool = True
    keypoint_margin: float = 0.25
    body_margin: float = 0.1
    body_min_visibility: float = 0.5
    crop_margin: float = 0.02
    crop_tolerance: float = 0.01  # crop_keypoints vs crop_box mapping, fraction of crop_size (+0.5 px)
    max_problems: int = 1000
    workers: int = 1  # processes for the decode pass (1 = in this process)


class _Collector:
    def __init__(self, limit: int):
        self.items: list[Problem] = []
        self.limit = limit
        self.dropped = 0
        self._seen: set = set()

    def add(self, file: str, reason: str, row: int | None = None, kind: str = "contract") -> None:
        reason = " ".join(str(reason).split())  # arrow messages carry newlines
        key = (file, row, reason)
        if key in self._seen:  # the decode pass meets unreadable row groups a second time
            return
        self._seen.add(key)
        if len(self.items) < self.limit:
            self.items.append(Problem(file, reason, row, kind))
        else:
            self.dropped += 1

    def extend(self, problems) -> None:
        for p in problems:
            self.add(p.file, p.reason, p.row, p.kind)

    @property
    def full(self) -> bool:
        return len(self.items) >= self.limit


def _rows(fs, shard, columns, out: _Collector):
    """Yield (row_index_in_file, row dict) of a shard; an unreadable row group is reported, not skipped silently."""
    base = 0
    try:
        f = open_regular(fs, shard.path, None)
        pf = pq.ParquetFile(f)
    except Exception as exc:
        out.add(shard.url, f"cannot open: {exc}", kind="corrupt")
        return
    with f:
        for g, n in enumerate(shard.row_groups):
            try:
                rows = pf.read_row_group(g, columns=columns, use_threads=False).to_pylist()
            except Exception as exc:
                out.add(
                    shard.url,
                    f"row group {g} (rows {base}..{base + n - 1}) cannot be read: {exc}",
                    kind="corrupt",
                )
                base += n
                continue
            for i, r in enumerate(rows):
                yield base + i, r
            base += n


def _readable(scan: TableScan) -> list:
    bad = {p.file for p in scan.problems if p.kind in ("corrupt", "schema")}
    return [s for s in scan.shards if s.num_rows is not None and s.url not in bad]


def _inside(points: np.ndarray, width: float, height: float, margin: float) -> bool:
    xy = points[:, :2]
    return bool(
        np.all(xy[:, 0] >= -margin)
        and np.all(xy[:, 0] <= width + margin)
        and np.all(xy[:, 1] >= -margin)
        and np.all(xy[:, 1] <= height + margin)
    )


def _check_images(fs, scan: TableScan, cfg: ValidateConfig, out: _Collector) -> dict:
    """Cheap checks of the images table; returns image_id -> (shard, row, split, num_hands, w, h)."""
    index: dict[str, tuple] = {}
    for shard in progress_bar(_readable(scan), desc="images", unit="shard", disable=None):
        status_counts: Counter = Counter()
        for row, r in _rows(fs, shard, LIGHT_COLUMNS["images"], out):
            if out.full:
                return index
            iid, status = r["image_id"], r["status"]
            status_counts[status] += 1
            if iid in index:
                other = index[iid]
                out.add(shard.url, f"duplicate image_id {iid!r} (also {other[0]} row {other[1]})", row, "ids")
                continue
            index[iid] = (shard.name, row, r["split"], r["num_hands"], r["width"], r["height"])
            unsafe = unsafe_name(iid, "image_id")
            if unsafe:  # generate writes <image_id>.png: such an id would leave its folder
                out.add(shard.url, unsafe, row, "ids")
            if status not in STATUSES:
                out.add(shard.url, f"image {iid}: status {status!r} is not one of {STATUSES}", row)
            if (status == "error") != (r["error"] is not None):
                out.add(shard.url, f"image {iid}: status {status!r} with error {r['error']!r}", row)
            n = r["num_hands"] or 0
            if status == "ok" and n <= 0 or status == "no_hands" and n != 0:
                out.add(shard.url, f"image {iid}: status {status!r} but num_hands={n}", row)
            w, h = r["width"], r["height"]
            if status != "error" and (not w or not h or w <= 0 or h <= 0):
                out.add(shard.url, f"image {iid}: bad size {w}x{h}", row)
                continue
            try:
                body = decode.body_keypoints(r)
            except RowDecodeError as exc:
                out.add(shard.url, str(exc), row, "decode")
                continue
            if body is not None and not np.isfinite(body).all():
                out.add(shard.url, f"image {iid}: body_keypoints contain NaN or infinity", row, "keypoints")
            elif body is not None:
                vis = body[body[:, 2] >= cfg.body_min_visibility]
                if not _inside(vis, w, h, cfg.body_margin * max(w, h)):
                    out.add(
                        shard.url,
                        f"image {iid}: visible body keypoints outside the {w}x{h} image "
                        f"(margin {cfg.body_margin:g} x longer side)",
                        row,
                        "keypoints",
                    )
        stats_counts = (shard.stats or {}).get("status_counts")
        if stats_counts is not None and stats_counts != dict(status_counts):  # a non-object never equals
            out.add(
                shard.url,
                f"status counts {dict(status_counts)} differ from its stats file {stats_counts}",
                kind="counts",
            )
    return index


def _check_hands(fs, scan: TableScan, images: dict | None, cfg: ValidateConfig, out: _Collector) -> Counter:
    """Cheap checks of the hands table; returns hand rows per image_id."""
    per_image: Counter = Counter()
    seen: dict[str, tuple] = {}
    for shard in progress_bar(_readable(scan), desc="hands", unit="shard", disable=None):
        for row, r in _rows(fs, shard, LIGHT_COLUMNS["hands"], out):
            if out.full:
                return per_image
            hid, iid = r["hand_id"], r["image_id"]
            if hid in seen:
                out.add(
                    shard.url,
                    f"duplicate hand_id {hid!r} (also {seen[hid][0]} row {seen[hid][1]})",
                    row,
                    "ids",
                )
                continue
            seen[hid] = (shard.name, row)
            unsafe = unsafe_name(hid, "hand_id")
            if unsafe:
                out.add(shard.url, unsafe, row, "ids")
            per_image[iid] += 1
            image = None
            if images is not None:
                image = images.get(iid)
                if image is None:
                    out.add(
                        shard.url,
                        f"hand {hid}: image_id {iid!r} has no row in the images table (orphan hand)",
                        row,
                        "ids",
                    )
                else:
                    if image[0] != shard.name:
                        out.add(
                            shard.url,
                            f"hand {hid}: its image is in images/{image[0]}, not images/{shard.name}",
                            row,
                            "layout",
                        )
                    if r["split"] != image[2]:
                        out.add(
                            shard.url,
                            f"hand {hid}: split {r['split']!r} differs from its image's {image[2]!r}",
                            row,
                        )
            if r["handedness"] not in ("left", "right", None):
                out.add(shard.url, f"hand {hid}: handedness {r['handedness']!r} is not left/right", row)
            try:
                kps = decode.hand_keypoints(r)
                ckps = decode.crop_keypoints(r)
            except RowDecodeError as exc:
                out.add(shard.url, str(exc), row, "decode")
                continue
            try:
                _check_hand_geometry(shard.url, row, r, kps, ckps, image, cfg, out)
            except Exception as exc:  # a value no check foresaw is a finding too, never a crash
                out.add(shard.url, f"hand {hid}: geometry not checkable ({type(exc).__name__}: {exc})", row)
    return per_image


def _finite_box(value) -> bool:
    """Four finite numbers (a box column may hold nulls, NaN or the wrong number of values)."""
    return isinstance(value, list) and len(value) == 4 and bool(np.isfinite(np.array(value, float)).all())


def _check_hand_geometry(url, row, r, kps, ckps, image, cfg: ValidateConfig, out: _Collector) -> None:
    hid = r["hand_id"]
    null = [name for name, a in (("keypoints", kps), ("crop_keypoints", ckps)) if a is None]
    if null:
        out.add(url, f"hand {hid}: {' and '.join(null)} null", row, "keypoints")
        return
    bad = [name for name, a in (("keypoints", kps), ("crop_keypoints", ckps)) if not np.isfinite(a).all()]
    if bad:  # every check below compares coordinates; NaN would only make them say odd things
        out.add(url, f"hand {hid}: {' and '.join(bad)} contain NaN or infinity", row, "keypoints")
        return
    # A point marked invisible (score 0, COCO's `0, 0, 0`) shapes neither the box nor the crop and may
    # lie anywhere.
    visible = kps[:, 2] > 0 if (kps[:, 2] > 0).any() else np.ones(len(kps), bool)
    x0, y0, x1, y1 = (float(v) for v in visible_bbox(kps))
    size = max(x1 - x0, y1 - y0)
    if size < 1.0:
        out.add(url, f"hand {hid}: keypoints span {size:.3g} px (a zero-size hand)", row, "keypoints")
    if image is not None:
        w, h = image[4], image[5]
        margin = cfg.keypoint_margin * size + 2.0
        if w and h and not _inside(kps[visible], w, h, margin):
            out.add(
                url,
                f"hand {hid}: keypoints outside the {w}x{h} image (margin {margin:.1f} px)",
                row,
                "keypoints",
            )
    if not _finite_box(r["bbox"]) or not np.allclose(r["bbox"], [x0, y0, x1, y1], atol=0.5):
        out.add(url, f"hand {hid}: bbox {r['bbox']} is not the keypoints' box {[x0, y0, x1, y1]}", row)
    if r["hand_size"] is None or abs(r["hand_size"] - size) > 0.5:
        out.add(url, f"hand {hid}: hand_size {r['hand_size']} but the keypoints span {size:.1f} px", row)
    s, box = r["crop_size"], r["crop_box"]
    if not s or s <= 0 or not _finite_box(box) or not box[2] - box[0] > 0 or not box[3] - box[1] > 0:
        out.add(url, f"hand {hid}: bad crop_size {s} or crop_box {box} (4 numbers with a positive side)", row)
        return
    if not _inside(ckps[visible], s, s, cfg.crop_margin * s):
        out.add(url, f"hand {hid}: crop_keypoints outside the {s}x{s} crop", row, "keypoints")
    expected = CropBox.from_box(r["crop_box"], s).to_crop(kps)
    err = float(np.abs(expected[:, :2] - ckps[:, :2]).max())
    if err > cfg.crop_tolerance * s + 0.5:
        out.add(
            url,
            f"hand {hid}: crop_keypoints differ from keypoints mapped through crop_box by {err:.2f} px",
            row,
            "keypoints",
        )


def _decode_shard(table: str, url: str, shard_path: str, row_groups: list[int], limit: int) -> list[Problem]:
    """Decode every encoded value of one shard (runs in a worker process when workers > 1)."""
    fs, _ = filesystem(url)
    out = _Collector(limit)

    shard = ShardFile(
        name=url.rsplit("/", 1)[-1], path=shard_path, url=url, stats_path="", row_groups=row_groups
    )
    for row, r in _rows(fs, shard, DECODE_COLUMNS[table], out):
        if out.full:
            break
        try:
            if table == "hands":
                decode.crop_array(r)
                if r["mask"] is not None or r["mask_method"] != NO_MASK:
                    decode.mask_array(r)
                heat = decode.heatmap_array(r)
                ckps = decode.crop_keypoints(r)
                if (r["crop_size"] or 0) > 0:  # a bad crop_size is the light pass's finding already
                    peaks = heatmap_peaks(heat, int(r["crop_size"]))
                    live = (heat.reshape(NUM_HAND_KEYPOINTS, -1).max(axis=1) > 0.05) & (ckps[:, 2] > 0)
                    pixel = r["crop_size"] / heat.shape[2]
                    err = np.abs(peaks - ckps[:, :2]).max(axis=1)
                    bad = np.flatnonzero(live & (err > pixel))
                    if len(bad):
                        out.add(
                            url,
                            f"hand {r['hand_id']}: heatmap channels {bad.tolist()} peak more than one "
                            f"heatmap pixel ({pixel:.1f} crop px) from their crop keypoints",
                            row,
                            "decode",
                        )
            elif r["status"] != "error" or r["image"] is not None:
                decode.image_array(r)
                if r["hands_mask"] is not None:
                    decode.hands_mask_array(r)
        except RowDecodeError as exc:
            out.add(url, str(exc), row, "decode")
        except Exception as exc:  # a value no check foresaw is a finding too, never a crash
            rid = r.get("hand_id") or r.get("image_id")
            out.add(url, f"{rid}: cannot decode ({type(exc).__name__}: {exc})", row, "decode")
    return out.items


def _decode_pass(fs, scans: dict[str, TableScan], cfg: ValidateConfig, out: _Collector) -> None:
    tasks = [(t, s.url, s.path, s.row_groups) for t, scan in scans.items() for s in _readable(scan)]
    bar = progress_bar(total=len(tasks), desc="decode", unit="shard", disable=None)
    if cfg.workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(cfg.workers) as pool:
            futures = [pool.submit(_decode_shard, *task, cfg.max_problems) for task in tasks]
            for fut in futures:
                out.extend(fut.result())
                bar.update()
    else:
        for task in tasks:
            out.extend(_decode_shard(*task, cfg.max_problems))
            bar.update()
            if out.full:
                break
    bar.close()


def validate_manifest(path: str, config: ValidateConfig | None = None, **overrides) -> list[Problem]:
    """All problems of the manifest root or table directory at `path` (empty list: valid).

    `overrides` set fields of `ValidateConfig` (e.g. ``decode=False``, ``workers=4``).
    """
    cfg = ValidateConfig(**{**asdict(config or ValidateConfig()), **overrides})
    fs, p = filesystem(str(path))
    p = p.rstrip("/")
    url = url_for(fs, p)
    out = _Collector(cfg.max_problems)
    if not fs.isdir(p):
        return [Problem(url, "no such manifest directory", kind="missing")]
    if any(fs.isdir(join(p, t)) for t in TABLES):
        scans = {t: scan_table(fs, join(p, t), t) for t in TABLES}
        _, rp = root_problems(fs, p, scans)
    else:
        table = infer_table(fs, p)
        if table is None:
            return [
                Problem(
                    url, "neither a manifest root (images/, hands/) nor a table directory", kind="missing"
                )
            ]
        scans, rp = {table: scan_table(fs, p, table)}, []
    for scan in scans.values():
        out.extend(scan.problems)
    out.extend(rp)

    images = _check_images(fs, scans["images"], cfg, out) if "images" in scans else None
    if "hands" in scans:
        per_image = _check_hands(fs, scans["hands"], images, cfg, out)
        if images is not None and not out.full:
            for iid, (shard, row, _, num_hands, _, _) in images.items():
                if (num_hands or 0) != per_image.get(iid, 0):
                    out.add(
                        join(scans["images"].url, shard),
                        f"image {iid}: num_hands={num_hands} but the hands table has {per_image.get(iid, 0)} rows for it",
                        row,
                    )
    if cfg.decode and not out.full:
        _decode_pass(fs, scans, cfg, out)
    if out.dropped:
        out.items.append(
            Problem(
                url,
                f"stopped listing after {cfg.max_problems} problems; {out.dropped} more not shown",
                kind="limit",
            )
        )
    return out.items
