"""``metrics.jsonl``: one JSON object per logged step, appended and flushed as training goes, and
``curves.png`` beside it (the losses and the learning rate against the step), redrawn at each write.

A resumed run first drops the lines past the checkpoint's step, so the file always reads as one
continuous curve whatever the number of restarts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
# Record keys that are bookkeeping, not curves.
NOT_CURVES = ("step", "epoch", "samples_seen", "steps_per_s", "samples_per_s")


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


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [
        (r["step"], float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and "step" in r
    ]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(records: list[dict], path: str) -> str | None:
    """Draw the losses (the ``*loss*`` keys), the validation metrics (``val_*``, when any) and the learning
    rate of `records` against the step into `path` (replaced whole); None when there is nothing to draw."""
    from matplotlib.figure import Figure

    keys = [k for k in dict.fromkeys(k for r in records for k in r) if k not in NOT_CURVES]
    panels = [
        (
            "losses",
            "loss (mean over the logged steps)",
            [k for k in keys if "loss" in k and not k.startswith("val_")],
        ),
        ("validation", "value", [k for k in keys if k.startswith("val_")]),
        ("learning rate", "learning rate", ["lr"] if "lr" in keys else []),
    ]
    panels = [p for p in panels if any(_series(records, k)[0] for k in p[2])]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.6))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9, wspace=0.35)
    for ax, (title, ylabel, names) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for key in names:
            steps, values = _series(records, key)
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, ms=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        if len(names) > 1 or title == "validation":
            ax.legend(fontsize=8)
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, path)
    return path


class CurvesDrawer:
    """Redraws ``curves.png`` in a thread of its own, so a training step never waits for matplotlib. A
    request made while a drawing is under way is drawn next (requests in between are merged: the latest
    records win); `close` waits for the last one."""

    def __init__(self, path: str):
        self.path = path
        self._pending: list[dict] | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def request(self, records: list[dict]) -> None:
        with self._cond:
            self._pending = list(records)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="curves", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                records, self._pending = self._pending, None
                if records is None:
                    return
            try:
                plot_curves(records, self.path)
            except Exception as exc:  # noqa: BLE001 - a picture must not stop a run
                logger.warning("could not draw %s: %s", self.path, exc)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()


class MetricsLog:
    def __init__(self, run: str, enabled: bool = True, tracker=None):
        """`tracker`: an `accelerate.Accelerator` whose trackers (``--report-to``) get every record too."""
        self.tracker = tracker
        self.path = os.path.join(run, METRICS_FILE)
        self.curves = os.path.join(run, CURVES_FILE)
        self.enabled = enabled
        self._records: list[dict] | None = None  # read once, then kept in step with the file
        self._drawer = CurvesDrawer(self.curves)

    def truncate_after(self, step: int) -> None:
        """Keep only records with ``step <= step`` (called when resuming from that step)."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)
        self._records = kept

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: _clean(v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        if self._records is None:
            self._records = read_metrics(self.path)
        else:
            self._records.append(clean)
        self._drawer.request(self._records)
        if self.tracker is not None:
            numbers = {k: v for k, v in clean.items() if k != "step" and isinstance(v, (int, float))}
            self.tracker.log(numbers, step=int(record["step"]))

    def close(self) -> None:
        """Wait until ``curves.png`` shows every record written."""
        self._drawer.close()
