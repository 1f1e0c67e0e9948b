"""prep.crops (square crops with padding, exact keypoint maps, heatmaps, union masks) and prep.captions."""

import numpy as np
import pytest
from PIL import Image

from manifests.geometry import CropBox, heatmap_peaks
from prep.captions import gesture_phrase, hand_caption, image_caption
from prep.config import PrepConfig
from prep.crops import antialiased_crop, make_crop, union_mask
from prep.imageio import reduced_size as stored_size


def _hand(center, size, rng) -> np.ndarray:
    pts = np.asarray(center) + rng.uniform(-size / 2, size / 2, size=(21, 2))
    return np.column_stack([pts, np.ones(21)])


@pytest.fixture(scope="module")
def photo(data_dir) -> np.ndarray:
    from prep.imageio import load_image

    return load_image(str(data_dir / "photos" / "thumbs-up.png"), 10**8)[
        0
    ].pixels  # 1920 x 1280, RGBA over white


def test_crop_at_the_corner_is_zero_padded_and_exactly_invertible(photo):
    rng = np.random.default_rng(0)
    kps = _hand((30, 40), 80, rng)  # near the top-left corner: the square leaves the image
    config = PrepConfig(crop_size=256, crop_margin=0.25)
    crop = make_crop(photo, kps, config)
    assert crop.pixels.shape == (256, 256, 3) and crop.box.size == 256
    x0, y0, _, _ = crop.box.box
    assert x0 < 0 and y0 < 0
    u, v = crop.box.to_crop(np.array([[0.0, 0.0]]))[0]  # the image corner, in crop pixels
    assert (crop.pixels[: int(v) - 1] == 0).all() and (crop.pixels[:, : int(u) - 1] == 0).all()
    assert crop.pixels[int(v) + 2 :, int(u) + 2 :].mean() > 20  # real pixels inside the image
    np.testing.assert_allclose(crop.box.to_image(crop.keypoints), kps, atol=1e-9)
    side = max(np.ptp(kps[:, 0]), np.ptp(kps[:, 1])) * 1.5
    assert crop.box.side == pytest.approx(side)


def test_heatmap_size_and_sigma_follow_the_config(photo):
    kps = _hand((900, 600), 200, np.random.default_rng(1))
    default = make_crop(photo, kps, PrepConfig())
    assert default.heatmap.shape == (21, 64, 64)  # crop_size // 8, the latent size
    custom = make_crop(photo, kps, PrepConfig(crop_size=256, heatmap_size=32, sigma=2.0))
    assert custom.heatmap.shape == (21, 32, 32)
    err = np.abs(heatmap_peaks(custom.heatmap, 256) - custom.keypoints[:, :2]).max()
    assert err <= 0.5 * 256 / 32 + 1e-6
    # A wider sigma spreads each Gaussian: more of the map above half the peak.
    assert (custom.heatmap > 0.5).mean() > (
        make_crop(photo, kps, PrepConfig(crop_size=256, heatmap_size=32, sigma=1.0)).heatmap > 0.5
    ).mean()


def test_large_shrink_is_antialiased_and_stays_aligned(data_dir):
    from prep.imageio import load_image

    photo = load_image(str(data_dir / "photos" / "coupleanddog.jpeg"), 10**8)[
        0
    ].pixels  # 370 x 334, fur and grass
    box = CropBox(17.0, 17.0, 300.0, 70)  # 4.3x shrink
    reference = np.asarray(Image.fromarray(photo).resize((70, 70), Image.LANCZOS, box=tuple(box.box))).astype(
        float
    )
    from manifests.geometry import crop_image

    plain = crop_image(photo, box).astype(float)
    smooth = antialiased_crop(photo, box).astype(float)
    err_plain, err_smooth = np.abs(plain - reference).mean(), np.abs(smooth - reference).mean()
    assert err_smooth < 0.7 * err_plain, (err_smooth, err_plain)
    # Aligned: shifting the result by a pixel makes it worse, not better.
    assert err_smooth < np.abs(np.roll(smooth, 1, axis=1) - reference).mean()
    assert err_smooth < np.abs(np.roll(smooth, 1, axis=0) - reference).mean()


def test_union_mask_lands_where_the_hands_are():
    width, height = 1000, 600
    size = stored_size(width, height, 500)
    assert size == (500, 300)
    masks = []
    for x0 in (100.0, 600.0):
        box = CropBox(x0, 200.0, 200.0, 64)
        m = np.zeros((64, 64), bool)
        m[16:48, 16:48] = True  # the middle half of the box: image x0+50..x0+150, y 250..350
        masks.append((m, box))
    union = union_mask(masks, width, height, size)
    assert union.shape == (300, 500)
    ys, xs = np.nonzero(union)
    assert ys.min() == pytest.approx(125, abs=1) and ys.max() == pytest.approx(174, abs=1)
    assert (
        union[150, 100]
        and union[150, 350]
        and not union[150, 200]
        and union.mean() == pytest.approx(2 * 50 * 50 / 150000, rel=0.05)
    )


