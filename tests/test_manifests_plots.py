"""manifests.plots: every chart has its title, axis labels with units, and shows the data it was given."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from manifests import plots  # noqa: E402
from manifests.matching import keypoint_summary  # noqa: E402
from manifests.pose import HAND_KEYPOINT_NAMES  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_bar_counts_heights_and_labels():
    fig, ax = plt.subplots()
    plots.bar_counts(ax, {"ok": 39, "no_hands": 1, "error": 0}, "images by status", "status", "images")
    assert [p.get_height() for p in ax.patches] == [39, 1, 0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ok", "no_hands", "error"]
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("images by status", "status", "images")


def test_histogram_skips_nulls_and_marks_median_and_threshold():
    fig, ax = plt.subplots()
    plots.histogram(ax, [1.0, 2.0, 3.0, None], "hand size", "hand size (px)", "hands", bins=3, threshold=2.5)
    assert sum(p.get_height() for p in ax.patches) == 3
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["median 2 (n=3, 1 null)", "threshold 2.5"]
    assert (
        ax.get_xlabel() == "hand size (px)" and ax.get_ylabel() == "hands" and ax.get_title() == "hand size"
    )
    fig, ax = plt.subplots()
    plots.histogram(ax, [None, None], "empty", "x (px)")
    assert "no values (2 null)" in [t.get_text() for t in ax.texts]


def test_image_grid_titles_each_tile_and_hides_spare_axes():
    tiles = [np.full((8, 8, 3), i * 40, np.uint8) for i in range(5)]
    fig = plots.image_grid(tiles, [f"t{i}" for i in range(5)], columns=3, suptitle="five tiles")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 6 and len(shown) == 5
    assert [ax.get_title() for ax in shown] == [f"t{i}" for i in range(5)]
    assert fig.get_suptitle() == "five tiles"
    grey = plots.image_grid([np.zeros((4, 4))], ["m"], cmap="gray", colorbar_label="keep (0..1)")
    assert any(ax.get_ylabel() == "keep (0..1)" for ax in grey.axes)  # the shared colour bar


def test_heatmap_channels_one_panel_per_keypoint():
    hm = np.zeros((21, 8, 8), np.float32)
    hm[np.arange(21), np.arange(21) % 8, 3] = 1.0
    fig = plots.heatmap_channels(hm)
    panels = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert len(panels) == 21
    assert [ax.get_title() for ax in panels] == [f"{i} {n}" for i, n in enumerate(HAND_KEYPOINT_NAMES)]
    assert np.array_equal(panels[5].images[0].get_array(), hm[5])
    assert panels[0].get_ylabel() == "y (heatmap px)" and panels[-1].get_xlabel() == "x (heatmap px)"
    assert any("Gaussian value" in ax.get_ylabel() for ax in fig.axes)


def test_per_keypoint_errorbars_and_finger_table():
    errors = np.full((4, 21), 0.02)
    errors[:, 16] = [0.3, 0.3, 0.05, 0.05]  # ring tip: PCK@0.1 = 50%
    errors[:, 20] = np.nan
    summary = keypoint_summary(errors)
    fig = plots.per_keypoint_errorbars(summary, threshold=0.1)
    ax1, ax2 = fig.axes
    heights = [p.get_height() for p in ax1.patches]
    assert heights[16] == pytest.approx(50.0) and heights[0] == pytest.approx(100.0) and heights[20] == 0.0
    assert "%" in ax1.get_ylabel() and "%" in ax2.get_ylabel() and ax2.get_xlabel().startswith("keypoint")
    assert ax1.get_title() and ax2.get_title() and "4 matched hands" in fig.get_suptitle()
    with pytest.raises(KeyError, match="pck_0.5"):
        plots.per_keypoint_errorbars(summary, threshold=0.5)
    table = plots.finger_table(summary, 0.1)
    assert table[0]["finger"] == "ring" and table[0]["keypoints"] == 16
    assert table[0]["pck@0.1 (%)"] == pytest.approx(100 * 14 / 16, abs=0.05)
    little = next(r for r in table if r["finger"] == "little")
    assert little["keypoints"] == 12 and little["pck@0.1 (%)"] == 100.0
    assert len(plots.keypoint_colors()) == 21
