"""A contact sheet of a manifest, to look at instead of reading numbers.

Top: hand crops with the mask tinted and outlined, the 21-keypoint skeleton drawn, and a caption
(label, handedness, hand size in original pixels). Bottom: a few full images with the body pose
(MediaPipe 33 converted to OpenPose 18), the hands' mask and the hand skeletons. Hands and images
are sampled from random row groups (seeded), so only a few row groups are read.

A row that cannot be drawn (a value that does not decode, NaN keypoints, a zero image size) becomes
a grey tile captioned "cannot draw", and the reason is logged as a warning naming the row: the sheet
is always made. A hand without a mask (`mask_method` none) is drawn without one.
"""

from __future__ import annotations

import io
import logging

import cv2
import numpy as np
import pyarrow.dataset as ds
from PIL import Image, PngImagePlugin

from . import decode
from .draw import contact_sheet, draw_hand, draw_openpose, overlay_mask
from .errors import ManifestError
from .partition import epoch_rng
from .pose import to_openpose18
from .reader import Manifest, ManifestTable, build_filter, open_manifest
from .schema import NO_MASK
from .storage import atomic_write_bytes, filesystem

logger = logging.getLogger(__name__)

HAND_COLUMNS = [
    "hand_id",
    "crop",
    "crop_size",
    "mask",
    "mask_method",
    "crop_keypoints",
    "label",
    "handedness",
    "hand_size",
]
IMAGE_COLUMNS = [
    "image_id",
    "image",
    "image_width",
    "image_height",
    "width",
    "height",
    "hands_mask",
    "body_keypoints",
    "label",
    "num_hands",
    "status",
]


def sample_rows(table: ManifestTable, columns: list[str], n: int, seed: int = 0, filter=None) -> list[dict]:
    """Up to `n` rows from randomly chosen row groups and rows (seeded), reading only as many groups as needed."""
    units = table.units()
    rng = epoch_rng(seed, 0)
    rows: list[dict] = []
    for i in rng.permutation(len(units)):
        if len(rows) >= n:
            break
        got = table.read_unit(units[i], columns, filter)
        picked = np.sort(rng.permutation(got.num_rows)[: n - len(rows)])
        rows.extend(got.take(picked).to_pylist())
    return rows


