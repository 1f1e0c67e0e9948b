"""Full-HD photos: decoded at the stored image's size, detected on the same pixels whatever the photo's
resolution, with keypoints in original pixels and small hands' crops from full resolution.

The full-HD photos are hagrid_mini photos upscaled 3.75x to 1440x1920 (the size of real HaGRID photos)
in a temporary folder; the same photo at 384x512 is the reference.
"""

import io

import numpy as np
import pytest
from PIL import Image

from manifests.codecs import decode_image as decode_stored
from manifests.geometry import CropBox
from prep.annotate import Annotator
from prep.config import PrepConfig
from prep.crops import antialiased_crop, make_crop, scale_box
from prep.imageio import decode_image, load_image
from prep.records import HandAnnotation, ImageRecord

UPSCALE = 3.75  # 384x512 -> 1440x1920
PHOTOS = {
    # The photo whose only hand (~30 px, found by the wrist-crop pass) was lost at full HD: the wrist
    # crop grew with the photo (672 px instead of 256) and MediaPipe shrank it again without filtering.
    "four/25bb4c45-e40b-482c-b588-04db60b7e450.jpg": 1,
    "call/0e022ee9-74fd-44fe-adad-60c11835e44f.jpg": 2,  # one hand per pass
    "none/00c84257-800d-4032-9e64-e47eb97005f5.jpg": 2,  # two hands in the first pass
}
MAX = 40_000_000


def _record(path, image_id, **kw) -> ImageRecord:
    return ImageRecord(image_id=image_id, source_uri=str(path), dataset="folder", **kw)


def _upscaled(src, dst) -> None:
    im = Image.open(src).convert("RGB")
    im.resize((round(im.width * UPSCALE), round(im.height * UPSCALE)), Image.BICUBIC).save(dst, quality=95)


@pytest.fixture(scope="module")
def pairs(data_dir, tmp_path_factory):
    """{photo: ((row, hands) at 512 px, (row, hands) at full HD)} from one default annotator."""
    tmp = tmp_path_factory.mktemp("fullhd")
    annotator = Annotator(PrepConfig())
    out = {}
    for i, name in enumerate(PHOTOS):
        src = data_dir / "hagrid_mini" / name
        big = tmp / f"{i}.jpg"
        _upscaled(src, big)
        out[name] = (annotator.annotate(_record(src, f"s{i}")), annotator.annotate(_record(big, f"b{i}")))
    annotator.close()
    return out


def test_full_hd_finds_the_same_hands_as_512_px(pairs):
    for name, ((row_s, hands_s), (row_b, hands_b)) in pairs.items():
        assert (row_b["width"], row_b["height"]) == (1440, 1920), name
        assert row_s["status"] == row_b["status"] == "ok", name
        assert len(hands_s) == len(hands_b) == PHOTOS[name], name
        assert [h["keypoint_source"] for h in hands_s] == [h["keypoint_source"] for h in hands_b], name


def test_full_hd_keypoints_agree_with_512_px_within_2_px(pairs):
    """Keypoints in original pixels of each photo; compared at 512 px (full HD divided by 3.75)."""
    for name, ((_, hands_s), (_, hands_b)) in pairs.items():
        for hs, hb in zip(hands_s, hands_b):
            err = np.abs(np.array(hb["keypoints"])[:, :2] / UPSCALE - np.array(hs["keypoints"])[:, :2])
            assert err.max() <= 2.0, (name, err.max())
            assert hb["handedness"] == hs["handedness"], name


def test_full_hd_body_pose_is_in_original_pixels(pairs):
    for name, ((row_s, _), (row_b, _)) in pairs.items():
        small, big = np.array(row_s["body_keypoints"]), np.array(row_b["body_keypoints"])
        seen = (small[:, 2] > 0.5) & (big[:, 2] > 0.5)
        assert seen.sum() >= 10, name
        assert np.median(np.abs(big[seen, :2] / UPSCALE - small[seen, :2])) < 2.0, name


def test_stored_image_of_a_full_hd_photo_is_bounded_and_upright(pairs):
    for name, (_, (row_b, hands_b)) in pairs.items():
        assert (row_b["image_width"], row_b["image_height"]) == (576, 768), name
        stored = decode_stored(row_b["image"])
        assert stored.shape == (768, 576, 3) and Image.open(io.BytesIO(row_b["image"])).format == "JPEG"
        assert decode_stored(row_b["hands_mask"]).shape[:2] == (768, 576)
        # Keypoints stay in original pixels, beyond the stored image's size.
        assert max(p[1] for h in hands_b for p in h["keypoints"]) > 768, name


