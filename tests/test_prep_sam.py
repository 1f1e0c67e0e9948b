"""The SAM mask path with a tiny randomly initialised `Sam` from segment_anything's own classes, saved
with torch.save and loaded back through the real loading path (torch.load with weights_only=True)."""

import json

import numpy as np
import pytest
import torch

from manifests.codecs import decode_mask
from prep.annotate import Annotator
from prep.config import PrepConfig
from prep.errors import ModelLoadError
from prep.masks import SamMasker, build_sam_vit_tiny, load_sam, make_masker, resolve_mask_method
from prep.records import HandAnnotation, ImageRecord


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(build_sam_vit_tiny().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def onehand(data_dir):
    """(image path, (21, 3) ground-truth keypoints) of a OneHand10K photo."""
    root = data_dir / "keypoints_gt" / "onehand10k"
    coco = json.loads((root / "test_onehand10k.json").read_text())
    ann = coco["annotations"][0]
    image = next(im for im in coco["images"] if im["id"] == ann["image_id"])
    return root / image["file_name"], np.array(ann["keypoints"], dtype=np.float64).reshape(21, 3)


def test_checkpoint_round_trip_through_the_loading_path(checkpoint):
    sam = load_sam("vit_tiny", str(checkpoint))
    saved = torch.load(checkpoint, weights_only=True)
    assert set(sam.state_dict()) == set(saved)
    assert all(torch.equal(sam.state_dict()[k], saved[k]) for k in saved)
    assert not sam.training


def test_bad_checkpoints_are_clear_errors(checkpoint, tmp_path):
    with pytest.raises(ModelLoadError, match="SAM checkpoint not found"):
        load_sam("vit_tiny", str(tmp_path / "missing.pth"))
    with pytest.raises(ModelLoadError, match="unknown SAM model type 'vit_x'"):
        load_sam("vit_x", str(checkpoint))
    state = torch.load(checkpoint, weights_only=True)
    state.pop(next(iter(state)))
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ModelLoadError, match="does not fit vit_tiny"):
        load_sam("vit_tiny", str(tmp_path / "partial.pth"))
    # weights_only=True refuses pickled code: a checkpoint carrying an arbitrary object is not loaded.
    torch.save({"model": state, "hook": np.random.default_rng}, tmp_path / "code.pth")
    with pytest.raises(ModelLoadError, match="cannot load SAM checkpoint"):
        load_sam("vit_tiny", str(tmp_path / "code.pth"))
    # A {"model": state_dict} wrapper is accepted.
    torch.save({"model": torch.load(checkpoint, weights_only=True)}, tmp_path / "wrapped.pth")
    assert load_sam("vit_tiny", str(tmp_path / "wrapped.pth")) is not None


def test_auto_picks_sam_only_with_a_checkpoint(checkpoint):
    assert resolve_mask_method(PrepConfig()) == "grabcut"
    assert resolve_mask_method(PrepConfig(sam_checkpoint=str(checkpoint))) == "sam"
    assert make_masker(PrepConfig(mask_method="none")) is None
    with pytest.raises(ModelLoadError, match="needs a checkpoint"):
        make_masker(PrepConfig(mask_method="sam"))
    with pytest.raises(ValueError, match="unknown mask_method 'watershed'"):
        make_masker(PrepConfig(mask_method="watershed"))


def test_annotator_masks_with_sam_once_per_image(checkpoint, onehand):
    path, gt = onehand
    torch.manual_seed(0)
    config = PrepConfig(
        sam_checkpoint=str(checkpoint),
        sam_model_type="vit_tiny",
        keypoint_source="annotation",
        body_pose=False,
        crop_size=128,
    )
    annotator = Annotator(config)
    calls = []
    real_set_image = annotator.masker.set_image
    annotator.masker.set_image = lambda image: (calls.append(image.shape), real_set_image(image))[1]
    shifted = gt.copy()
    shifted[:, 0] += 40  # a second hand, so one image embedding must serve two prompts
    record = ImageRecord(
        image_id="sam",
        source_uri=str(path),
        dataset="coco",
        hands=[HandAnnotation(keypoints=gt), HandAnnotation(keypoints=shifted)],
    )
    row, hands = annotator.annotate(record)
    assert len(calls) == 1 and len(hands) == 2
    for hand in hands:
        assert hand["mask_method"] == "sam_vit_tiny" and 0.0 <= hand["mask_score"] <= 1.0
        assert decode_mask(hand["mask"]).shape == (128, 128)
    assert decode_mask(row["hands_mask"]).shape == (row["image_height"], row["image_width"])
    assert annotator.timings["masks"] > 0 and annotator.timings["hands"] > 0


