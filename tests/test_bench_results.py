"""Committed results carry no path of the machine that made them: the benchmarks write paths relative to
the project (`bench._common.portable`), and the compare table shows paths relative to where it ran."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import PROJECT, portable  # noqa: E402

MACHINE_PATH = re.compile(r"(?<![\w.:/])/(?:home|root|tmp|work|Users|private|var|mnt)/")


def test_committed_results_docs_and_configs_name_no_machine_path():
    # `--quick` plumbing results are git-ignored, never committed: their work folder may lie anywhere.
    results = [f for f in ROOT.glob("bench/results/*") if "_quick" not in f.name]
    files = [*results, *ROOT.glob("docs/*.md"), *ROOT.glob("configs/**/*.json")]
    files.append(ROOT / "README.md")
    found = [
        f"{f.relative_to(ROOT)}:{n}"
        for f in files
        if f.suffix in (".json", ".md")
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert found == []


def test_portable_makes_paths_relative_to_the_project_and_keeps_urls():
    result = {
        "manifest": f"{PROJECT}/out/learns/manifest",
        "line": f"generated={PROJECT}/out/a, input={PROJECT.parent}/shared/data/hagrid_mini upscaled",
        "work": "/tmp/abl_full",
        "urls": ["https://example.org/a/b.jpg", "s3://bucket/k/x.tar"],
        "ratio": "1/2",
        "root": str(PROJECT),
    }
    assert portable(result) == {
        "manifest": "out/learns/manifest",
        "line": "generated=out/a, input=../shared/data/hagrid_mini upscaled",
        "work": "<outside the project>/abl_full",
        "urls": ["https://example.org/a/b.jpg", "s3://bucket/k/x.tar"],
        "ratio": "1/2",
        "root": ".",
    }


def test_the_compare_table_shows_paths_below_the_working_folder_relative(tmp_path, monkeypatch):
    from generation.evaluate.report import shown_path

    monkeypatch.chdir(tmp_path)
    assert shown_path(str(tmp_path / "out" / "m")) == "out/m"
    assert shown_path("/elsewhere/m") == "/elsewhere/m"  # outside it: kept, as the user gave it
    assert shown_path(0.5) == 0.5
