import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from manifest_edits import copy_manifest, rewrite

from manifests.cli import COMMANDS, main
from manifests.validate import validate_manifest


def _reasons(problems):
    return [str(p) for p in problems]


def test_a_valid_manifest_has_no_problems(synthetic_manifest):
    assert validate_manifest(str(synthetic_manifest)) == []
    assert validate_manifest(str(synthetic_manifest / "hands")) == []
    assert validate_manifest(str(synthetic_manifest), workers=2) == []


def test_orphan_hand_row(synthetic_manifest, tmp_path):
    def edit(idx, images, hands):
        if idx == 1:
            orphan = dict(hands[0], hand_id="ghost_h0", image_id="ghost")
            hands = hands + [orphan]
        return images, hands

    root = rewrite(synthetic_manifest, tmp_path / "m", edit)
    problems = validate_manifest(str(root))
    n = pq.read_metadata(root / "hands" / "shard-00001.parquet").num_rows
    assert _reasons(problems) == [
        f"{root}/hands/shard-00001.parquet row {n - 1}: hand ghost_h0: image_id 'ghost' has no row in the images table (orphan hand)"
    ]


def test_bad_heatmap_shape(synthetic_manifest, tmp_path):
    def edit(idx, images, hands):
        if idx == 2:
            hands[1] = dict(hands[1], heatmap_shape=[21, 9, 9])
        return images, hands

    root = rewrite(synthetic_manifest, tmp_path / "m", edit)
    problems = validate_manifest(str(root))
    assert len(problems) == 1
    p = problems[0]
    assert (p.file, p.row, p.kind) == (f"{root}/hands/shard-00002.parquet", 1, "decode")
    assert (
        "heatmap: cannot decode heatmap: 2688 bytes for shape (21, 9, 9) float16 (expected 3402)" in p.reason
    )


def test_wrong_heatmap_channels_and_crop_size(synthetic_manifest, tmp_path):
    def edit(idx, images, hands):
        if idx == 0:
            hands[0] = dict(hands[0], heatmap_shape=[20, 8, 8])
            hands[1] = dict(hands[1], crop_size=32)
        return images, hands

    root = rewrite(synthetic_manifest, tmp_path / "m", edit)
    text = "\n".join(_reasons(validate_manifest(str(root))))
    assert (
        "shard-00000.parquet row 0: hand synthetic_00000_h0 heatmap: heatmap_shape [20, 8, 8], expected [21, H, W]"
        in text
    )
    assert (
        "shard-00000.parquet row 1: hand synthetic_00001_h0 crop: image header is 64x64 (height x width), "
        "row states (32, 32); not decoded" in text
    )


def test_png_bombs_are_refused_from_their_header_before_decoding(synthetic_manifest, tmp_path):
    from hostile_files import png_bomb_manifest

    root = png_bomb_manifest(synthetic_manifest, tmp_path / "m", 3000)
    found = {(p.file.rsplit("/", 2)[-2], p.row): p.reason for p in validate_manifest(str(root))}
    crop = "image header is 3000x3000"
    assert crop in found["hands", 0] and "hand synthetic_00000_h0 crop" in found["hands", 0]
    assert crop in found["images", 0] and "image synthetic_00000 image" in found["images", 0]
    assert all("not decoded" in reason for reason in found.values())
    assert {k for k in found if "header" in found[k]} == {("hands", 0), ("images", 0)}


def test_keypoints_outside_the_image(synthetic_manifest, tmp_path):
    def edit(idx, images, hands):
        if idx == 0:
            kps = np.array(hands[2]["keypoints"])
            kps[:, 0] += 1000.0  # and keep bbox / crop consistent so only the image check fires
            x0, y0, x1, y1 = hands[2]["bbox"]
            cb = hands[2]["crop_box"]
            hands[2] = dict(
                hands[2],
                keypoints=kps.tolist(),
                bbox=[x0 + 1000, y0, x1 + 1000, y1],
                crop_box=[cb[0] + 1000, cb[1], cb[2] + 1000, cb[3]],
            )
        return images, hands

    root = rewrite(synthetic_manifest, tmp_path / "m", edit)
    problems = validate_manifest(str(root))
    assert len(problems) == 1 and problems[0].row == 2 and problems[0].kind == "keypoints"
    assert problems[0].file == f"{root}/hands/shard-00000.parquet"
    assert "keypoints outside the 256x192 image" in problems[0].reason


