"""Small files that expand to large ones: each is a few kilobytes on disk and costs its size in memory
to a reader that trusts it. Sizes are arguments, so unit tests build them small under small caps and
`test_memory_bombs` builds them at full size."""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

JPEG_START = b"\xff\xd8\xff"


def parquet_cell_bomb(path: Path, cell_bytes: int, **columns) -> Path:
    """Two rows (`a`, `b`); row `a`'s `jpg` cell is `cell_bytes` zeros, which zstd keeps to a few KB."""
    table = pa.table({"key": ["a", "b"], "jpg": [b"\0" * cell_bytes, JPEG_START], **columns})
    pq.write_table(table, path, compression="zstd", compression_level=19)
    return path


def caption_sidecar(folder: Path, caption_bytes: int, txt: bytes | None = None) -> Path:
    """img2dataset's `00000.tar` with one sample `k`, and its `00000.parquet` listing `k` with a
    caption of `caption_bytes`; `txt` adds a `k.txt` member."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "key": ["k"],
            "status": ["success"],
            "error_message": pa.array([None], pa.string()),
            "url": ["https://example.org/k.jpg"],
            "caption": ["a" * caption_bytes],
        }
    )
    pq.write_table(table, folder / "00000.parquet", compression="zstd", compression_level=19)
    with tarfile.open(folder / "00000.tar", "w") as tar:
        for name, data in [("k.jpg", JPEG_START), *([("k.txt", txt)] if txt is not None else [])]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return folder / "00000.tar"


def _octal(value: int, width: int) -> bytes:
    return b"%0*o" % (width - 1, value) + b"\0"


def sparse_member(name: str, real_size: int, data: bytes = JPEG_START) -> bytes:
    """A GNU sparse tar member: `data` at offset 0, then a hole up to `real_size` bytes."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:398] = _octal(0, 12)  # first (offset, numbytes) of the sparse map
    header[398:410] = _octal(len(data), 12)
    header[483:495] = _octal(real_size, 12)
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    return bytes(header) + data + b"\0" * (-len(data) % 512)


SPARSE_EXTS = ("jpg", "png", "webp", "bmp", "gif", "tif", "tiff", "jpeg")


def sparse_tar(path: Path, member_bytes: int, key: str = "k") -> Path:
    """A tar of eight sparse members of `member_bytes` each, sharing one key (one per image extension)."""
    body = b"".join(sparse_member(f"{key}.{ext}", member_bytes) for ext in SPARSE_EXTS)
    path.write_bytes(body + b"\0" * 1024)
    return path


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(side: int) -> bytes:
    """A 1-bit greyscale PNG of `side` x `side` zeros: 20 KB at 13000 px, gigabytes once decoded to RGB.
    Written row by row, so building it costs no more than the file."""
    row = b"\0" * (1 + (side + 7) // 8)
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def png_bomb_manifest(src: Path, dst: Path, side: int, rows: int = 1) -> Path:
    """A copy of the manifest at `src` whose first `rows` hands' crops and masks, and first `rows`
    images' images and hands masks, are `side`-pixel PNG bombs (the rows keep their stated shapes)."""
    from manifest_edits import rewrite

    bomb = png_bomb(side)

    def edit(idx, images, hands):
        for rows_of, columns in ((hands, ("crop", "mask")), (images, ("image", "hands_mask"))):
            for i in range(min(rows, len(rows_of)) if idx == 0 else 0):
                rows_of[i] = dict(rows_of[i], **dict.fromkeys(columns, bomb))
        return images, hands

    return rewrite(src, dst, edit)
