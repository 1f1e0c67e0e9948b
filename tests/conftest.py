import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HANDFIRST_DATA", ROOT.parent / "shared" / "data"))

# Keep the 2-core CI machine from oversubscribing when torch and dask run side by side.
os.environ.setdefault("OMP_NUM_THREADS", "1")


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
