"""The frame -> image map that `generate` records in each sidecar (``source.window``) and `evaluate`
reads back: one class (`generation.window.FrameMap`), its record round trip, and hostile sidecars."""

import json
import os

import numpy as np
import pytest

from generation.evaluate.framing import WindowError, frame_map
from generation.generate.requests import frame_window
from generation.window import FrameMap

FRAME = (320, 240)


def test_generates_record_reads_back_as_the_same_map():
    points = np.array([[0.0, 0.0, 1.0], [160.0, 120.0, 0.5], [320.0, 240.0, 1.0]])
    for window in (
        frame_window(FRAME, 160),
        frame_window(FRAME, 128, "cover", "hands", np.array([[200.0, 100.0], [220.0, 140.0]])),
    ):
        back = FrameMap.from_record(json.loads(json.dumps(window.record)), window.size)
        assert (back.scale, back.offset, back.size) == (window.scale, window.offset, window.size)
        np.testing.assert_allclose(back.to_frame(back.to_image(points)), points)
        assert back.to_image(points)[:, 2].tolist() == [1.0, 0.5, 1.0]  # scores ride along
    whole = frame_window(FRAME, 160)
    assert whole.size == (160, 120) and not whole.windowed
    square = frame_window(FRAME, 128, "cover", "hands", np.array([[300.0, 120.0]]))
    assert square.size == (128, 128) and square.windowed
    assert square.inside(np.array([[300.0, 120.0]])).all()  # the square is centred near the hands
    assert not square.inside(np.array([[0.0, 120.0]])).any()


@pytest.mark.parametrize(
    "record",
    [
        {"scale": [0, 1], "offset": [0, 0]},
        {"scale": [1], "offset": [0, 0]},
        {"scale": [1, float("nan")], "offset": [0, 0]},
    ],
)
def test_a_malformed_record_is_refused(record):
    with pytest.raises(ValueError, match="scale"):
        FrameMap.from_record(record, (64, 64))


def test_frame_map_reads_the_sidecar_and_refuses_hostile_ones(tmp_path):
    size = (64, 64)
    assert not frame_map(str(tmp_path), "none", FRAME, size).windowed  # no sidecar: the whole frame
    (tmp_path / "list.json").write_text(json.dumps({"source": ["not", "a", "dict"]}))
    assert not frame_map(str(tmp_path), "list", FRAME, size).windowed
    window = {"scale": [0.5, 0.5], "offset": [-10.0, -20.0]}
    (tmp_path / "ok.json").write_text(json.dumps({"source": {"window": window}}))
    fmap = frame_map(str(tmp_path), "ok", FRAME, size)
    assert fmap.windowed and fmap.record == window
    (tmp_path / "bad.json").write_text(
        json.dumps({"source": {"window": {"scale": [0, 1], "offset": [0, 0]}}})
    )
    with pytest.raises(WindowError, match="bad.json: unreadable source.window"):
        frame_map(str(tmp_path), "bad", FRAME, size)
    (tmp_path / "text.json").write_text("{not json")
    with pytest.raises(WindowError, match="text.json: not valid JSON"):
        frame_map(str(tmp_path), "text", FRAME, size)
    # A FIFO in a sidecar's place was taken for no sidecar (the whole frame, silently); a link to
    # /dev/zero would read without end. Both are refused, naming the file.
    os.mkfifo(tmp_path / "fifo.json")
    os.symlink("/dev/zero", tmp_path / "zero.json")
    for name in ("fifo", "zero"):
        with pytest.raises(WindowError, match=f"{name}.json"):
            frame_map(str(tmp_path), name, FRAME, size)
