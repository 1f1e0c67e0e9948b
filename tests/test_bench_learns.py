"""`bench/learns.py`'s own logic: the paper's predictions read from the comparison table, the comparison
sheet of whole frames, and the phases that train in spawned processes (resume, failure)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import learns  # noqa: E402


def _table(**crop_and_seam) -> dict:
    table = {}
    for name in learns.COMPARISON:
        crop, seam = crop_and_seam.get(name, (0.0, None))
        table[name] = dict.fromkeys(learns.COMPARISON_COLUMNS)
        table[name].update({"hands.crop_detected_share": crop, "hands.seam": seam})
    return table


def test_the_paper_predictions_read_the_comparison_and_stage_1():
    done = {
        "score_stage1": {"training_poses": {"detected_share": 0.5}},
        "two_stage": _table(
            real=(1.0, None),
            baseline=(0.3, None),
            none=(0.2, None),
            fixed=(0.45, 0.30),
            sequential=(0.35, 0.20),
        ),
    }
    got = learns.paper_predictions(done)
    assert got == {
        "paper: fixed crop detection >= 0.8 x stage 1's samples": True,  # 0.45 >= 0.4
        "paper: fixed crop detection > baseline and none": True,
        "paper: sequential crop detection >= 0.8 x stage 1's samples": False,  # 0.35 < 0.4
        "paper: sequential crop detection > baseline and none": True,
        "paper: sequential seam < fixed seam": True,
    }
    done["two_stage"]["baseline"]["hands.crop_detected_share"] = 0.4
    done["two_stage"]["fixed"]["hands.seam"] = None
    got = learns.paper_predictions(done)
    assert got["paper: sequential crop detection > baseline and none"] is False
    assert got["paper: sequential seam < fixed seam"] is None
    assert learns.paper_predictions({}) == {}


def _frame(path: Path, value: int, side: int = 128) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    return image


def test_the_comparison_sheet_shows_whole_frames_160_px_high_with_the_target_on_one(tmp_path):
    side = 128
    for k, name in enumerate(("none", "fixed", "sequential")):
        _frame(tmp_path / "generated" / name / "row0.png", k, side)
    baseline = _frame(tmp_path / "generated" / "baseline" / "row0.png", 9, side)
    body = np.zeros((33, 3))
    body[:, :2], body[:, 2] = np.linspace(20, 100, 33)[:, None], 1.0
    hand = np.column_stack([np.linspace(40, 80, 21), np.linspace(30, 90, 21), np.ones(21)])
    spec = {
        "width": side,
        "height": side,
        "body": {"format": "mediapipe33", "keypoints": body.tolist()},
        "hands": [{"handedness": "right", "keypoints": hand.tolist()}],
    }
    (tmp_path / "generated" / "sequential" / "row0.json").write_text(json.dumps({"spec": spec}))

    sheet = learns.comparison_sheet(str(tmp_path), ["row0", "not-generated"])

    tile = learns.TILE
    assert tile >= 160
    header = sheet.shape[0] - tile - 4
    assert header > 0  # one line: the row that was not generated is left out
    assert sheet.shape[1] == 6 * (tile + 4)  # six cells, each as wide as the widest frame and a gap
    frames = [
        sheet[header : header + tile, k * (tile + 4) : k * (tile + 4) + tile].astype(int) for k in range(6)
    ]
    big = np.asarray(Image.fromarray(baseline).resize((tile, tile), Image.BICUBIC)).astype(int)
    assert frames[1].max() == 0  # no real_vae frame: a black tile keeps the columns in place
    assert np.abs(frames[2] - big).max() == 0  # the baseline, upscaled whole
    changed = np.abs(frames[0] - frames[5]).max(axis=2) > 0  # the target pose drawn on the sequential frame
    assert 0.02 < changed.mean() < 0.6
    assert learns.comparison_sheet(str(tmp_path), ["not-generated"]) is None


def test_a_finished_background_phase_is_not_started_again(tmp_path):
    phases = learns.Phases(str(tmp_path), resume=False)
    phases.state["done"]["train_body"] = {"step": 7}
    assert phases.start("train_body", int, "unused") is None
    assert phases.join("train_body", None) == {"step": 7}


def test_a_background_phase_returns_its_result_timed_by_the_child(tmp_path):
    phases = learns.Phases(str(tmp_path), resume=False)
    handle = phases.start("score_stage2", sum, [1, 2])
    assert phases.join("score_stage2", handle) == 3
    assert phases.state["done"]["score_stage2"] == 3
    assert phases.state["seconds"]["score_stage2"] >= 0 and "score_stage2" in phases.state["cpu_seconds"]
    assert (tmp_path / "score_stage2.log").is_file()
    assert learns.Phases(str(tmp_path), resume=True).start("score_stage2", sum, [1, 2]) is None


def test_a_phases_cpu_time_counts_the_processes_it_runs(tmp_path):
    import subprocess

    burn = "import time\nwhile time.process_time() < 0.5: pass"
    phases = learns.Phases(str(tmp_path), resume=False)
    phases.run(
        "generate_baseline", lambda: subprocess.run([sys.executable, "-c", burn], check=True).returncode
    )
    assert phases.state["cpu_seconds"]["generate_baseline"] >= 0.4  # before: this process alone, ~0


def test_a_failed_background_phase_stops_the_chain_naming_its_log(tmp_path):
    phases = learns.Phases(str(tmp_path), resume=False)
    # int("x") raises in the child: it exits 1 without a result.
    handle = phases.start("train_body", int, "x")
    with pytest.raises(RuntimeError, match=r"phase train_body failed \(exit code 1\): see train_body.log"):
        phases.join("train_body", handle)
    assert "train_body" not in phases.state["done"]


def test_the_stage_2_sheet_shows_the_real_rows_above_their_drawings(tmp_path):
    rng = np.random.default_rng(0)
    real, drawn = (rng.integers(0, 256, (3, 128, 128, 3), dtype=np.uint8) for _ in range(2))
    learns.save_pictures(str(tmp_path / "pictures_stage2.npz"), real=list(real), drawn=list(drawn))

    sheet = learns.stage2_sheet(str(tmp_path / "pictures"))

    assert sheet.shape == (24 + 128 + 4 + 128, 3 * 128 + 2 * 4, 3)
    assert (sheet[24 : 24 + 128, 132:260] == real[1]).all()  # at their own size, nothing resampled
    assert (sheet[24 + 132 :, 264:] == drawn[2]).all()
    assert learns.stage2_sheet(str(tmp_path / "nothing")) is None


def test_a_phase_graph_starts_each_phase_once_what_it_needs_is_done(tmp_path):
    phases = learns.Phases(str(tmp_path), resume=False)
    phases.state["done"]["train_hand"] = 1  # done in an earlier invocation: neither started nor redone
    ended = []
    graph = {
        "train_hand": (sum, ([1],), (), 1),
        "train_body": (sum, ([1, 2],), (), 1),
        "score_stage1": (sum, ([3, 4],), ("train_hand",), 1),
        "score_stage2": (sum, ([5, 6],), ("train_body", "score_stage1"), 1),
    }
    phases.run_graph(graph, cores=2, on_done=ended.append, poll_s=0.05)
    assert ended.index("train_body") < ended.index("score_stage2")
    assert ended.index("score_stage1") < ended.index("score_stage2")
    assert {k: phases.state["done"][k] for k in graph} == {
        "train_hand": 1,
        "train_body": 3,
        "score_stage1": 7,
        "score_stage2": 11,
    }
    with pytest.raises(ValueError, match=r"need phases that are not in the graph"):
        phases.run_graph({"x": (sum, ([1],), ("nowhere",), 1)}, cores=2)


def test_a_phase_graph_runs_no_more_threads_than_cores_filling_gaps_in_priority_order():
    def graph(*entries):
        return {name: (sum, (), needs, threads) for name, needs, threads in entries}

    # The chain's graph on two cores: stage 1 beside stage 2, the baseline waiting for a core.
    chain = graph(
        ("train_hand", (), 1),
        ("train_body", (), 1),
        ("train_baseline", (), 1),
        ("score_stage1", ("train_hand",), 1),
    )
    assert learns.Phases.startable(chain, set(), busy=0, cores=2) == ["train_hand", "train_body"]
    # Stage 1 done: the baseline goes before stage 1's scoring, which waits for the next free core.
    rest = {k: v for k, v in chain.items() if k not in ("train_hand", "train_body")}
    assert learns.Phases.startable(rest, {"train_hand"}, busy=1, cores=2) == ["train_baseline"]
    assert learns.Phases.startable(rest, {"train_hand"}, busy=0, cores=2) == [
        "train_baseline",
        "score_stage1",
    ]
    # A wide phase that does not fit lets a later narrow one take the free core ...
    wide = graph(("wide", (), 2), ("narrow", (), 1))
    assert learns.Phases.startable(wide, set(), busy=1, cores=2) == ["narrow"]
    # ... and one wider than the machine still runs, alone.
    assert learns.Phases.startable(wide, set(), busy=0, cores=1) == ["wide"]
    assert learns.Phases.startable(graph(("late", ("wide",), 1)), set(), busy=0, cores=2) == []