def test_captions_read_naturally():
    assert image_caption("peace", ["right"], 0) == "a person showing a peace sign with the right hand"
    assert image_caption("peace", ["left", "right"], 1) == "a person showing a peace sign with the right hand"
    assert image_caption("like", ["left", "right"]) == "a person showing a thumbs-up with both hands"
    assert (
        image_caption("hand_heart", ["left", "right"], 0) == "a person making a heart shape with both hands"
    )
    assert image_caption("none", ["left"]) == "a person with the left hand visible"
    assert image_caption("call", []) == "a person showing a call-me sign"
    assert image_caption(None, []) == "a photo of a person"
    assert image_caption("rock", [None], 0) == "a person showing a rock-and-roll sign with a hand"
    assert hand_caption("peace_inverted", "left") == "a left hand showing an upside-down peace sign"
    assert hand_caption("stop", "right", shows_gesture=False) == "a right hand"
    assert hand_caption("mute", None) == "a hand holding a finger to the lips"
    assert (
        gesture_phrase("thumbs_sideways") == "a thumbs sideways gesture"
        and gesture_phrase("no_gesture") is None
    )
    labels = [
        "call",
        "dislike",
        "fist",
        "four",
        "like",
        "mute",
        "ok",
        "one",
        "palm",
        "peace",
        "peace_inverted",
        "rock",
        "stop",
        "stop_inverted",
        "three",
        "three2",
        "two_up",
        "two_up_inverted",
    ]
    captions = {image_caption(label, ["right"], 0) for label in labels}
    assert len(captions) == len(labels) and not any("_" in c for c in captions)


def test_caption_templates_override_per_label():
    overrides = {
        "ok": "someone making {gesture} using {hands}",
        "hand:ok": "close-up of a {side} hand, {gesture}",
    }
    assert image_caption("ok", ["left"], 0, overrides) == "someone making an OK sign using the left hand"
    assert hand_caption("ok", "left", True, overrides) == "close-up of a left hand, an OK sign"
    assert image_caption("fist", ["left"], 0, overrides) == "a person showing a fist with the left hand"


def test_caption_templates_come_from_the_command_line():
    from manifests.settings import SettingError
    from prep.cli import build_parser
    from prep.commands.run import config_from_args

    args = [
        "--caption-template",
        "a photo of {gesture} by {hands}",
        "--hand-caption-template",
        "{side} hand: {gesture}",
    ]
    config = config_from_args(build_parser().parse_args(args)).validate()
    templates = config.all_caption_templates()
    assert image_caption("peace", ["right"], 0, templates) == "a photo of a peace sign by the right hand"
    assert image_caption("mute", ["left"], 0, templates) == "a photo of a finger on the lips by the left hand"
    assert (
        image_caption("none", ["left"], 0, templates) == "a person with the left hand visible"
    )  # no gesture
    assert hand_caption("peace", "left", True, templates) == "left hand: a peace sign"
    assert hand_caption("peace", "left", False, templates) == "a left hand"
    per_label = PrepConfig(caption_template="a photo of {gesture}", caption_templates={"ok": "okay: {hands}"})
    assert image_caption("ok", ["left"], 0, per_label.all_caption_templates()) == "okay: the left hand"
    assert image_caption("fist", ["left"], 0, per_label.all_caption_templates()) == "a photo of a fist"
    assert PrepConfig(caption_template="a {gesture}").fingerprint() != PrepConfig().fingerprint()
    with pytest.raises(
        SettingError, match=r"caption_template \(--caption-template\): 'a \{pose\}' does not format"
    ):
        PrepConfig(caption_template="a {pose}").validate()
    with pytest.raises(SettingError, match=r"caption_templates\['hand:ok'\]: 'a \{' does not format"):
        PrepConfig(caption_templates={"hand:ok": "a {"}).validate()


def test_warp_crop_matches_crop_image_inside_the_image(data_dir):
    from manifests.geometry import crop_image
    from prep.crops import warp_crop
    from prep.imageio import load_image

    photo = load_image(str(data_dir / "photos" / "coupleanddog.jpeg"), 10**8)[0].pixels
    for box in (
        CropBox(100.5, 50.25, 200.0, 128),
        CropBox(10.0, 10.0, 300.0, 100),
        CropBox(40.3, 60.7, 90.2, 512),
    ):
        ours, ref = warp_crop(photo, box).astype(int), crop_image(photo, box).astype(int)
        assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 1  # same pixel convention, no shift
        grey = photo[..., 0].astype(np.float32)
        np.testing.assert_allclose(warp_crop(grey, box), crop_image(grey, box), atol=0.6)
    # Outside the image both pad with the fill value.
    outside = CropBox(-400.0, -400.0, 100.0, 32)
    assert (warp_crop(photo, outside) == 0).all() and (crop_image(photo, outside) == 0).all()