def hand_tile(row: dict, tile: int = 192) -> np.ndarray:
    """A crop at `tile` x `tile` with its mask and skeleton drawn at the tile's resolution (crisp lines)."""
    crop, kps = decode.crop_array(row), decode.crop_keypoints(row)
    scale = tile / crop.shape[0]
    big = cv2.resize(crop, (tile, tile), interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    if row.get("mask") is not None or row.get("mask_method") != NO_MASK:
        mask = decode.mask_array(row)
        big = overlay_mask(
            big, cv2.resize(mask.astype(np.uint8), (tile, tile), interpolation=cv2.INTER_NEAREST)
        )
    pts = kps.copy()
    pts[:, :2] *= scale
    return draw_hand(big, pts, thickness=2, radius=3)


def drawn(draw, row: dict, size: tuple[int, int], *args) -> tuple[np.ndarray, bool]:
    """(`draw(row, *args)`, True), or (a grey `size` = (w, h) tile, False) with the reason logged when
    the row cannot be drawn: one bad row must not cost the whole sheet."""
    try:
        return draw(row, *args), True
    except Exception as exc:
        message = str(exc) if isinstance(exc, ManifestError) else f"{type(exc).__name__}: {exc}"
        rid = row.get("hand_id") or row.get("image_id")
        logger.warning("preview: cannot draw %s: %s", rid, " ".join(message.split()))
        return np.full((size[1], size[0], 3), 96, np.uint8), False


def hand_caption(row: dict) -> str:
    side = {"left": "L", "right": "R"}.get(row.get("handedness"), "?")
    size = row.get("hand_size")
    return (
        f"{row.get('label') or '-'} {side} {size:.0f}px"
        if size is not None and np.isfinite(size)
        else f"{row.get('label') or '-'} {side}"
    )


def image_tile(row: dict, hands: list[dict], longest: int = 384) -> np.ndarray:
    """The stored image with hands mask, body pose and hand skeletons, scaled so its longer side is `longest`."""
    image = decode.image_array(row)
    h, w = image.shape[:2]
    s = longest / max(h, w)
    out = cv2.resize(
        image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    )
    to_tile = out.shape[1] / float(row["width"])  # original pixels -> tile pixels
    if row.get("hands_mask") is not None:
        mask = decode.hands_mask_array(row).astype(np.uint8)
        out = overlay_mask(
            out, cv2.resize(mask, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
        )
    body = decode.body_keypoints(row)
    if body is not None:
        op = to_openpose18(body)
        op[:, :2] *= to_tile
        out = draw_openpose(out, op, stickwidth=3, radius=3)
    for hand in hands:
        kps = decode.hand_keypoints(hand)
        kps[:, :2] *= to_tile
        out = draw_hand(out, kps, thickness=1, radius=2)
    return out


def _title(text: str, width: int, height: int = 28) -> np.ndarray:
    bar = np.full((height, width, 3), 20, np.uint8)
    cv2.putText(bar, text, (8, height - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (240, 240, 240), 1, cv2.LINE_AA)
    return bar


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    """Write `text` on a dark strip along the tile's top edge."""
    out = tile.copy()
    out[:18] = (out[:18] * 0.3).astype(np.uint8)
    scale = 0.42
    width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    if width > out.shape[1] - 8:  # shrink to fit narrow (portrait) tiles
        scale *= (out.shape[1] - 8) / width
    cv2.putText(out, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, scale, (240, 240, 240), 1, cv2.LINE_AA)
    return out


def _rows_of(
    tiles: list[np.ndarray], captions: list[str], height: int, width: int, gap: int = 4
) -> np.ndarray:
    """Tiles scaled to a common `height`, captioned, laid left to right and wrapped at `width` pixels."""
    scaled = [
        _caption(
            cv2.resize(
                t, (max(1, round(t.shape[1] * height / t.shape[0])), height), interpolation=cv2.INTER_AREA
            ),
            c,
        )
        for t, c in zip(tiles, captions)
    ]  # the caption goes on after scaling so every tile's text has the same size
    rows, row, used = [], [], 0
    for t in scaled:
        if row and used + t.shape[1] > width:
            rows.append(row)
            row, used = [], 0
        row.append(t)
        used += t.shape[1] + gap
    rows.append(row)
    lines = []
    for r in rows:
        spaced = [x for t in r for x in (t, np.full((height, gap, 3), 32, np.uint8))]
        lines.append(np.concatenate(spaced, axis=1))
    return _stack([np.pad(x, ((0, gap), (0, 0), (0, 0)), constant_values=32) for x in lines])


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    width = max(p.shape[1] for p in parts)
    padded = [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=32) for p in parts]
    return np.concatenate(padded, axis=0)


# The PNG text chunk that marks a sheet `make_preview` wrote (the card replaces only such a file).
PREVIEW_SOFTWARE = "handfirst-manifests preview"


def is_preview_png(fs, path: str) -> bool:
    """Whether `path` is a preview sheet `make_preview` wrote (its text chunk, read from the header)."""
    with fs.open(path, "rb") as f, Image.open(f) as im:
        return im.format == "PNG" and im.info.get("Software") == PREVIEW_SOFTWARE


def make_preview(
    manifest: Manifest | str,
    out: str | None = None,
    n: int = 24,
    images: int = 4,
    seed: int = 0,
    tile: int = 160,
    columns: int = 8,
) -> np.ndarray:
    """Render the preview sheet as (H, W, 3) uint8; also write it as PNG to `out` (path or URL) if given."""
    m = manifest if isinstance(manifest, Manifest) else open_manifest(manifest)
    name = str(manifest) if isinstance(manifest, str) else m.url  # as the user named it
    parts = []
    if "hands" in m.tables and n > 0:
        rows = sample_rows(m.hands, HAND_COLUMNS, n, seed)
        drawn_rows = [drawn(hand_tile, r, (tile, tile), tile) for r in rows]
        tiles = [t for t, _ in drawn_rows]
        captions = [hand_caption(r) if ok else "cannot draw" for r, (_, ok) in zip(rows, drawn_rows)]
        sheet = contact_sheet(tiles, columns=columns, tile=tile, captions=captions)
        parts += [
            _title(
                f"{len(rows)} of {m.hands.num_rows} hands: crop, mask, keypoints  ({name})", sheet.shape[1]
            ),
            sheet,
        ]
    if "images" in m.tables and images > 0:
        rows = sample_rows(m.images, IMAGE_COLUMNS, images, seed, build_filter("images", status="ok"))
        hands_by_image: dict[str, list] = {}
        if rows and "hands" in m.tables:
            ids = build_filter("hands", filter=ds.field("image_id").isin([r["image_id"] for r in rows]))
            found = m.hands.read(["image_id", "keypoints"], ids).to_pylist()
            for h in found:
                hands_by_image.setdefault(h["image_id"], []).append(h)
        drawn_rows = [
            drawn(image_tile, r, (2 * tile, 2 * tile), hands_by_image.get(r["image_id"], []), 2 * tile)
            for r in rows
        ]
        tiles = [t for t, _ in drawn_rows]
        caps = [
            f"{r['label'] or '-'}, {r['num_hands']} hand(s), {r['width']}x{r['height']}"
            if ok
            else "cannot draw"
            for r, (_, ok) in zip(rows, drawn_rows)
        ]
        if tiles:
            sheet = _rows_of(tiles, caps, height=tile * 3 // 2, width=columns * tile)
            parts += [
                _title("images: body pose (OpenPose 18), hands mask, hand keypoints", sheet.shape[1]),
                sheet,
            ]
    if not parts:
        parts = [_title(f"{name}: nothing to show", 480)]
    result = _stack(parts)
    if out is not None:
        buf = io.BytesIO()
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", PREVIEW_SOFTWARE)
        Image.fromarray(result).save(buf, format="PNG", pnginfo=info)
        fs, path = filesystem(str(out))
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        atomic_write_bytes(fs, path, buf.getvalue())
        logger.info("wrote preview %s (%dx%d)", out, result.shape[1], result.shape[0])
    return result
