import warnings
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from manifests.datasets import BodyDataset, HandCropDataset, ManifestDataLoader
from manifests.datasets.body import mirror_caption
from manifests.geometry import heatmap_peaks
from manifests.partition import loader_order, rank_units, resume_streams, worker_consumption, worker_units
from manifests.pose import MEDIAPIPE_POSE_MIRROR, MEDIAPIPE_POSE_NAMES, to_openpose18
from manifests.reader import open_manifest
from manifests.synthetic import make_synthetic_manifest

warnings.filterwarnings("ignore", message=".*worker processes in total.*")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "m"
    make_synthetic_manifest(str(root), num_images=30, shard_size=5)  # 6 shards x 2 row groups
    return open_manifest(str(root))


def _ids(loader, key="hand_id"):
    return [i for batch in loader for i in batch[key]]


# ----- sharding: every sample exactly once per epoch over workers x ranks --------------------------


@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_hand_once_per_epoch_over_workers_and_ranks(manifest, num_workers, world_size):
    torch.manual_seed(0)
    everything = manifest.read("hands", ["hand_id"]).column("hand_id").to_pylist()
    seen = []
    for rank in range(world_size):
        ds = HandCropDataset(manifest, rank=rank, world_size=world_size, seed=3)
        ds.set_epoch(1)
        seen += _ids(DataLoader(ds, batch_size=4, num_workers=num_workers))
    counts = Counter(seen)
    assert sorted(counts) == sorted(everything) and set(counts.values()) == {1}


def test_filtered_body_images_once_per_epoch(manifest):
    want = (
        manifest.read("images", ["image_id"], status="ok", label=["call", "rock"])
        .column("image_id")
        .to_pylist()
    )
    seen = []
    for rank in range(2):
        ds = BodyDataset(manifest, resolution=32, label=["call", "rock"], rank=rank, world_size=2)
        seen += _ids(DataLoader(ds, batch_size=3, num_workers=2), "image_id")
    assert sorted(seen) == sorted(want) and len(seen) == len(set(seen))


def test_plan_partitions_units_for_many_combinations():
    rng = np.random.default_rng(0)
    for _ in range(50):
        sizes = rng.integers(1, 40, size=rng.integers(1, 30)).tolist()
        world, workers, epoch = int(rng.integers(1, 6)), int(rng.integers(1, 6)), int(rng.integers(0, 9))
        got = []
        for rank in range(world):
            mine = rank_units(sizes, seed=7, epoch=epoch, shuffle=True, rank=rank, world_size=world)
            parts = worker_units(sizes, mine, workers)
            assert sorted(u for p in parts for u in p) == sorted(mine)
            got += mine
        assert sorted(got) == list(range(len(sizes)))
    # Ranks are balanced by rows: the spread is at most the largest unit.
    sizes = [10] * 17 + [3] * 9
    loads = [sum(sizes[u] for u in rank_units(sizes, 0, 0, True, r, 4)) for r in range(4)]
    assert max(loads) - min(loads) <= 10


def test_shuffle_depends_on_seed_and_epoch_only(manifest):
    def order(seed, epoch):
        ds = HandCropDataset(manifest, seed=seed)
        ds.set_epoch(epoch)
        return _ids(DataLoader(ds, batch_size=5))

    a = order(1, 0)
    assert a == order(1, 0)
    assert a != order(1, 1) and sorted(a) == sorted(order(1, 1))
    assert a != order(2, 0)
    plain = _ids(DataLoader(HandCropDataset(manifest, shuffle=False), batch_size=5))
    assert plain == manifest.read("hands", ["hand_id"]).column("hand_id").to_pylist()


def test_loader_interleaving_model_matches_torch(manifest):
    ds = HandCropDataset(manifest, seed=4)
    streams = []
    for w in range(3):
        # Each worker's own stream, read in the main process with a fake worker id.
        plan = ds.worker_plan(3)
        ds_w = HandCropDataset(manifest, seed=4)
        streams.append([s["hand_id"] for s in ds_w._generate(w, 3, 0, None)])
        assert len(streams[-1]) == sum(ds._count(u) for u in plan[w])
    assert _ids(DataLoader(ds, batch_size=2, num_workers=3)) == loader_order(streams, 2)


