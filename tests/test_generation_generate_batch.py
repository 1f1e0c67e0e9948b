"""The batch rules of `handfirst-gen generate` hold through the Python API, `generate_batch`: exactly one
source, resume, failures.jsonl, photo name clashes and a replay's models."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image
from two_stage_helpers import pose_spec_file

from generation.generate import GenerateConfig, RequestError, Sources, UsageError, generate_batch


def _tiny_hand_spec(good: str, path) -> str:
    """`good` with its left hand shrunk to a quarter around the wrist: under --min-hand-size 8."""
    obj = json.loads(open(good).read())
    kps = np.array(obj["hands"][1]["keypoints"])
    obj["hands"][1]["keypoints"] = ((kps - kps[0]) * 0.25 + kps[0]).tolist()
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.mark.parametrize(
    "given, message",
    [
        ({}, "give exactly one of --spec, --from-manifest, --from-image, --replay"),
        ({"spec": ["a.json"], "replay": ["b.json"]}, "give exactly one of --spec, --from-manifest"),
        ({"spec": ["a.json"], "image_id": ["x"]}, "--image-id needs --from-manifest"),
    ],
)
def test_a_batch_has_exactly_one_source(given, message):
    with pytest.raises(UsageError, match=message):
        Sources(**given)


def test_a_batch_without_models_is_refused_before_anything_loads(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="--hand-model and --body-model are required"):
        generate_batch(Sources(spec=[pose_spec_file(tmp_path / "s.json")]), str(out), hand_model="h")
    with pytest.raises(ValueError, match="steps"):  # settings are checked first of all
        generate_batch(Sources(spec=["s.json"]), str(out), settings=GenerateConfig(steps=0))
    assert not out.exists()


def test_one_failing_request_is_recorded_the_others_written_and_a_rerun_resumes(tiny_runs, tmp_path, caplog):
    good = pose_spec_file(tmp_path / "good.json")
    tiny = _tiny_hand_spec(good, tmp_path / "tiny.json")
    settings = GenerateConfig(steps=2, detect=False, small_hands="refuse", min_hand_size=8)
    out = tmp_path / "batch"
    heard = []
    result = generate_batch(
        Sources(spec=[good, tiny]),
        str(out),
        *tiny_runs,
        settings,
        on_failure=lambda name, exc: heard.append((name, type(exc).__name__)),
    )
    assert result.written == ["good"] and result.skipped == []
    assert [f["name"] for f in result.failures] == ["tiny"] and heard == [("tiny", "HandTooSmallError")]
    assert (out / "good.png").is_file() and (out / "good.json").is_file() and not (out / "tiny.png").exists()
    recorded = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert recorded == result.failures
    assert "less than min_hand_size=8 px" in recorded[0]["error"] and recorded[0]["source"]["kind"] == "spec"

    # The same batch again: the done image is skipped untouched, the failing one fails again and is
    # appended; without on_failure the failure is a logged warning.
    stamp = os.path.getmtime(out / "good.png")
    with caplog.at_level(logging.WARNING, logger="generation.generate.batch"):
        again = generate_batch(Sources(spec=[good, tiny]), str(out), *tiny_runs, settings)
    assert (
        again.written == [] and again.skipped == ["good"] and [f["name"] for f in again.failures] == ["tiny"]
    )
    assert os.path.getmtime(out / "good.png") == stamp
    assert len((out / "failures.jsonl").read_text().splitlines()) == 2
    assert any(r.getMessage().startswith("tiny: hand 1 (left) spans") for r in caplog.records), caplog.text


def test_a_replay_takes_its_models_and_settings_from_the_sidecar_and_is_always_redone(tiny_runs, tmp_path):
    out = tmp_path / "out"
    first = generate_batch(
        Sources(spec=[pose_spec_file(tmp_path / "wave.json")]),
        str(out),
        *tiny_runs,
        GenerateConfig(steps=2, detect=False),
    )
    assert first.written == ["wave"]
    image = np.asarray(Image.open(out / "wave.png"))
    # No models, no settings, the same folder: the sidecar's models and settings, and no skip.
    again = generate_batch(Sources(replay=[str(out / "wave.json")]), str(out))
    assert again.written == ["wave"] and again.skipped == [] and again.failures == []
    np.testing.assert_array_equal(np.asarray(Image.open(out / "wave.png")), image)
    # Two sidecars of one name would write the same files: refused before anything is generated.
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "wave.json").write_text((out / "wave.json").read_text())
    stamp = os.path.getmtime(out / "wave.png")
    with pytest.raises(RequestError, match=r"several requests share the name\(s\) \['wave'\]"):
        generate_batch(
            Sources(replay=[str(out / "wave.json"), str(tmp_path / "copy" / "wave.json")]), str(out)
        )
    assert os.path.getmtime(out / "wave.png") == stamp


def test_photos_that_share_a_name_are_refused_before_anything_is_written(tiny_runs, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (64, 48)).save(tmp_path / folder / "same.png")
    out = tmp_path / "out"
    photos = [str(tmp_path / "a" / "same.png"), str(tmp_path / "b" / "same.png")]
    with pytest.raises(RequestError, match=r"several photos share the name\(s\) \['same'\]"):
        generate_batch(
            Sources(from_image=photos), str(out), *tiny_runs, GenerateConfig(steps=1, detect=False)
        )
    assert not out.exists()
