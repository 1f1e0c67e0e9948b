import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HANDFIRST_DATA", ROOT.parent / "shared" / "data"))

# Keep the 2-core CI machine from oversubscribing when torch and dask run side by side.
os.environ.setdefault("OMP_NUM_THREADS", "1")


# Fixtures that train models, build pipelines that draw images, or run the real annotator over a folder
# of photos: a test that uses one is `slow`, like the tests marked so by hand or by their module.
SLOW_FIXTURES = frozenset(
    {"tiny_runs", "hagrid_manifest", "eval_manifest", "pipe", "pipes", "folders", "hand_run", "vae_run"}
)


def pytest_collection_modifyitems(items):
    """Every test that reads ../shared/data (through `data_dir` or a fixture built on it) carries the
    `data` marker, so ``-m "not data"`` runs exactly the tests that need no sample photos. Every test
    that uses a `SLOW_FIXTURES` fixture carries the `slow` marker, so ``-m "not slow"`` (make test-fast)
    leaves out every test that trains or generates."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "data_dir" in names:
            item.add_marker(pytest.mark.data)
        if SLOW_FIXTURES.intersection(names):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "hagrid_mini").is_dir():
        pytest.skip(
            f"sample photos not found at {DATA} (set HANDFIRST_DATA or place ../shared/data beside the repo)"
        )
    return DATA


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory) -> Path:
    from manifests.synthetic import make_synthetic_manifest

    root = tmp_path_factory.mktemp("synthetic") / "manifest"
    make_synthetic_manifest(str(root), num_images=12)
    return root


@pytest.fixture(scope="session")
def hagrid_manifest(tmp_path_factory, data_dir) -> Path:
    """The real pipeline's manifest of all 40 hagrid_mini photos (label from folder), built once per session.

    It runs `prep.run` end to end: the folder source, a 2-worker Dask LocalCluster, the real annotator
    (MediaPipe hands and pose, GrabCut masks; default settings except the ones below) and the shard
    writer. `_manifest.json` records the exact settings and the run summary is in `summary.json` beside
    the manifest folder.
    """
    import json

    import prep

    root = tmp_path_factory.mktemp("hagrid") / "manifest"
    summary = prep.run(
        input=str(data_dir / "hagrid_mini"),
        out=str(root),
        label_from_dir=True,
        shard_size=10,
        workers=2,
        progress=False,
    )
    (root.parent / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    assert not summary["failed_shards"], summary["failed_shards"]
    return root


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, synthetic_manifest):
    """A hand generator and a body outpainter trained for 3 steps each by their CLIs (tiny preset);
    shared by the generate tests."""
    import torch

    from generation.cli import main

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_runs")
    common = [
        "--preset",
        "tiny",
        "--manifest",
        str(synthetic_manifest),
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "0",
        "--validate-every",
        "0",
        "--log-level",
        "WARNING",
    ]
    assert (
        main(
            [
                "train-hand",
                *common,
                "--out",
                str(root / "hand"),
                "--num-validation-poses",
                "1",
                "--validation-steps",
                "1",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train-body",
                *common,
                "--out",
                str(root / "body"),
                "--num-validation-images",
                "1",
                "--validation-steps",
                "1",
                "--learning-rate",
                "1e-3",
            ]
        )
        == 0
    )
    return str(root / "hand"), str(root / "body")
