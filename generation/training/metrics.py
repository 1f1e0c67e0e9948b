"""``metrics.jsonl``: one JSON object per logged step, appended and flushed as training goes.

A resumed run first drops the lines past the checkpoint's step, so the file always reads as one
continuous curve whatever the number of restarts.
"""

from __future__ import annotations

import json
import logging
import math
import os

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str) -> list[dict]:
    """All records of a metrics.jsonl (a run folder or the file itself)."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            # A process killed mid-append leaves a cut-off last line; resuming is exactly that case.
            if i != len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON") from None
            logger.warning("%s: dropping a cut-off last line (the run was killed while logging)", path)
    return records


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN; keep it readable
    return value


class MetricsLog:
    def __init__(self, run: str, enabled: bool = True):
        self.path = os.path.join(run, METRICS_FILE)
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Keep only records with ``step <= step`` (called when resuming from that step)."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
