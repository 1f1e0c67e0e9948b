"""Pictures where people look: stats --plot, a training run's curves.png and trackers, the evaluation
report's ranking, the stage-1 validation grid's column titles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_runner import run_module
from PIL import Image


def test_stats_plot_writes_the_four_charts(synthetic_manifest, tmp_path):
    out = tmp_path / "charts" / "stats.png"
    proc = run_module("manifests", "stats", str(synthetic_manifest), "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith(f"wrote {out}")
    with Image.open(out) as im:
        assert im.size == (1100, 750)
        pixels = np.asarray(im.convert("RGB"))
    assert (np.abs(pixels.astype(int) - [76, 114, 176]).sum(axis=2) < 30).sum() > 1000  # the bars are drawn
    assert not list(out.parent.glob("*.tmp*"))


def test_manifest_overview_reads_a_table_directory(synthetic_manifest):
    from manifests.plots import manifest_overview

    fig = manifest_overview(str(synthetic_manifest / "hands"))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["hand size", "mask score", "hands by handedness", "hands by label"]
    assert "(px, original image)" in fig.axes[0].get_xlabel()


def test_a_training_run_keeps_curves_png_beside_metrics(tmp_path):
    from generation.training.metrics import CURVES_FILE, MetricsLog, plot_curves

    log = MetricsLog(str(tmp_path))
    for step in range(10, 60, 10):
        log.write({"step": step, "loss": 1 / step, "mse_loss": 0.5 / step, "lr": 1e-4, "epoch": 0})
    log.write({"step": 50, "val_mask_keypoint_coverage": 0.7})
    log.close()
    with Image.open(tmp_path / CURVES_FILE) as im:
        assert im.width > 900  # losses, validation and learning rate side by side
    assert plot_curves([{"step": 1, "epoch": 0}], str(tmp_path / "none.png")) is None
    # A resumed run starts from the kept records and draws them with the new ones.
    log = MetricsLog(str(tmp_path))
    log.truncate_after(30)
    log.write({"step": 40, "loss": 0.5, "lr": 1e-4})
    log.close()
    assert [r["step"] for r in log._records] == [10, 20, 30, 40]
    assert not list(tmp_path.glob("*.tmp*"))


def test_every_record_reaches_the_trackers(tmp_path):
    from generation.training.metrics import MetricsLog

    class Tracker:
        def __init__(self):
            self.calls = []

        def log(self, values, step):
            self.calls.append((values, step))

    tracker = Tracker()
    log = MetricsLog(str(tmp_path), tracker=tracker)
    log.write({"step": 10, "loss": 0.25, "lr": 1e-4, "epoch": 0, "note": "text"})
    log.close()
    assert tracker.calls == [({"loss": 0.25, "lr": 1e-4, "epoch": 0}, 10)]


def test_report_to_a_tracker_that_is_not_installed_is_one_line(
    synthetic_manifest, tmp_path, monkeypatch, capsys
):
    import importlib.util

    from generation.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    out = tmp_path / "run"
    rc = main(
        ["train-hand", "--manifest", str(synthetic_manifest), "--out", str(out), "--report-to", "wandb"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err == (
        "handfirst-gen train-hand: error: --report-to wandb needs the wandb package: pip install wandb"
    )


def test_trackers_get_the_settings_as_scalars():
    from generation.training.hand_config import HandTrainConfig
    from generation.training.loop import tracker_config

    values = tracker_config(HandTrainConfig(manifest=("a", "b"), report_to="tensorboard"))
    assert values["manifest"] == '["a", "b"]' and values["report_to"] == "tensorboard"
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in values.values())


def test_report_to_names_only_accelerate_trackers():
    from generation.cli import build_parser

    parser, _ = build_parser("train-vae")
    with pytest.raises(SystemExit):
        parser.parse_args(["--report-to", "csv"])
    assert parser.parse_args(["--report-to", "tensorboard"]).report_to == "tensorboard"


def test_images_are_ranked_by_hand_error():
    from generation.evaluate.pictures import MISSED, hand_error, worst_and_best
    from manifests.matching import Instance

    rng = np.random.default_rng(0)
    target = Instance(np.c_[rng.uniform(100, 200, (21, 2)), np.ones(21)], "right")
    near = Instance(target.keypoints + [2.0, 0.0, 0.0], "right")
    assert hand_error([target], [target]) == 0.0
    assert 0 < hand_error([near], [target]) < 0.05
    assert hand_error([], [target, target]) == MISSED
    assert hand_error([near], []) is None
    errors = {"a": 0.3, "b": None, "c": 0.0, "d": 1.0, "e": 0.1}
    assert worst_and_best(errors, n=2) == (["d", "a"], ["c", "e"])
    assert worst_and_best(errors, n=4) == (["d", "a"], ["c", "e"])  # four scored: halves


def test_the_validation_grid_names_its_columns():
    from manifests.draw import contact_sheet

    tiles = [np.zeros((32, 32, 3), np.uint8)] * 6
    plain = contact_sheet(tiles, columns=3, tile=128, background=0)
    titled = contact_sheet(tiles, columns=3, tile=128, background=0, column_titles=["hand", "mask", "pose"])
    assert titled.shape[0] == plain.shape[0] + 16 and titled.shape[1] == plain.shape[1]
    assert titled[:16].max() > 200 and not titled[16:].any()  # white titles above, tiles below unchanged
    for column in range(3):
        assert titled[:16, column * 128 : column * 128 + 60].any()


def test_evaluate_compare_prints_the_chart(tmp_path):
    base = {
        **dict.fromkeys(["body", "fid", "kid", "fid_hands", "kid_hands", "clip_score"]),
        "hands": {"pck_0.2": 0.5, "count": 3},
        "reasons": {},
        "settings": {},
        "images": {"evaluated": 3},
    }
    for label in ("a", "b"):
        (tmp_path / f"{label}.json").write_text(json.dumps({**base, "label": label}))
    proc = run_module(
        "generation", "evaluate", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
        "--out", str(tmp_path / "cmp"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {tmp_path / 'cmp'}/compare.md, compare.json, compare.png" in proc.stdout
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    assert "Traceback" not in proc.stderr
