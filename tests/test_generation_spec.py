"""Pose spec parsing: the committed example loads, and every malformed input names its field."""

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest

from generation.spec import SpecError, load_spec, parse_spec, read_json_file

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pose.json"


@pytest.fixture
def spec():
    return json.loads(EXAMPLE.read_text())


def test_example_spec_loads(spec):
    s = load_spec(EXAMPLE)
    assert (s.width, s.height, s.body_format, s.name) == (512, 512, "mediapipe33", "pose")
    assert [h.handedness for h in s.hands] == ["right", "left"]
    assert s.hands[0].keypoints.shape == (21, 3) and s.body.shape == (33, 3)
    assert parse_spec(s.to_dict()).to_dict() == s.to_dict()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s["hands"][0]["keypoints"].pop(), r"hands\[0\].keypoints: expected 21 points"),
        (
            lambda s: s["hands"][1]["keypoints"][4].__setitem__(0, float("nan")),
            r"hands\[1\].keypoints: NaN .* \[4\]",
        ),
        (
            lambda s: s["hands"][0]["keypoints"][8].__setitem__(1, -40),
            r"points \[8\] lie outside the 512x512 canvas",
        ),
        (lambda s: s["body"].__setitem__("format", "coco17"), r"unknown body format 'coco17'"),
        (
            lambda s: s["hands"][0].__setitem__("handedness", "both"),
            r"handedness: expected 'left' or 'right'",
        ),
        (lambda s: s.pop("width"), r"missing field 'width'"),
        (lambda s: s.update(body=None, hands=[]), r"neither a body nor any hands"),
        (lambda s: s.update(seed="7"), r"seed must be an integer"),
        (lambda s: s.update(body=[1, 2]), r"body: expected an object"),
        (lambda s: s.update(hands={"left": []}), r"hands: expected a list"),
        (lambda s: s["hands"].__setitem__(0, "right"), r"hands\[0\]: expected an object"),
        (lambda s: s.update(width=64.7), r"width: expected a whole number, got 64.7"),
        (lambda s: s.update(height="512"), r"height: expected a whole number"),
        (lambda s: s.update(prompt=["a", "b"]), r"prompt: expected a string, got list"),
        (
            lambda s: s.update(negative_promt="blurry"),
            r"^unknown key\(s\) 'negative_promt'; allowed: width, height, body, hands, prompt, "
            r"negative_prompt, seed$",
        ),
        (
            lambda s: s["body"].update(keypoint=[]),
            r"^body: unknown key\(s\) 'keypoint'; allowed: format, keypoints$",
        ),
        (
            lambda s: s["hands"][1].update(side="left", score=1),
            r"^hands\[1\]: unknown key\(s\) 'score', 'side'; allowed: handedness, keypoints$",
        ),
    ],
)
def test_bad_specs_name_the_field(spec, mutate, message):
    bad = copy.deepcopy(spec)
    mutate(bad)
    with pytest.raises(SpecError, match=message):
        parse_spec(bad)


def test_null_prompts_mean_empty_and_whole_floats_are_accepted(spec):
    s = copy.deepcopy(spec)
    s.update(prompt=None, negative_prompt=None, width=512.0)
    parsed = parse_spec(s)
    assert (parsed.prompt, parsed.negative_prompt, parsed.width) == ("", "", 512)


def test_openpose18_body_and_scores(spec):
    s = copy.deepcopy(spec)
    s["body"] = {"format": "openpose18", "keypoints": np.full((18, 3), 100.0).tolist()}
    assert parse_spec(s).body.shape == (18, 3)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SpecError, match="bad.json: not valid JSON"):
        load_spec(tmp_path / "bad.json")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_spec_files_that_are_fifos_devices_or_too_large_are_refused_without_reading_them(tmp_path):
    os.mkfifo(tmp_path / "pipe.json")  # no writer: opening it for reading would block forever
    with pytest.raises(SpecError, match=r"pipe.json: a FIFO \(named pipe\), not a regular file"):
        load_spec(tmp_path / "pipe.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")  # would be read until memory runs out
    with pytest.raises(SpecError, match="zero.json: a character device, not a regular file"):
        load_spec(tmp_path / "zero.json")
    (tmp_path / "big.json").write_text(json.dumps({"width": 64, "height": 64, "hands": []}))
    with pytest.raises(SpecError, match=r"big.json: 40 bytes exceeds max_bytes=16"):
        read_json_file(tmp_path / "big.json", SpecError, "spec", max_bytes=16)
    assert read_json_file(f"file://{tmp_path / 'big.json'}", SpecError, "spec")["width"] == 64  # fsspec URLs


@pytest.mark.parametrize(
    "name", ["./../x", "/tmp/abs", "..", ".hidden", "a\\b", "C:x", "", "a\x00b", "x" * 201]
)
def test_a_name_that_is_not_a_safe_file_name_is_refused(spec, name):
    with pytest.raises(SpecError, match=r"^name .* is not a safe file name: "):
        parse_spec(spec, name=name)


def test_a_spec_file_whose_stem_is_not_a_safe_name_is_refused(spec, tmp_path):
    path = tmp_path / ".hidden.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(
        SpecError, match=r"\.hidden\.json: name '\.hidden' is not a safe file name: starts with '\.'"
    ):
        load_spec(path)


@pytest.mark.parametrize(
    "text, message",
    [
        (b'{"width": Infinity, "height": 64, "hands": []}', "width: expected a whole number, got inf"),
        (b'{"width": NaN, "height": 64, "hands": []}', "width: expected a whole number, got nan"),
        (
            b'{"width": 64, "height": 64, "body": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "JSON nested too deeply to read",
        ),
        (b'{"width": 64, "prompt": "\xff\xfe"}', "not UTF-8 text (byte 25: invalid start byte)"),
    ],
)
def test_hostile_spec_files_name_the_file_and_the_field(tmp_path, text, message):
    (tmp_path / "hostile.json").write_bytes(text)
    with pytest.raises(SpecError) as caught:
        load_spec(tmp_path / "hostile.json")
    assert str(caught.value) == f"{tmp_path / 'hostile.json'}: {message}"


def test_a_replayed_sidecar_whose_models_are_a_list_is_one_line(spec, tmp_path, capsys):
    import json

    from generation.cli import main

    sidecar = {"name": "wave", "spec": spec, "settings": {}, "models": ["hand", "body"]}
    (tmp_path / "replay.json").write_text(json.dumps(sidecar))
    assert main(["generate", "--replay", str(tmp_path / "replay.json"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"handfirst-gen generate: error: {tmp_path / 'replay.json'}: not a generate sidecar "
        "(TypeError: models: a JSON object, got list)"
    ]
