"""Small hostile files at full size cost no more memory than the settings allow.

Each case builds a file of a few kilobytes that expands to hundreds of megabytes or gigabytes when
trusted (a Parquet cell of zeros, a caption in img2dataset's sample list, sparse tar members, PNG cells
of 13000 x 13000 pixels, a spec of 100k hands), then reads it in a fresh Python process under an
address-space limit (`ulimit -v`, so a regression fails there instead of exhausting the machine). The
process reports its own peak resident set, children included, and that peak must stay under
`PEAK_BOUND_MB`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hostile_files import png_bomb_manifest, sparse_tar

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PEAK_BOUND_MB = 1536
ADDRESS_SPACE_CAP = 12 * 2**30  # generous: torch alone maps a few GB of address space
REPORT = """
import resource
from peak_memory import own_peak_kb
print("PEAK_KB", max(own_peak_kb(), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
"""


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


def build(code: str) -> None:
    """Run `code` (which writes a hostile file) in its own process: writing a Parquet bomb holds its
    expanded cell once, and this process must not carry that into the measured ones."""
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=_env(), cwd=REPO, check=True, timeout=900
    )


def run_measured(code: str) -> tuple[float, str]:
    """(peak RSS in MB, stdout) of `code` run in a fresh process under the address-space cap. The shell
    sets the cap and execs Python; the peak is that program's own high-water mark (`own_peak_kb`), so the
    size of this test process, which the fork copies before the exec, is not counted."""
    script = textwrap.dedent(code) + REPORT
    proc = subprocess.run(
        ["bash", "-c", f'ulimit -v {ADDRESS_SPACE_CAP // 1024} && exec "$0" -c "$1"', sys.executable, script],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak_mb = int(proc.stdout.rsplit("PEAK_KB", 1)[1]) / 1024
    print(f"peak RSS {peak_mb:.0f} MB")  # shown with -s
    return peak_mb, proc.stdout


def test_a_parquet_cell_bomb_is_refused_within_the_bound(tmp_path):
    src = tmp_path / "bomb.parquet"
    build(
        f"from pathlib import Path; from hostile_files import parquet_cell_bomb as b; b(Path({str(src)!r}), 800_000_000)"
    )
    assert src.stat().st_size < 64_000
    peak, out = run_measured(
        f"""
        from prep.config import PrepConfig
        from prep.sources.parquet import parquet_records, parquet_units
        cfg = PrepConfig(input={str(src)!r}, format="parquet")
        for unit in parquet_units(cfg):
            for r in parquet_records(unit, cfg):
                print("ROW", r.image_id, r.data is None, r.error)
        """
    )
    assert out.count("ROW") == 2 and "has a page of 800000" in out
    assert peak < PEAK_BOUND_MB, f"{peak:.0f} MB"


def test_a_caption_bomb_in_the_sample_list_is_refused_within_the_bound(tmp_path):
    tar = tmp_path / "shards" / "00000.tar"
    build(
        f"from pathlib import Path; from hostile_files import caption_sidecar as b; b(Path({str(tar.parent)!r}), 600_000_000)"
    )
    assert (tmp_path / "shards" / "00000.parquet").stat().st_size < 64_000
    peak, out = run_measured(
        f"""
        from prep.config import PrepConfig
        from prep.sources.webdataset import tar_records, tar_units
        cfg = PrepConfig(input={str(tar)!r}, format="webdataset")
        for r in tar_records(tar_units(cfg)[0], cfg):
            print("ROW", r.image_id, r.source_caption is None, r.error)
        """
    )
    assert "ROW k True img2dataset status 'unreadable sample list'" in out
    assert peak < PEAK_BOUND_MB, f"{peak:.0f} MB"


def test_sparse_tar_members_are_bounded_per_sample(tmp_path):
    tar = sparse_tar(tmp_path / "sparse.tar", 200_000_000)
    assert tar.stat().st_size < 16_000
    peak, out = run_measured(
        f"""
        from prep.config import PrepConfig
        from prep.sources.webdataset import tar_records, tar_units
        cfg = PrepConfig(input={str(tar)!r}, format="webdataset")
        for r in tar_records(tar_units(cfg)[0], cfg):
            print("ROW", r.image_id, r.error)
        """
    )
    assert "in all its members" in out
    assert peak < PEAK_BOUND_MB, f"{peak:.0f} MB"


@pytest.fixture(scope="module")
def png_bombs(tmp_path_factory):
    from manifests.synthetic import make_synthetic_manifest

    root = tmp_path_factory.mktemp("png_bombs")
    make_synthetic_manifest(str(root / "m"), num_images=12)
    return png_bomb_manifest(root / "m", root / "bombs", 13_000, rows=1000)  # every row of shard 0


def test_validate_refuses_png_bombs_within_the_bound(png_bombs):
    peak, out = run_measured(
        f"""
        from manifests.validate import validate_manifest
        for p in validate_manifest({str(png_bombs)!r}):
            print("FINDING", p.reason)
        """
    )
    assert "header is 13000x13000" in out
    assert peak < PEAK_BOUND_MB, f"{peak:.0f} MB"


@pytest.mark.parametrize("dataset", ["HandCropDataset", "BodyDataset"])
def test_the_datasets_refuse_png_bombs_within_the_bound(png_bombs, dataset):
    peak, out = run_measured(
        f"""
        from manifests.datasets import {dataset}
        from manifests.errors import RowDecodeError
        from manifests.reader import open_manifest
        try:
            list({dataset}(open_manifest({str(png_bombs)!r}), shuffle=False))
        except RowDecodeError as exc:
            print("REFUSED", exc)
        """
    )
    assert "REFUSED" in out and "header is 13000x13000" in out
    assert peak < PEAK_BOUND_MB, f"{peak:.0f} MB"


def test_train_hand_refuses_png_bombs_within_the_bound(png_bombs, tmp_path):
    argv = ["train-hand", "--manifest", str(png_bombs), "--out", str(tmp_path / "run"), "--preset", "tiny",
            "--steps", "50", "--batch-size", "2", "--checkpoint-every", "0", "--validate-every", "0",
            "--log-level", "WARNING"]  # fmt: skip
    peak, out = run_measured(
        f"""
        import contextlib, io
        from generation.cli import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            print("RC", main({argv!r}))
        print("ERR", err.getvalue().strip().splitlines()[-1])
        """
    )
    assert "RC 1" in out and "header is 13000x13000" in out
    assert peak < PEAK_BOUND_MB, f"{peak:.0f} MB"


def test_generate_refuses_100k_hands_within_the_bound(tiny_runs, tmp_path):
    hand = [[20 + i, 20 + i] for i in range(21)]
    spec = {"width": 64, "height": 64, "hands": [{"handedness": "left", "keypoints": hand}] * 100_000}
    (tmp_path / "many.json").write_text(json.dumps(spec))
    argv = ["generate", "--spec", str(tmp_path / "many.json"), "--hand-model", tiny_runs[0],
            "--body-model", tiny_runs[1], "--out", str(tmp_path / "out"), "--hand-steps", "1", "--steps", "1",
            "--no-detect"]  # fmt: skip
    peak, out = run_measured(
        f"""
        import contextlib, io
        from generation.cli import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            print("RC", main({argv!r}))
        print("ERR", err.getvalue().strip().splitlines()[-3:])
        """
    )
    assert "over max_hands 64" in out
    assert peak < PEAK_BOUND_MB, f"{peak:.0f} MB"