def test_num_hands_and_status_disagreements(synthetic_manifest, tmp_path):
    def edit(idx, images, hands):
        if idx == 0:
            images[0] = dict(images[0], num_hands=3)
            images[1] = dict(images[1], status="maybe")
        return images, hands

    root = rewrite(synthetic_manifest, tmp_path / "m", edit)
    text = "\n".join(_reasons(validate_manifest(str(root))))
    assert (
        f"{root}/images/shard-00000.parquet row 0: image synthetic_00000: num_hands=3 but the hands table has 1 rows for it"
        in text
    )
    assert "row 1: image synthetic_00001: status 'maybe' is not one of ('ok', 'no_hands', 'error')" in text


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("corrupt", "hands/shard-00001.parquet: corrupt or truncated Parquet file"),
        ("truncate", "images/shard-00000.parquet: corrupt or truncated Parquet file"),
        ("version", "hands/shard-00002.parquet: schema version 0.9, but this code reads version 1.2"),
        ("stats", "hands/_stats/shard-00000.json: stats file missing"),
        ("manifest", "hands/_manifest.json: _manifest.json missing"),
    ],
)
def test_file_level_failures_and_cli_exit_code(synthetic_manifest, tmp_path, capsys, damage, expected):
    root = copy_manifest(synthetic_manifest, tmp_path / "m")
    if damage == "corrupt":
        (root / "hands" / "shard-00001.parquet").write_bytes(b"\x00" * 500)
    elif damage == "truncate":
        p = root / "images" / "shard-00000.parquet"
        p.write_bytes(p.read_bytes()[:-100])
    elif damage == "version":
        p = root / "hands" / "shard-00002.parquet"
        t = pq.read_table(p)
        pq.write_table(
            t.replace_schema_metadata({**t.schema.metadata, b"handfirst.schema_version": b"0.9"}), p
        )
    elif damage == "stats":
        (root / "hands" / "_stats" / "shard-00000.json").unlink()
    elif damage == "manifest":
        (root / "hands" / "_manifest.json").unlink()
    problems = validate_manifest(str(root))
    assert any(expected in str(p) for p in problems), _reasons(problems)
    assert main(["validate", str(root)]) == 1
    out = capsys.readouterr()
    assert expected in out.out and "problem(s)" in out.err
    # The reader refuses the same manifest, naming the same file: the run failed.
    assert main(["stats", str(root)]) == 1
    assert expected.split(":")[0] in capsys.readouterr().err


def test_cli_validate_json_and_exit_zero(synthetic_manifest, capsys):
    assert main(["validate", str(synthetic_manifest), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["validate", str(synthetic_manifest / "nope")]) == 1
    assert "no such manifest directory" in capsys.readouterr().out


def test_help_lists_every_registered_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS) and {"validate", "stats", "preview", "card"} <= set(COMMANDS)
    assert main(["nope"]) == 2 and "unknown command 'nope'" in capsys.readouterr().err


def test_a_subcommand_registered_by_module_name(tmp_path, monkeypatch, capsys):
    (tmp_path / "fake_manifest_command.py").write_text(
        'HELP = "say hello"\n'
        "def add_arguments(p):\n    p.add_argument('name')\n"
        "def run(args):\n    print('hello', args.name)\n    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(
        COMMANDS, "hello", ("fake_manifest_command", "say hello")
    )  # the one line a new subcommand needs
    assert main(["hello", "world"]) == 3
    assert capsys.readouterr().out == "hello world\n"


def test_cli_options_are_checked_settings(synthetic_manifest, tmp_path, capsys):
    """Every subcommand's options are `Settings` fields: a value outside its range is one error line."""
    from manifests.commands.validate import ValidateConfig

    assert main(["validate", str(synthetic_manifest), "--workers", "0"]) == 2
    assert "workers (--workers) must be >= 1, got 0" in capsys.readouterr().err
    assert main(["preview", str(synthetic_manifest)]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "sheet.png").exists()
    assert main(["score", str(synthetic_manifest)]) == 2
    assert "--truth" in capsys.readouterr().err
    # --no-decode, --json, and -v before or after the subcommand.
    assert main(["-v", "validate", str(synthetic_manifest), "--no-decode", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert ValidateConfig().decode is True
