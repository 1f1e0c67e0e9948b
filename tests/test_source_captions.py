"""img2dataset's captions reach training: copied to the hands table, chosen per sample by `caption`."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from manifest_edits import rewrite

from manifests.datasets import BodyDataset, HandCropDataset, choose_caption


@pytest.fixture(scope="module")
def captioned(synthetic_manifest, tmp_path_factory):
    """The synthetic manifest with a source caption on every other image (the writer copies it to
    that image's hands)."""

    def edit(_, images, hands):
        for row in images:
            number = int(row["image_id"].rsplit("_", 1)[1])
            row["source_caption"] = f"photo {number} from the web" if number % 2 == 0 else None
        for row in hands:  # rows from a writer that leaves the field to the images row
            del row["source_caption"]
        return images, hands

    return rewrite(synthetic_manifest, tmp_path_factory.mktemp("captioned") / "m", edit)


def test_the_writer_copies_each_images_source_caption_to_its_hands(captioned):
    images = {r["image_id"]: r for r in pq.read_table(captioned / "images").to_pylist()}
    hands = pq.read_table(captioned / "hands").to_pylist()
    assert all(h["source_caption"] == images[h["image_id"]]["source_caption"] for h in hands)
    assert 0 < sum(h["source_caption"] is not None for h in hands) < len(hands)


def test_choose_caption():
    assert choose_caption("a right hand", "a photo", "generated") == "a right hand"
    assert choose_caption("a right hand", "a photo", "source") == "a photo"
    assert choose_caption("a right hand", "a photo", "both") == "a right hand, a photo"
    for choice in ("source", "both"):
        assert choose_caption("a right hand", None, choice) == "a right hand"
        assert choose_caption("a right hand", "  ", choice) == "a right hand"
    assert choose_caption(None, None, "source") == ""


@pytest.mark.parametrize("choice", ["generated", "source", "both"])
def test_hand_and_body_samples_carry_the_chosen_caption(captioned, choice):
    hands = {r["hand_id"]: r for r in pq.read_table(captioned / "hands").to_pylist()}
    seen = set()
    for s in HandCropDataset(str(captioned), caption=choice, load_pixels=False):
        row = hands[s["hand_id"]]
        assert s["caption"] == choose_caption(row["caption"], row["source_caption"], choice)
        seen.add(s["caption"] == row["caption"])
    assert seen == ({True} if choice == "generated" else {True, False})  # some fall back, some do not
    images = {r["image_id"]: r for r in pq.read_table(captioned / "images").to_pylist()}
    for s in BodyDataset(str(captioned), caption=choice, resolution=32):
        row = images[s["image_id"]]
        assert s["caption"] == choose_caption(row["caption"], row["source_caption"], choice)


def test_an_unknown_caption_choice_is_refused(synthetic_manifest):
    with pytest.raises(ValueError, match="caption must be one of generated, source, both; got 'alt'"):
        HandCropDataset(str(synthetic_manifest), caption="alt")


def _parsed(config_class, args):
    import argparse

    from manifests.settings import add_arguments, from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser, config_class)
    return from_args(config_class, parser.parse_args(args))


def test_both_stages_take_caption_from_the_command_line():
    import dataclasses

    from generation.training.body_config import BodyTrainConfig
    from generation.training.config import StageTrainConfig
    from generation.training.hand_config import HandTrainConfig

    for config_class in (HandTrainConfig, BodyTrainConfig):
        assert _parsed(config_class, ["--manifest", "m", "--caption", "source"]).caption == "source"
        assert _parsed(config_class, ["--manifest", "m"]).caption == "generated"
        with pytest.raises(SystemExit):
            _parsed(config_class, ["--manifest", "m", "--caption", "alt"])
    # declared once, where the settings both stages share live
    shared = {f.name: f for f in dataclasses.fields(StageTrainConfig)}["caption"]
    for config_class in (HandTrainConfig, BodyTrainConfig):
        assert {f.name: f for f in dataclasses.fields(config_class)}["caption"] is shared


@pytest.mark.parametrize("choice", ["source", "both"])
def test_train_hand_counts_and_logs_the_rows_without_a_source_caption_once(
    captioned, tmp_path, caplog, choice
):
    from generation.training.hand import HandTask
    from generation.training.hand_config import HandTrainConfig

    hands = {r["hand_id"]: r for r in pq.read_table(captioned / "hands").to_pylist()}
    lacking = sum(r["source_caption"] is None for r in hands.values())
    task = HandTask(HandTrainConfig(manifest=str(captioned), out=str(tmp_path / "run"), caption=choice))
    with caplog.at_level("WARNING"):
        task.check_data()
    lines = [r.getMessage() for r in caplog.records if "source caption" in r.getMessage()]
    assert lines == [
        f"train-hand --caption {choice}: {lacking} of {len(hands)} selected rows have no source caption "
        "and use the generated one"
    ]
    assert task.facts["no_source_caption"] == lacking
    for s in task._dataset(0, 1, shuffle=False, load_pixels=False):
        row = hands[s["hand_id"]]
        assert s["caption"] == choose_caption(row["caption"], row["source_caption"], choice)
    for pose in task.validation_poses():
        row = hands[pose["hand_id"]]
        assert pose["caption"] == choose_caption(row["caption"], row["source_caption"], choice)


def test_train_body_trains_on_the_source_captions(captioned, tmp_path, caplog):
    from generation.training.body import BodyTask
    from generation.training.body_config import BodyTrainConfig

    images = {
        r["image_id"]: r for r in pq.read_table(captioned / "images").to_pylist() if r["status"] == "ok"
    }
    lacking = sum(r["source_caption"] is None for r in images.values())
    config = BodyTrainConfig(
        manifest=str(captioned), out=str(tmp_path / "run"), caption="source", resolution=64
    )
    task = BodyTask(config)
    with caplog.at_level("WARNING"):
        task.check_data()
    assert [r.getMessage() for r in caplog.records if "source caption" in r.getMessage()] == [
        f"train-body --caption source: {lacking} of {len(images)} selected rows have no source caption "
        "and use the generated one"
    ]
    captions = {s["image_id"]: s["caption"] for s in task._dataset(0, 1, shuffle=False)}
    assert captions == {
        i: choose_caption(r["caption"], r["source_caption"], "source") for i, r in images.items()
    }
    assert sum(captions[i] == r["source_caption"] for i, r in images.items()) == len(images) - lacking


def test_generated_captions_log_nothing(synthetic_manifest, tmp_path, caplog):
    from generation.training.hand import HandTask
    from generation.training.hand_config import HandTrainConfig

    with caplog.at_level("WARNING"):
        HandTask(HandTrainConfig(manifest=str(synthetic_manifest), out=str(tmp_path / "r"))).check_data()
    assert not [r for r in caplog.records if "source caption" in r.getMessage()]
