"""The evaluation metrics, one module each; importing this package registers them all.

Each module of this folder declares its `generation.evaluate.registry.Metric` entries with
`register`, so a new metric is a new file here (and its test): the evaluation driver, the report
columns, the Markdown table and ``--compare`` all read `ordered()`.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..registry import METRICS, Metric

for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")


def ordered() -> list[Metric]:
    """Every registered metric in table order (`Metric.order`, then name)."""
    return sorted(METRICS.values(), key=lambda m: (m.order, m.name))


__all__ = ["METRICS", "ordered"]
