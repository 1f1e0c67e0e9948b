"""Generation across processes: `accelerate launch` splits the selected rows, each row is drawn once, and
the files are those of one process with the same seeds."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from generation.cli import main
from generation.processes import ProcessShare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_one_process_takes_every_row_and_keeps_the_failures_file():
    share = ProcessShare()
    assert share.take(["a", "b", "c"]) == ["a", "b", "c"]
    assert share.failures_file() == "failures.jsonl"
    assert share.record() == {"process_index": 0, "num_processes": 1}
    assert ProcessShare(1, 2).failures_file() == "failures.process-1-of-2.jsonl"


def _args(manifest, runs, out):
    return [
        "generate",
        "--from-manifest",
        str(manifest),
        "--split",
        "all",
        "--limit",
        "6",
        "--hand-model",
        runs[0],
        "--body-model",
        runs[1],
        "--out",
        str(out),
        "--size",
        "128",
        "--steps",
        "2",
        "--no-detect",
        "--device",
        "cpu",
    ]


def _images(out) -> dict:
    return {
        name[: -len(".png")]: np.asarray(Image.open(out / name), np.int16)
        for name in sorted(os.listdir(out))
        if name.endswith(".png") and not name.endswith("_overview.png")
    }


@pytest.mark.slow
def test_two_processes_draw_each_row_once_and_give_the_single_process_files(
    tiny_runs, synthetic_manifest, tmp_path
):
    single, launched = tmp_path / "single", tmp_path / "launched"
    assert main(_args(synthetic_manifest, tiny_runs, single)) == 0
    # What `accelerate launch --multi_gpu` does on GPUs, on CPUs: torch's launcher sets the env vars
    # accelerate reads (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT); the processes meet over gloo.
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*launch, "-m", "generation"] + _args(synthetic_manifest, tiny_runs, launched),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    ones, twos = _images(single), _images(launched)
    assert len(ones) == 6 and sorted(ones) == sorted(twos)
    for name in ones:
        assert ones[name].shape == twos[name].shape
        assert np.abs(ones[name] - twos[name]).max() <= 2, name  # float rounding only
    sidecars = {name: json.loads((launched / f"{name}.json").read_text()) for name in twos}
    drawn_by = {name: s["process_index"] for name, s in sidecars.items()}
    assert {s["num_processes"] for s in sidecars.values()} == {2}
    # Contiguous shares of the row order: the first three rows by process 0, the rest by process 1.
    order = sorted(twos, key=lambda n: sidecars[n]["source"].get("row", 0))
    assert sorted(drawn_by.values()) == [0, 0, 0, 1, 1, 1], drawn_by
    assert json.loads((single / f"{order[0]}.json").read_text())["num_processes"] == 1

    # Resume per row: a second launch finds every row done and draws none.
    again = subprocess.run(
        [*launch, "-m", "generation"] + _args(synthetic_manifest, tiny_runs, launched),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("generated 0 image(s)") == 2 and again.stdout.count("3 already there") == 2


@pytest.mark.slow
def test_a_stage2_batch_gives_the_one_by_one_images(tiny_runs, synthetic_manifest, tmp_path, capsys):
    one, batched = tmp_path / "one", tmp_path / "batched"
    assert main(_args(synthetic_manifest, tiny_runs, one)) == 0
    assert main([*_args(synthetic_manifest, tiny_runs, batched), "--batch-size", "3"]) == 0
    assert "generated 6 image(s)" in capsys.readouterr().out
    ones, batches = _images(one), _images(batched)
    assert sorted(ones) == sorted(batches) and len(ones) == 6
    for name in ones:
        assert np.abs(ones[name] - batches[name]).max() <= 2, name  # float rounding only
    sidecars = [json.loads((batched / f"{name}.json").read_text()) for name in batches]
    assert [s["stage2_batch"] for s in sidecars] == [3] * 6
    assert all(s["process_index"] == 0 and s["num_processes"] == 1 for s in sidecars)
    for name in ones:  # each request's kept shares come from its own hands, as one by one
        a = json.loads((one / f"{name}.json").read_text())["result"]["kept_share"]
        b = json.loads((batched / f"{name}.json").read_text())["result"]["kept_share"]
        assert a and sorted(a) == sorted(b), name
        for hand in a:
            np.testing.assert_allclose(b[hand], a[hand], atol=1e-4, err_msg=name)
    for name in ones:  # the stage-1 hands are each request's own, drawn alike
        for f in os.listdir(one / f"{name}_stage1"):
            a = np.asarray(Image.open(one / f"{name}_stage1" / f), np.int16)
            b = np.asarray(Image.open(batched / f"{name}_stage1" / f), np.int16)
            assert np.abs(a - b).max() <= 2, (name, f)


@pytest.mark.slow
def test_generate_dry_run_counts_the_rows_and_writes_nothing(tiny_runs, synthetic_manifest, tmp_path, capsys):
    out = tmp_path / "gen"
    assert main([*_args(synthetic_manifest, tiny_runs, out), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["steps"]["images"] == 6 and plan["steps"]["body_denoising_steps_per_image"] == 2
    assert (
        plan["models"]["parameters"]["hand"]["unet"] > 0
        and plan["models"]["parameters"]["body"]["controlnet"] > 0
    )
    assert plan["memory_estimate_gib"]["estimate"] is True
    assert not out.exists()
