"""A rerun whose shards are all complete uses the saved plan instead of parsing the input again."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

import prep.runner
from prep.config import PrepConfig
from prep.plan_cache import PLAN_FILE
from prep.runner import run

STANDIN = "prep_standin:StandInAnnotator"


@pytest.fixture
def photos(tmp_path, data_dir):
    src = tmp_path / "in"
    for i, p in enumerate(sorted((data_dir / "hagrid_mini").rglob("*.jpg"))[:6]):
        (src / f"g{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, src / f"g{i % 2}" / p.name)
    return src


def cfg(src, out, **kw):
    return PrepConfig(
        **{
            **dict(
                input=str(src),
                out=str(out),
                annotator=STANDIN,
                label_from_dir=True,
                shard_size=2,
                workers=1,
                progress=False,
            ),
            **kw,
        }
    )


@pytest.fixture
def planned(monkeypatch):
    """Counts the runs that parse the input (plan_input)."""
    calls = []
    real = prep.runner.plan_input
    monkeypatch.setattr(prep.runner, "plan_input", lambda config: calls.append(1) or real(config))
    return calls


def ids(out):
    return sorted(r["image_id"] for r in pq.read_table(f"{out}/images").to_pylist())


def test_a_complete_rerun_does_not_parse_the_input(photos, tmp_path, planned):
    out = tmp_path / "m"
    first = run(cfg(photos, out))
    assert first["shards"]["run"] == 3 and len(planned) == 1 and (out / PLAN_FILE).exists()
    again = run(cfg(photos, out))
    assert again["shards"] == {"run": 0, "skipped": 3, "failed": 0} and len(planned) == 1
    assert again["manifest"]["images"] == 6


@pytest.mark.slow  # several Dask runs
def test_a_changed_input_or_an_incomplete_output_plans_again(photos, tmp_path, planned):
    out = tmp_path / "m"
    run(cfg(photos, out))
    rows = ids(out)
    for stats in (out / "images" / "_stats").glob("shard-00001.json"):
        stats.unlink()  # a shard whose worker died: the saved plan alone cannot redo it
    redo = run(cfg(photos, out))
    assert len(planned) == 2 and redo["shards"] == {"run": 1, "skipped": 2, "failed": 0} and ids(out) == rows
    extra = next(photos.rglob("*.jpg"))
    shutil.copy(extra, photos / "g0" / "zz_new.jpg")  # a new photo: the input's listing changed
    grown = run(cfg(photos, out))
    assert len(planned) == 3 and grown["manifest"]["images"] == 7
    run(cfg(photos, out, limit=4, overwrite=True))  # other --limit: another plan
    assert len(planned) == 4 and len(ids(out)) == 4
