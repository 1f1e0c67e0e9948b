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
