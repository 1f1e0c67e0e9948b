"""Evaluation of generated images: pose accuracy (hands, body), hand confidence, wrist gap, FID/KID,
hand-crop FID-H/KID-H, CLIP score; each metric one entry of `registry` in a file of `metrics/`.

>>> from generation.evaluate import evaluate, compare
>>> report = evaluate("out/test_manifest", "out/generated", "out/report", inception="pt_inception.pth")
>>> compare(["runs/none/report.json", "runs/sequential/report.json"], "out/compare")
"""

from .report import compare, load_report, markdown_table
from .run import EvalConfig, evaluate

__all__ = ["EvalConfig", "compare", "evaluate", "load_report", "markdown_table"]
