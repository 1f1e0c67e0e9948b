"""Errors raised by the manifest reader, and the `Problem` records that `validate` collects.

Every message names the file (and the row or row group where there is one) so a bad shard can be
found without a debugger.
"""

from __future__ import annotations

from dataclasses import dataclass


class ManifestError(Exception):
    """Base class: the manifest on disk does not honour the contract."""


class MissingFileError(ManifestError, FileNotFoundError):
    """A file the contract requires (shard, stats file, `_manifest.json`) is absent."""


class CorruptShardError(ManifestError):
    """A Parquet shard cannot be read: truncated, overwritten, or not Parquet at all."""


class SchemaMismatchError(ManifestError):
    """A shard was written with another schema version or with different field types."""


class CountMismatchError(ManifestError):
    """Row counts disagree between a shard, its stats file and `_manifest.json`."""


class RowDecodeError(ManifestError):
    """An encoded value of one row (crop, mask, heatmap, image) does not decode to its stated shape."""


@dataclass(frozen=True)
class Problem:
    """One finding of `validate`: where (file, optional row) and why.

    `row` is the 0-based row index inside `file`; `kind` groups findings (schema, counts, decode, ...).
    """

    file: str
    reason: str
    row: int | None = None
    kind: str = "contract"

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row}"
        return f"{where}: {self.reason}"

    def to_dict(self) -> dict:
        return {"file": self.file, "row": self.row, "kind": self.kind, "reason": self.reason}