# ----- exact resume ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_workers, batch_size, label",
    [(0, 3, None), pytest.param(3, 2, ["call", "four"], marks=pytest.mark.slow)],  # 3 worker processes
)
def test_resume_continues_exactly_where_it_stopped(manifest, num_workers, batch_size, label):
    def loader():
        return ManifestDataLoader(
            HandCropDataset(manifest, seed=9, label=label), batch_size=batch_size, num_workers=num_workers
        )

    first = loader()
    first.set_epoch(2)
    full = _ids(first)
    assert first.samples_seen == len(full)
    nbatches = -(-len(full) // batch_size)
    # Stops early, mid-epoch and where the workers have run out unevenly.
    for stop in sorted({1, nbatches // 2, nbatches - 1}):
        a = loader()
        a.set_epoch(2)
        got = []
        for i, batch in enumerate(a):
            got += batch["hand_id"]
            if i + 1 == stop:
                state = a.state_dict()
                break
        b = loader()
        b.load_state_dict(state)
        b.set_epoch(2)  # the trainer's loop calls this again; the pending resume survives
        assert got + _ids(b) == full, stop
        b.set_epoch(3)  # the next epoch starts from its beginning
        assert len(_ids(b)) == len(full)


def test_resume_refuses_another_loader_shape(manifest):
    a = ManifestDataLoader(HandCropDataset(manifest), batch_size=4)
    state = {**a.state_dict(), "samples_seen": 8}
    with pytest.raises(ValueError, match="batch_size=4, this loader has batch_size=2"):
        ManifestDataLoader(HandCropDataset(manifest), batch_size=2).load_state_dict(state)
    with pytest.raises(ValueError, match="saved seed=0, this dataset has 5"):
        ManifestDataLoader(HandCropDataset(manifest, seed=5), batch_size=4).load_state_dict(state)


def test_worker_consumption_round_robin():
    # Workers with 5, 1 and 4 samples, batches of 2: batches w0 w1 w2 | w0 w2 | w0.
    assert worker_consumption([5, 1, 4], 2, 0) == ([0, 0, 0], [0, 1, 2])
    assert worker_consumption([5, 1, 4], 2, 5) == ([2, 1, 2], [0, 2])
    assert worker_consumption([5, 1, 4], 2, 7) == ([4, 1, 2], [2, 0])
    assert resume_streams([5, 1, 4], 2, 7) == [(2, 2), (0, 4), None]
    with pytest.raises(ValueError, match="not on a batch boundary"):
        worker_consumption([5, 1, 4], 2, 4)
    with pytest.raises(ValueError, match="exceeds"):
        worker_consumption([5, 1, 4], 2, 11)


# ----- samples ---------------------------------------------------------------------------------


def test_hand_crop_samples(manifest):
    torch.manual_seed(0)
    batch = next(iter(DataLoader(HandCropDataset(manifest, shuffle=False), batch_size=4)))
    assert batch["pixel_values"].shape == (4, 3, 64, 64) and batch["pixel_values"].dtype == torch.float32
    assert -1.0 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1.0
    assert batch["heatmap"].shape == (4, 21, 8, 8) and batch["mask"].shape == (4, 1, 64, 64)
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert all(c.startswith("a hand showing a") for c in batch["caption"])
    # The stored crop's skin pixels are under the mask (the synthetic hand is painted skin colour).
    skin = torch.tensor([224, 172, 138]) / 127.5 - 1
    inside = (batch["pixel_values"] - skin[None, :, None, None]).abs().amax(1) < 0.1
    assert (inside & (batch["mask"][:, 0] > 0)).sum() > 0.9 * inside.sum()


def test_hand_crop_resize_keeps_heatmap_keypoints_and_mask_consistent(manifest):
    ds = HandCropDataset(manifest, shuffle=False, resolution=96, heatmap_size=24)
    plain = HandCropDataset(manifest, shuffle=False)
    for s, p in zip(list(iter(ds))[:6], list(iter(plain))[:6]):
        assert s["pixel_values"].shape == (3, 96, 96) and s["mask"].shape == (1, 96, 96)
        assert s["heatmap"].shape == (21, 24, 24)
        np.testing.assert_allclose(s["keypoints"][:, :2], p["keypoints"][:, :2] * 1.5, rtol=1e-5)
        peaks = heatmap_peaks(s["heatmap"].numpy(), 96)
        assert np.abs(peaks - s["keypoints"][:, :2].numpy()).max() <= 96 / 24  # within one heatmap pixel
        assert abs(s["mask"].mean() - p["mask"].mean()) < 0.02  # same fraction of the crop is hand


@pytest.fixture
def projected_columns(monkeypatch):
    """Column lists of every Parquet row-group read, in call order."""
    calls = []
    real = pq.ParquetFile.read_row_group

    def spy(self, i, columns=None, **kwargs):
        calls.append(None if columns is None else list(columns))
        return real(self, i, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    return calls


@pytest.mark.parametrize("options", [{}, {"resolution": 96, "heatmap_size": 24, "label": ["call", "four"]}])
def test_without_pixels_the_crop_column_is_never_read(manifest, projected_columns, options):
    torch.manual_seed(0)
    kw = dict(seed=2, shuffle_window=2, **options)
    with_pixels = list(HandCropDataset(manifest, **kw))
    assert projected_columns and all("crop" in c for c in projected_columns if "mask" in c)
    projected_columns.clear()
    without = list(HandCropDataset(manifest, load_pixels=False, **kw))
    # Every read is projected (never "all columns") and none of them touches the crops.
    assert projected_columns and all(c is not None and "crop" not in c for c in projected_columns)
    assert len(without) == len(with_pixels) > 0
    for a, b in zip(with_pixels, without):
        assert "pixel_values" in a and "pixel_values" not in b
        assert set(a) - {"pixel_values"} == set(b)
        assert a["hand_id"] == b["hand_id"] and a["caption"] == b["caption"]
        for key in ("heatmap", "mask", "keypoints"):
            assert torch.equal(a[key], b[key]), (a["hand_id"], key)


def test_without_pixels_resume_continues_at_the_same_sample(manifest):
    def loader(load_pixels):
        return ManifestDataLoader(HandCropDataset(manifest, seed=9, load_pixels=load_pixels), batch_size=3)

    full = loader(True)
    full.set_epoch(1)
    order = _ids(full)
    a = loader(True)
    a.set_epoch(1)
    it = iter(a)
    got = next(it)["hand_id"] + next(it)["hand_id"]
    state = a.state_dict()
    b = loader(False)  # a position saved while loading pixels resumes without them, and the reverse
    b.load_state_dict(state)
    b.set_epoch(1)
    assert got + _ids(b) == order


def test_body_samples_transform_image_mask_and_keypoints_together(manifest):
    ds = BodyDataset(manifest, resolution=(96, 160), fit="contain", shuffle=False)
    n = 0
    for s in ds:
        n += 1
        assert s["pixel_values"].shape == (3, 96, 160) and s["hands_mask"].shape == (1, 96, 160)
        scale, tx, ty = s["transform"].tolist()
        assert abs(scale - 0.5) < 1e-6 and abs(tx - 16.0) < 1e-6 and ty == 0  # 256x192 into 160x96
        mask = s["hands_mask"][0].numpy() > 0
        for kps, valid in zip(s["hand_keypoints"].numpy(), s["hand_valid"].numpy()):
            if not valid:
                continue
            xy = np.floor(kps[:, :2]).astype(int)
            assert (
                mask[xy[:, 1], xy[:, 0]].mean() > 0.9
            )  # the transformed keypoints fall on the transformed mask
        assert s["num_hands"] == int(s["hand_valid"].sum()) > 0
        assert s["openpose"].shape == (18, 3)
    assert n == manifest.read("images", ["image_id"], status="ok").num_rows


def test_body_cover_crop_centred_on_hands_keeps_them_in_frame(manifest):
    ds = BodyDataset(manifest, resolution=(128, 64), fit="cover", crop="hands", shuffle=False)
    for s in ds:
        kps = s["hand_keypoints"][s["hand_valid"]]
        assert s["transform"][0] == pytest.approx(128 / 192)
        centre = (kps[..., 0].min() + kps[..., 0].max()) / 2
        assert -1 <= centre <= 65  # the focus is inside the 64-px-wide window (clamped at the image edge)


def test_mirrored_body_samples_swap_sides_with_the_image(manifest):
    """A flipped sample is the mirror image of the plain one: pixels and mask mirrored, every keypoint
    at W - x, the body landmarks of one side now the other's, handedness and caption swapped."""
    kw = dict(resolution=(96, 128), fit="contain", shuffle=False)
    plain, mirrored = BodyDataset(manifest, **kw), BodyDataset(manifest, hflip=1.0, **kw)
    checked_body = 0
    for a, b in zip(plain, mirrored):
        assert not a["flipped"] and b["flipped"] and a["image_id"] == b["image_id"]
        assert torch.equal(b["pixel_values"], a["pixel_values"].flip(-1))
        assert torch.equal(b["hands_mask"], a["hands_mask"].flip(-1))
        valid = a["hand_valid"]
        assert torch.equal(b["hand_valid"], valid)
        ka, kb = a["hand_keypoints"][valid], b["hand_keypoints"][valid]
        assert torch.allclose(kb[..., 0], 128 - ka[..., 0]) and torch.equal(kb[..., 1:], ka[..., 1:])
        swap = {0: 1, 1: 0, -1: -1}
        assert b["handedness"].tolist() == [swap[h] for h in a["handedness"].tolist()]
        assert b["caption"] == mirror_caption(a["caption"])
        if a["has_body"]:
            checked_body += 1
            left, right = MEDIAPIPE_POSE_NAMES.index("left_wrist"), MEDIAPIPE_POSE_NAMES.index("right_wrist")
            assert b["body_keypoints"][right, 0] == pytest.approx(128 - float(a["body_keypoints"][left, 0]))
            assert b["body_keypoints"][right, 1] == a["body_keypoints"][left, 1]
            assert torch.equal(b["openpose"], torch.from_numpy(to_openpose18(b["body_keypoints"].numpy())))
            # The person's right wrist (OpenPose 4) is now drawn where the left one (7) was, mirrored.
            assert b["openpose"][4, 0] == pytest.approx(128 - float(a["openpose"][7, 0]))
    assert checked_body > 5


def test_mirroring_is_drawn_per_image_and_epoch_and_repeats_on_resume(manifest):
    ds = BodyDataset(manifest, resolution=32, hflip=0.5, seed=3, shuffle=False)
    ids = [s["image_id"] for s in BodyDataset(manifest, resolution=32, shuffle=False)]
    draws = {e: [ds.flips(i, e) for i in ids] for e in range(3)}
    assert all(0.2 < np.mean(d) < 0.8 for d in draws.values()) and draws[0] != draws[1]
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        assert [s["flipped"] for s in ds] == draws[epoch]  # the stream draws what `flips` says
    assert BodyDataset(manifest, resolution=32, hflip=0.5, seed=3).flips(ids[0], 1) == draws[1][0]
    with pytest.raises(ValueError, match=r"hflip is a probability in \[0, 1\], got 1.5"):
        BodyDataset(manifest, resolution=32, hflip=1.5)


@pytest.mark.parametrize(
    "text, mirrored",
    [
        (
            "a person showing a call-me sign with the left hand",
            "a person showing a call-me sign with the right hand",
        ),
        ("Right hand up, LEFT hand down", "Left hand up, RIGHT hand down"),
        ("leftover rightful copyright", "leftover rightful copyright"),
    ],
)
def test_mirror_caption_swaps_the_side_words_only(text, mirrored):
    assert mirror_caption(text) == mirrored
    assert mirror_caption(mirrored) == text


def test_the_pose_mirror_swaps_every_left_landmark_with_its_right_one():
    for i, j in enumerate(MEDIAPIPE_POSE_MIRROR):
        assert MEDIAPIPE_POSE_MIRROR[j] == i
        a, b = MEDIAPIPE_POSE_NAMES[i], MEDIAPIPE_POSE_NAMES[j]
        assert (a == b == "nose") or (a.replace("left", "right") == b or a.replace("right", "left") == b)


def test_memory_filesystem_dataset():
    url = "memory://handfirst-test/ds-m"
    try:
        make_synthetic_manifest(url, num_images=6)
        ds = HandCropDataset(url, seed=0)
        ids = [s["hand_id"] for s in ds]
        assert sorted(ids) == sorted(
            open_manifest(url).read("hands", ["hand_id"]).column("hand_id").to_pylist()
        )
    finally:
        import fsspec

        fsspec.filesystem("memory").rm("/handfirst-test", recursive=True)


@pytest.mark.parametrize("dataset", [HandCropDataset, BodyDataset])
def test_a_png_bomb_is_refused_from_its_header_naming_the_shard_and_row(dataset, tmp_path):
    from hostile_files import png_bomb_manifest

    from manifests.errors import RowDecodeError

    src = tmp_path / "m"
    make_synthetic_manifest(str(src), num_images=4, shard_size=2)
    root = png_bomb_manifest(src, tmp_path / "bombs", 3000)
    with pytest.raises(RowDecodeError) as caught:
        list(dataset(open_manifest(str(root)), shuffle=False))
    message = str(caught.value)
    assert "shard-00000.parquet row group 0:" in message and "synthetic_00000" in message
    assert "header is 3000x3000" in message and "not decoded" in message


@pytest.mark.parametrize(
    "dataset, table, values, message",
    [
        (HandCropDataset, "hands", {"crop_keypoints": [[float("nan"), 1.0, 1.0]] * 21}, "NaN or infinite"),
        (BodyDataset, "hands", {"keypoints": [[1.0, float("inf"), 1.0]] * 21}, "NaN or infinite"),
        (BodyDataset, "images", {"width": -5}, "width x height -5 x"),
    ],
)
def test_a_row_with_nan_keypoints_or_a_negative_size_is_refused_naming_the_shard(
    dataset, table, values, message, tmp_path
):
    from manifest_edits import rewrite

    from manifests.errors import RowDecodeError

    src = tmp_path / "m"
    make_synthetic_manifest(str(src), num_images=4, shard_size=2)

    def edit(idx, images, hands):
        rows = hands if table == "hands" else images
        if idx == 0:
            rows[0] = dict(rows[0], **values)
        return images, hands

    root = rewrite(src, tmp_path / "edited", edit)
    with pytest.raises(RowDecodeError) as caught:
        list(dataset(open_manifest(str(root)), shuffle=False))
    text = str(caught.value)
    assert "shard-00000.parquet row group 0: " in text and "synthetic_00000" in text and message in text