def test_small_hands_crops_are_cut_from_full_resolution(pairs):
    """A hand crop of a full-HD photo is its full-resolution pixels (up to JPEG), not the reduced pixels
    (the stored image) enlarged."""
    for name, ((_, hands_s), (row_b, hands_b)) in pairs.items():
        full = decode_image(open(row_b["source_uri"], "rb").read(), MAX).pixels
        stored = decode_stored(row_b["image"])
        for hs, hb in zip(hands_s, hands_b):
            np.testing.assert_allclose(np.array(hb["crop_box"]) / UPSCALE, hs["crop_box"], atol=3.0)
            box = CropBox.from_box(hb["crop_box"], hb["crop_size"])
            crop = decode_stored(hb["crop"]).astype(float)
            from_full = np.abs(crop - antialiased_crop(full, box)).mean()
            from_reduced = np.abs(crop - antialiased_crop(stored, scale_box(box, 576 / 1440))).mean()
            assert from_full < 0.6 and from_reduced > 2 * from_full, (name, from_full, from_reduced)


# ------------------------------------------------------------------------------ decoding at reduced scale


@pytest.fixture(scope="module")
def fine_jpeg(tmp_path_factory):
    """A 1600x1200 JPEG: a 2-px checkerboard (grey once reduced) left, a smooth ramp right."""
    y, x = np.mgrid[0:1200, 0:1600]
    grey = np.where((x // 2 + y // 2) % 2 == 0, 230, 25).astype(np.uint8)
    grey[:, 800:] = (x[:, 800:] // 7 % 256).astype(np.uint8)
    path = tmp_path_factory.mktemp("fine") / "fine.jpg"
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path, quality=95)
    return path


def test_small_hand_crop_comes_from_full_resolution_and_a_large_one_needs_no_full_decode(fine_jpeg):
    cfg = PrepConfig(crop_size=256, crop_margin=0.0)
    decoded, _ = load_image(str(fine_jpeg), MAX, max_side=400)  # scale 1/4
    assert decoded.pixels.shape == (300, 400, 3) and (decoded.width, decoded.height) == (1600, 1200)

    large = np.array([[300.0, 100.0, 1.0], [1400.0, 1000.0, 1.0]] + [[900.0, 500.0, 1.0]] * 19)  # 1100 px box
    crop = make_crop(decoded, large, cfg)
    assert not decoded.full_decoded  # 275 reduced px cover it at 256: no full decode
    assert np.array_equal(crop.pixels, antialiased_crop(decoded.pixels, scale_box(crop.box, 0.25)))

    small = np.array([[200.0, 200.0, 1.0], [300.0, 300.0, 1.0]] + [[250.0, 250.0, 1.0]] * 19)  # 100 px box
    crop = make_crop(decoded, small, cfg)
    assert decoded.full_decoded
    assert np.array_equal(crop.pixels, antialiased_crop(decoded.full_pixels(), crop.box))
    assert crop.pixels.std() > 60  # the checkerboard, which the reduced pixels average to grey
    assert decoded.pixels[40:80, 40:80].std() < 10


def test_jpeg_is_decoded_in_draft_mode_and_full_resolution_on_demand(data_dir, monkeypatch):
    from PIL import JpegImagePlugin

    data = (data_dir / "photos" / "victory.jpg").read_bytes()
    full = decode_image(data, MAX)
    scales = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = draft(self, mode, size)
        scales.append(self.decoderconfig[0] if self.decoderconfig else 1)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    side = max(full.width, full.height) // 4
    reduced = decode_image(data, MAX, "victory.jpg", max_side=side)
    assert scales == [4]  # the JPEG decoder itself returned a quarter of the pixels per side
    assert max(reduced.pixels.shape[:2]) == side and reduced.reduced and not reduced.full_decoded
    assert (reduced.width, reduced.height) == (full.width, full.height)
    assert np.array_equal(reduced.full_pixels(), full.pixels)
    # The reduced pixels are the photo, not a shifted or stretched copy of it.
    ref = np.asarray(Image.fromarray(full.pixels).resize(reduced.pixels.shape[1::-1], Image.BOX)).astype(int)
    assert np.abs(reduced.pixels.astype(int) - ref).mean() < 3


def test_reduced_decode_applies_exif_orientation_and_maps_points_back(data_dir):
    photo = Image.open(data_dir / "photos" / "victory.jpg").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, shown rotated 90 degrees clockwise
    buf = io.BytesIO()
    photo.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    full = decode_image(buf.getvalue(), MAX)
    reduced = decode_image(buf.getvalue(), MAX, max_side=max(photo.size) // 2)
    assert (reduced.width, reduced.height) == photo.size == (full.width, full.height)
    assert reduced.oriented and reduced.pixels.shape[:2] == (photo.height // 2, photo.width // 2)
    ref = np.asarray(Image.fromarray(full.pixels).resize(reduced.pixels.shape[1::-1], Image.BOX)).astype(int)
    assert np.abs(reduced.pixels.astype(int) - ref).mean() < 3
    points = np.array([[0.0, 0.0, 1.0], [photo.width, photo.height, 0.5], [10.5, 20.25, 0.0]])
    np.testing.assert_allclose(reduced.to_full(reduced.to_reduced(points)), points)
    np.testing.assert_allclose(reduced.to_reduced(points)[1], [photo.width // 2, photo.height // 2, 0.5])


def test_annotation_keypoints_of_a_full_hd_photo_stay_exact(data_dir, tmp_path):
    big = tmp_path / "big.jpg"
    _upscaled(data_dir / "hagrid_mini" / next(iter(PHOTOS)), big)
    kps = np.array([[700 + 9.25 * i, 900 - 7.5 * i, 1.0] for i in range(21)])
    a = Annotator(PrepConfig(keypoint_source="annotation", body_pose=False, mask_method="none"))
    row, (hand,) = a.annotate(_record(big, "ann", hands=[HandAnnotation(keypoints=kps)]))
    assert (row["width"], row["height"], row["image_width"]) == (1440, 1920, 576)
    np.testing.assert_array_equal(np.array(hand["keypoints"]), kps.astype(np.float32))
    box = CropBox.from_box(hand["crop_box"], hand["crop_size"])
    np.testing.assert_allclose(box.to_crop(kps)[:, :2], np.array(hand["crop_keypoints"])[:, :2], atol=1e-3)
    assert a.timings["decode"] > 0 and a.timings["pose"] == 0.0


def test_stage_timed_inside_another_is_not_counted_twice(monkeypatch):
    """The full-resolution decode runs inside the hands stage (wrist crops) but counts as decode only."""
    import prep.annotate

    clock = iter([0.0, 1.0, 3.0, 4.0])
    monkeypatch.setattr(prep.annotate.time, "perf_counter", lambda: next(clock))
    a = Annotator(PrepConfig(body_pose=False, mask_method="none"))
    with a._timed("hands"):
        with a._timed("decode"):
            pass
    assert a.timings["hands"] == 2.0 and a.timings["decode"] == 2.0


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGB"])
def test_every_jpeg_mode_decodes_reduced_like_the_full_image_shrunk(data_dir, mode):
    buf = io.BytesIO()
    Image.open(data_dir / "photos" / "victory.jpg").convert(mode).save(buf, "JPEG", quality=95)
    full = decode_image(buf.getvalue(), MAX)
    reduced = decode_image(buf.getvalue(), MAX, max_side=max(full.width, full.height) // 3)
    assert reduced.source_mode == mode and reduced.pixels.shape[2] == 3
    ref = np.asarray(Image.fromarray(full.pixels).resize(reduced.pixels.shape[1::-1], Image.BOX)).astype(int)
    assert np.abs(reduced.pixels.astype(int) - ref).mean() < 2
    assert np.array_equal(reduced.full_pixels(), full.pixels)


def test_bad_annotation_of_a_full_hd_photo_is_reported_in_its_own_pixels(data_dir, tmp_path):
    from prep.errors import AnnotationError

    big = tmp_path / "big.jpg"
    _upscaled(data_dir / "hagrid_mini" / next(iter(PHOTOS)), big)
    kps = np.array([[1300 + 20.0 * i, 900.0, 1.0] for i in range(21)])  # reaches x = 1700 > 1440
    a = Annotator(PrepConfig(keypoint_source="annotation", body_pose=False, mask_method="none"))
    with pytest.raises(AnnotationError, match=r"outside the 1440x1920 image \(x 1300\.\.1700"):
        a.annotate(_record(big, "bad", hands=[HandAnnotation(keypoints=kps)]))


def test_boxes_map_between_frames_per_axis_when_the_rounded_scales_differ():
    """384x834 reduced to 768 is 354x768: x and y scales differ (0.9219 against 0.9209); a box's
    corner must follow each axis, or a box at the bottom lands most of a pixel off its hand."""
    from prep.crops import box_to_full, box_to_reduced

    buf = io.BytesIO()
    Image.new("RGB", (384, 834), (90, 120, 30)).save(buf, "PNG")
    decoded = decode_image(buf.getvalue(), MAX, max_side=768)
    assert decoded.pixels.shape[:2] == (768, 354)
    sx, sy = decoded.scale
    box = CropBox(300.0, 780.0, 40.0, 64)
    small = box_to_reduced(decoded, box)
    assert (small.x0, small.y0) == pytest.approx((300.0 * sx, 780.0 * sy), abs=1e-9) and small.size == 64
    assert abs(small.y0 - 780.0 * sx) > 0.7  # what one scale for both axes would have done
    back = box_to_full(decoded, small)
    assert (back.x0, back.y0, back.side, back.size) == pytest.approx((300.0, 780.0, 40.0, 64), abs=1e-9)