def test_multimask_choice_weighs_score_by_keypoint_agreement(checkpoint, onehand):
    """SAM's most confident mask misses the hand; the one that holds its keypoints must win."""
    from manifests.geometry import square_crop_box
    from prep.hands import Hand
    from prep.imageio import load_image

    path, gt = onehand
    image = load_image(str(path), 10**8)[0].pixels
    h, w = image.shape[:2]
    masker = SamMasker(PrepConfig(sam_checkpoint=str(checkpoint), sam_model_type="vit_tiny"))
    hand = Hand(np.column_stack([gt[:, :2], (gt[:, 2] > 0).astype(float)]), "right", 1.0, "annotation")
    box, points, labels = masker.prompts(hand)
    lab = hand.keypoints[:, 2] > 0
    assert (box[:2] <= hand.keypoints[lab, :2].min(0)).all() and (
        box[2:] >= hand.keypoints[lab, :2].max(0)
    ).all()
    assert (labels == 1).all() and len(points) >= 5

    full = np.zeros((3, h, w), bool)
    full[0, :20, :20] = True  # confident but off the hand
    x0, y0, x1, y1 = box.astype(int)
    full[1, max(y0, 0) : y1, max(x0, 0) : x1] = True  # the hand
    full[2, max(y0, 0) : (y0 + y1) // 2, max(x0, 0) : x1] = True  # half of it
    low = 64
    factor = low / max(h, w)
    low_res = np.full((3, low, low), -10.0, np.float32)
    for i in range(3):
        ys, xs = np.nonzero(full[i])
        low_res[
            i,
            int(ys.min() * factor) : int(ys.max() * factor) + 1,
            int(xs.min() * factor) : int(xs.max() * factor) + 1,
        ] = 10.0
    ious = np.array([0.99, 0.7, 0.8], np.float32)

    class FakePredictor:
        def predict(self, **kw):
            assert kw["multimask_output"] is True and kw["box"] is not None and len(kw["point_coords"]) >= 5
            return full, ious, low_res

    masker._predictor = FakePredictor()
    masker._image = image  # as if set_image(image) had embedded it
    crop = square_crop_box(hand.keypoints[lab], size=128, margin=0.25)
    result = masker.predict(image, hand, crop)
    assert result.score == pytest.approx(0.7)  # 0.7 x 1.0 beats 0.99 x 0 and 0.8 x ~0.5
    assert result.mask.mean() > 0.3 and result.method == "sam_vit_tiny"


def test_predict_re_embeds_a_new_image_of_the_same_size(monkeypatch):
    from prep.masks import SamMasker

    class Stop(Exception):
        pass

    def stop_after_embedding(self, hand):
        raise Stop

    masker = SamMasker.__new__(SamMasker)
    masker._image = None
    embedded = []
    monkeypatch.setattr(
        SamMasker, "set_image", lambda self, im: (embedded.append(im), setattr(self, "_image", im))
    )
    monkeypatch.setattr(SamMasker, "prompts", stop_after_embedding)
    a, b = np.zeros((64, 64, 3), np.uint8), np.ones((64, 64, 3), np.uint8)
    for im in (a, a, b):  # same size, different photos: b must not reuse a's embedding
        with pytest.raises(Stop):
            masker.predict(im, None, None)
    assert len(embedded) == 2 and embedded[0] is a and embedded[1] is b
