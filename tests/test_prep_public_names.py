"""prep's public door: what generation may import from prep, and how prep's own modules depend on each other."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import prep
from prep.config import PrepConfig

ROOT = Path(__file__).resolve().parents[1]


def _prep_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from prep... import name` / `import prep...` in the file at `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "prep"
        ):
            out += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            out += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] == "prep"]
    return out


@pytest.mark.parametrize("package", ["evaluate", "generate"])
def test_generation_uses_only_prep_public_names(package):
    files = sorted((ROOT / "generation" / package).rglob("*.py"))
    assert files
    found = {(str(f.relative_to(ROOT)), m, n) for f in files for m, n in _prep_imports(f)}
    private = sorted(x for x in found if x[1] != "prep" or x[2] not in prep.__all__)
    assert not private, f"imports past prep's public names: {private}"
    assert found  # both packages do use prep


def test_every_public_name_resolves_without_importing_dask():
    names = ", ".join(prep.__all__)
    code = f"import sys; from prep import {names}; print('distributed' in sys.modules, 'mediapipe' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]
    with pytest.raises(AttributeError, match="has no attribute 'process_shard'"):
        prep.process_shard  # noqa: B018


def test_sources_import_the_config_for_types_only():
    """prep.config lists the source formats from prep.sources; the sources never import prep.config back."""
    for path in sorted((ROOT / "prep" / "sources").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        top = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "config"]
        assert not top, f"{path.name} imports prep.config at run time"


def test_detection_config_finds_poses_only():
    config = prep.detection_config(PrepConfig(mask_method="sam", keypoint_source="annotation", crop_size=64))
    assert (config.mask_method, config.keypoint_source, config.crop_size) == ("none", "detect", 64)
    assert prep.detection_config() == prep.detection_config(PrepConfig())


@pytest.mark.parametrize(
    ("method", "checkpoint", "resolved"),
    [
        ("auto", None, "grabcut"),
        ("auto", "sam.pth", "sam"),
        ("sam", None, "sam"),
        ("grabcut", "sam.pth", "grabcut"),
        ("none", "sam.pth", "none"),
    ],
)
def test_the_runner_and_the_masks_read_auto_alike(method, checkpoint, resolved):
    from prep.cluster import uses_sam
    from prep.masks import resolve_mask_method

    config = PrepConfig(mask_method=method, sam_checkpoint=checkpoint)
    assert config.resolved_mask_method() == resolve_mask_method(config) == resolved
    assert uses_sam(config) == (resolved == "sam")
