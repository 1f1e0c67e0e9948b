"""The notebooks in notebooks/: committed without outputs, and each one runs top to bottom on small data.

Execution uses nbclient with the `python3` kernel of this interpreter (ipykernel). Parameters reach the
notebooks through environment variables read by their `parameters` cell, so each run points at temp
folders and the small `hagrid_manifest` built once per session. Any exception in any cell fails the test.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell; a hung kernel fails instead of stalling CI


def unstripped(nb) -> list[str]:
    """What keeps a notebook from being committed: cells with outputs, execution counts or timing metadata."""
    problems = []
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        if c.get("outputs"):
            problems.append(f"cell {i} has outputs")
        if c.get("execution_count") is not None:
            problems.append(f"cell {i} has an execution count")
        if "execution" in c.metadata:
            problems.append(f"cell {i} has execution timing metadata")
    return problems


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs(path):
    """Outputs stay out of git (run `nbstripout --install` once per clone to strip them on commit)."""
    problems = unstripped(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name}: {problems}; strip it with `nbstripout {path}`"


def test_the_output_check_catches_an_executed_cell():
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    nb = new_notebook(cells=[new_markdown_cell("# t"), new_code_cell("1 + 1")])
    assert unstripped(nb) == []
    nb.cells[1].execution_count = 3
    nb.cells[1].outputs = [new_output("execute_result", {"text/plain": "2"}, execution_count=3)]
    nb.cells[1].metadata["execution"] = {"shell.execute_reply": "2026-01-01T00:00:00Z"}
    assert unstripped(nb) == [
        "cell 1 has outputs",
        "cell 1 has an execution count",
        "cell 1 has execution timing metadata",
    ]


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_notebook_has_one_parameters_cell_read_from_the_environment(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, (
        f"{path.name}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
    )
    assert 'os.environ.get("HANDFIRST_' in tagged[0].source
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "first cell: a title"


def execute(path: Path, env: dict[str, str], monkeypatch) -> nbformat.NotebookNode:
    """Run the notebook in a fresh kernel started in notebooks/, with `env` added to its environment."""
    from nbclient import NotebookClient

    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any exception
    return nb


def outputs(nb) -> tuple[list[bytes], str]:
    """(PNG images, all text: streams, plain and Markdown results) the executed notebook produced."""
    images, text = [], []
    for c in nb.cells:
        for o in c.get("outputs", []):
            if o.get("output_type") == "error":
                pytest.fail(f"cell raised {o['ename']}: {o['evalue']}")
            if o.get("output_type") == "stream":
                text.append(o["text"])
            data = o.get("data", {})
            if "image/png" in data:
                images.append(base64.b64decode(data["image/png"]))
            for kind in ("text/plain", "text/markdown"):
                if kind in data:
                    text.append(data[kind])
    return images, "\n".join(text)


@pytest.mark.slow
@pytest.mark.data
def test_explore_manifest_runs(hagrid_manifest, monkeypatch):
    nb = execute(NOTEBOOKS / "explore_manifest.ipynb", {"HANDFIRST_MANIFEST": hagrid_manifest}, monkeypatch)
    images, text = outputs(nb)
    assert len(images) >= 9, f"expected the notebook's 9 figures, got {len(images)}"
    assert all(png.startswith(b"\x89PNG") for png in images)
    n_images = json.loads((hagrid_manifest / "_manifest.json").read_text())["tables"]["images"]["num_rows"]
    assert f"{n_images} images" in text
    assert "dask:" in text and "row-group stream:" in text
    # The dask count and the streamed count of the filtering example agree.
    dask_n = int(text.split("dask:")[1].split()[0])
    stream_n = int(text.split("row-group stream:")[1].split()[0])
    assert dask_n == stream_n
    assert "pixel_values" in text and "(4, 3, 128, 128)" in text


@pytest.mark.slow
@pytest.mark.data
def test_annotation_quality_runs(hagrid_manifest, data_dir, tmp_path, monkeypatch):
    env = {
        "HANDFIRST_MANIFEST": hagrid_manifest,
        "HANDFIRST_DATA": data_dir,
        "HANDFIRST_QUALITY_OUT": tmp_path,
    }
    nb = execute(NOTEBOOKS / "annotation_quality.ipynb", env, monkeypatch)
    images, text = outputs(nb)
    assert len(images) >= 6, f"expected the notebook's figures, got {len(images)}"
    # The error demonstration: one good photo and three broken files all come out as rows.
    assert "status counts: {'error': 3, 'ok': 1}" in text
    assert text.count("ImageDecodeError") >= 3
    # Both truth sets were annotated into QUALITY_OUT and scored.
    for name in ("freihand", "onehand10k"):
        assert (tmp_path / "keypoints_gt" / name / "_manifest.json").is_file()
    assert "hands:  8 in truth" in text and "hands:  4 in truth" in text
    assert "hardest:" in text and "masks disagree with their keypoints" in text


@pytest.mark.slow
@pytest.mark.data
def test_generation_walkthrough_runs(hagrid_manifest, tmp_path, monkeypatch):
    monkeypatch.delenv("HANDFIRST_HAND_MODEL", raising=False)
    monkeypatch.delenv("HANDFIRST_BODY_MODEL", raising=False)
    # The tiny-model path, even where bench/learns.py has left mini runs in out/learns.
    monkeypatch.setenv("HANDFIRST_MINI_RUNS", str(tmp_path / "no_mini_runs"))
    env = {
        "HANDFIRST_MANIFEST": hagrid_manifest,
        "HANDFIRST_GENERATION_OUT": tmp_path,
        "HANDFIRST_EVAL_IMAGES": 2,
    }
    nb = execute(NOTEBOOKS / "generation_walkthrough.ipynb", env, monkeypatch)
    images, text = outputs(nb)
    assert len(images) >= 9, f"expected the notebook's figures, got {len(images)}"
    # The notebook's own step-by-step results equal the pipeline's single call (it asserts this too).
    for what in (
        "stage-1 hand images",
        "hand masks (after fallback)",
        "canvas",
        "keep weights K_i",
        "kept shares",
    ):
        assert f"same: {what}" in text
    assert "DIFFERENT" not in text
    # generate wrote image + sidecar per evaluated image; evaluate wrote both reports.
    pngs = sorted(p for p in (tmp_path / "generated").glob("*.png") if not p.name.endswith("_overview.png"))
    assert len(pngs) == 2 and all(p.with_suffix(".json").is_file() for p in pngs)
    real = json.loads((tmp_path / "eval" / "real" / "report.json").read_text())
    generated = json.loads((tmp_path / "eval" / "generated" / "report.json").read_text())
    assert real["images"]["evaluated"] == generated["images"]["evaluated"] == 2
    assert (
        real["hands"]["detected_share"] == 1.0
    )  # the real photos are the ceiling: their own hands are found
    assert "| real |" in text
