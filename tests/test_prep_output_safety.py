"""prep and its output folder: nothing of the user's is deleted or replaced, and prep's own files
(lock, plan, summaries, stats) are read as hostile files are: regular files only, bounded, never hanging.

The runs use the serial stand-in of `test_prep_hardening_run` (no Dask) unless a test is about the cluster.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import test_prep_hardening_run as hardening

from manifests.cli import main as manifests_main
from manifests.storage import temporary_name
from prep.cli import main as cli_main
from prep.commands.run import format_summary
from prep.lock import LOCK_FILE
from prep.plan_cache import PLAN_FILE
from prep.runner import run

cfg, cli_args, one_error_line = hardening.cfg, hardening.cli_args, hardening.one_error_line
photos, serial = hardening.photos, hardening.serial  # fixtures

# ------------------------------------------------------------------ the user's files in --out


def test_only_temporaries_that_prep_wrote_are_removed(photos, tmp_path, serial):
    out = tmp_path / "m"
    run(cfg(photos, out))
    users = {
        out / ".draft.tmp": b"x",
        out / "images" / ".x.tmp": b"x",
        out / "hands" / "_stats" / ".x.tmp": b"{}",
        # prep's name pattern, but a target prep never writes there, or not what prep writes
        out / (".notes.txt." + "0" * 32 + ".handfirst.tmp"): b"{}",
        out / "images" / (".shard-00000.parquet." + "0" * 32 + ".handfirst.tmp"): b"my notes",
    }
    dead = {  # what writes that died leave: prep's name beside its target, prep's content or none
        out / temporary_name("images/shard-00000.parquet"): b"PAR1\x15\x04",
        out / temporary_name("hands/_stats/shard-00001.json"): b'{"rows": ',
        out / temporary_name("_manifest.json"): b"",
        out / temporary_name(PLAN_FILE): b"{",
    }
    for path, data in {**users, **dead}.items():
        path.write_bytes(data)
        os.utime(path, (1, 1))
    run(cfg(photos, out))
    assert {p: p.read_bytes() for p in users} == users
    assert [p for p in dead if p.exists()] == []


@pytest.mark.parametrize(
    "where, content",
    [
        ("_manifest.json", "{}"),
        ("_manifest.json", "[1, 2]"),
        ("images/_manifest.json", '{"schema_version": "1"}'),
    ],
)
def test_an_out_holding_a_manifest_json_that_is_not_handfirst_s_is_refused(
    photos, tmp_path, serial, capsys, where, content
):
    out = tmp_path / "m"
    (out / where).parent.mkdir(parents=True)
    (out / where).write_text(content)
    rc = cli_main(cli_args(photos, out))
    line = one_error_line(capsys)
    assert rc == 1 and f"holds {out / where}, which is not a handfirst manifest's" in line, line
    assert (out / where).read_text() == content and serial.ran == []
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == sorted(
        {where, *(["images"] if "/" in where else [])}
    )


def test_a_handfirst_manifest_in_out_is_resumed(photos, tmp_path, serial):
    out = tmp_path / "m"
    run(cfg(photos, out, limit=4))
    assert run(cfg(photos, out, limit=4))["shards"] == {"run": 0, "skipped": 2, "failed": 0}


# ------------------------------------------------------------------ prep's own files, read bounded


def _fifo(path):
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def _dev_zero(path):
    path.unlink(missing_ok=True)
    path.symlink_to("/dev/zero")


def _directory(path):
    path.unlink(missing_ok=True)
    path.mkdir()


BREAKERS = {
    "fifo": _fifo,
    "dev_zero": _dev_zero,
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(b"\x00garbage"),
    "directory": _directory,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(BREAKERS))
def test_a_broken_lock_is_refused_naming_the_file_to_delete(photos, tmp_path, serial, capsys, kind):
    out = tmp_path / "m"
    out.mkdir()
    BREAKERS[kind](out / LOCK_FILE)
    rc = cli_main(cli_args(photos, out))
    line = one_error_line(capsys)
    assert rc == 1 and f"{out / LOCK_FILE} is not a prep lock (" in line, line
    assert f"if no prep run is using {out}, delete it" in line and serial.ran == []
    assert os.path.lexists(out / LOCK_FILE)  # left to the user, who was told to delete it


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_prep_s_plan_and_stats_as_special_files_are_redone_and_never_block(photos, tmp_path, serial, kind):
    out = tmp_path / "m"
    run(cfg(photos, out))
    BREAKERS[kind](out / PLAN_FILE)
    BREAKERS[kind](out / "images" / "_stats" / "shard-00001.json")
    summary = run(cfg(photos, out))
    assert summary["shards"] == {"run": 1, "skipped": 3, "failed": 0}
    assert "cannot be read" in summary["damaged_shards"]["shard-00001"]
    assert json.loads((out / PLAN_FILE).read_text())["state"]  # written again, as a file
    assert (out / "images" / "_stats" / "shard-00001.json").is_file()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_validate_stats_and_run_never_block_on_a_special_manifest_json(
    photos, tmp_path, serial, capsys, kind
):
    out = tmp_path / "m"
    run(cfg(photos, out, limit=2))
    BREAKERS[kind](out / "_manifest.json")
    BREAKERS[kind](out / "hands" / "_stats" / "shard-00000.json")
    BREAKERS[kind](out / "images" / "shard-00000.parquet")
    capsys.readouterr()
    assert manifests_main(["validate", str(out)]) == 1
    found = capsys.readouterr().out
    assert f"{out / '_manifest.json'}: unreadable _manifest.json" in found
    assert f"{out / 'hands' / '_stats' / 'shard-00000.json'}: unreadable stats file" in found
    assert "not a regular file" in found
    assert manifests_main(["stats", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("handfirst-manifests stats: error: ") and "not a regular file" in err
    rc = cli_main(cli_args(photos, out, "--limit", "2"))
    line = one_error_line(capsys)
    assert rc == 1 and "_manifest.json, which is not a handfirst manifest's (" in line
    assert "not a regular file" in line


# ------------------------------------------------------------------ deeply nested JSON

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("fmt", ["coco", "hagrid"])
def test_deeply_nested_annotation_json_is_one_line_naming_the_file(tmp_path, serial, capsys, fmt):
    src = tmp_path / "in"
    if fmt == "coco":
        ann = src / "annotations" / "keypoints.json"
    else:
        ann = src / "annotations" / "train" / "call.json"
        (src / "call").mkdir(parents=True)
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text('{"images": ' + DEEP + "}" if fmt == "coco" else '{"a": ' + DEEP + "}")
    rc = cli_main(cli_args(src, tmp_path / "m", "--format", fmt))
    line = one_error_line(capsys)
    assert rc == 1 and f"{ann}: malformed annotation JSON: JSON nested too deeply to parse" in line, line


def test_a_shard_whose_stats_are_nested_too_deeply_is_redone(photos, tmp_path, serial):
    out = tmp_path / "m"
    run(cfg(photos, out))
    (out / "hands" / "_stats" / "shard-00002.json").write_text('{"rows": ' + DEEP + "}")
    summary = run(cfg(photos, out))
    assert summary["shards"] == {"run": 1, "skipped": 3, "failed": 0}
    assert list(summary["damaged_shards"]) == ["shard-00002"]
    assert json.loads((out / "hands" / "_stats" / "shard-00002.json").read_text())["rows"] >= 0


def test_manifests_read_nested_stats_as_a_finding(photos, tmp_path, serial, capsys):
    out = tmp_path / "m"
    run(cfg(photos, out, limit=2))
    (out / "images" / "_stats" / "shard-00000.json").write_text(DEEP)
    assert manifests_main(["validate", "--no-decode", str(out)]) == 1
    assert "unreadable stats file: JSON nested too deeply to parse" in capsys.readouterr().out
    shutil.rmtree(out)


# ------------------------------------------------------------------ one input per manifest


def test_another_input_does_not_silently_replace_a_manifest(photos, tmp_path, serial, capsys, data_dir):
    out = tmp_path / "m"
    run(cfg(photos, out, limit=4))
    before = hardening.files_of(out)
    serial.ran.clear()
    other = data_dir / "photos"
    rc = cli_main(cli_args(other, out, "--limit", "4"))
    line = one_error_line(capsys)
    assert rc == 1 and "shards shard-00000..shard-00001 were written from another input" in line, line
    assert f"(--format folder --input {photos})" in line and "--overwrite" in line
    assert hardening.files_of(out) == before and serial.ran == []
    # the same folder named another way is the same input (its shards name other paths: redone)
    (tmp_path / "link").symlink_to(photos)
    assert run(cfg(tmp_path / "link", out, limit=4))["shards"]["failed"] == 0
    summary = run(cfg(other, out, limit=4, overwrite=True))
    assert summary["shards"] == {"run": 2, "skipped": 0, "failed": 0}
    ids = {r["image_id"] for r in hardening.pq.read_table(out / "images").to_pylist()}
    assert ids == {p.stem for p in sorted(other.iterdir())[:4]}


# ------------------------------------------------------------------ what is read as input


def test_an_input_below_a_dot_folder_is_read_by_every_source(tmp_path, data_dir):
    from img2dataset_layout import write_parquet, write_webdataset
    from test_prep_sources import make_hagrid

    from prep.config import PrepConfig
    from prep.sources import load_records

    cache = tmp_path / ".cache" / "data"
    photos = sorted((data_dir / "hagrid_mini").rglob("*.jpg"))[:4]
    for p in photos:
        (cache / "folder" / "g").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, cache / "folder" / "g" / p.name)
    write_webdataset(cache / "webdataset", photos, per_shard=2)
    write_parquet(cache / "parquet", photos, per_shard=2)
    shutil.copytree(data_dir / "keypoints_gt" / "freihand", cache / "coco")
    shutil.copytree(data_dir / "keypoints_gt" / "interhand2.6m", cache / "interhand")
    make_hagrid(cache / "hagrid", data_dir, {("train", "call"): [("c00", "u0", 1), ("c01", "u1", 1)]})
    # below the input root, hidden names are still skipped
    (cache / "folder" / ".trash").mkdir()
    shutil.copy(photos[0], cache / "folder" / ".trash" / "old.jpg")
    shutil.copytree(cache / "webdataset", cache / "webdataset" / ".old")
    expected = {"folder": 4, "webdataset": 6, "parquet": 6, "coco": 8, "interhand": 4, "hagrid": 2}
    found = {
        fmt: len(load_records(PrepConfig(input=str(cache / fmt), format=fmt, annotator=hardening.STANDIN)))
        for fmt in expected
    }
    assert found == expected


def test_the_output_inside_the_input_is_never_read_as_input(photos, tmp_path, serial, data_dir):
    from img2dataset_layout import write_parquet

    src = tmp_path / "in"
    shutil.copytree(photos, src)
    settings = dict(preview=str(src / "preview.png"))
    first = run(cfg(src, src / "m", **settings))
    assert (src / "preview.png").is_file() and first["manifest"]["images"] == 8
    again = run(cfg(src, src / "m", **settings))
    assert again["shards"] == {"run": 0, "skipped": 4, "failed": 0} and again["manifest"]["images"] == 8

    tables = tmp_path / "pq"
    write_parquet(tables, sorted((data_dir / "hagrid_mini").rglob("*.jpg"))[:4], per_shard=2)
    for _ in range(2):
        summary = run(cfg(tables, tables / "m", format="parquet"))
        assert summary["manifest"]["images"] == 6


def test_the_input_folder_itself_as_out_is_refused(photos, tmp_path, serial, capsys):
    src = tmp_path / "in"
    shutil.copytree(photos, src)
    rc = cli_main(cli_args(src, src))
    line = one_error_line(capsys)
    assert rc == 1 and f"--out {src} is the --input folder itself" in line
    assert sorted(p.name for p in src.iterdir()) == ["g0", "g1"]


def test_a_brace_pattern_naming_too_many_files_is_one_line(tmp_path, serial, capsys, monkeypatch):
    import prep.sources.units

    monkeypatch.setattr(prep.sources.units, "MAX_PATTERN_NAMES", 1000, raising=False)
    rc = cli_main(cli_args(f"{tmp_path}/s/{{00000..99999}}.tar", tmp_path / "m", "--format", "webdataset"))
    line = one_error_line(capsys)
    assert rc == 1 and "its braces name more than 1000 files" in line, line
    assert not (tmp_path / "m").exists()


def test_a_billion_name_brace_pattern_is_refused_without_building_it(tmp_path, serial, capsys):
    rc = cli_main(cli_args(f"{tmp_path}/s/{{0..999999999}}.tar", tmp_path / "m", "--format", "webdataset"))
    line = one_error_line(capsys)
    assert rc == 1 and "its braces name more than 1000000 files" in line, line


# ------------------------------------------------------------------ clusters that answer


@pytest.mark.timeout(120)
def test_a_scheduler_that_never_answers_is_one_line_and_leaves_nothing(photos, tmp_path, monkeypatch, capsys):
    import socket
    import threading

    import prep.cluster

    monkeypatch.setattr(prep.cluster, "SCHEDULER_CONNECT_TIMEOUT_S", 1.0)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []

    def accept_and_stay_silent():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    out = tmp_path / "m"
    try:
        rc = cli_main(cli_args(photos, out, "--scheduler", address))
    finally:
        server.close()
        for conn in accepted:
            conn.close()
    line = one_error_line(capsys)
    assert rc == 1 and f"cannot reach the Dask scheduler {address} within 1 s" in line, line
    assert "it accepted the connection but did not answer" in line and accepted
    assert not out.exists()  # no lock held, no plan written


@pytest.mark.timeout(120)
def test_a_scheduler_without_workers_is_waited_for_then_one_line(photos, tmp_path, capsys):
    from distributed import LocalCluster

    out = tmp_path / "m"
    with LocalCluster(n_workers=0, dashboard_address=":0") as cluster:
        address = cluster.scheduler_address
        rc = cli_main(cli_args(photos, out, "--scheduler", address, "--worker-timeout", "0.5"))
    line = one_error_line(capsys)
    assert rc == 1 and f"--scheduler {address} has 0 workers after waiting 0.5 s (--worker-timeout)" in line
    assert not out.exists()


def test_workers_lost_mid_run_and_failed_attempts_are_logged_and_counted(photos, tmp_path, capsys, caplog):
    src = tmp_path / "in"
    shutil.copytree(photos, src)
    victim = sorted(src.rglob("*.jpg"))[3]  # in shard 1
    (victim.parent / (victim.name + ".die-once")).write_text("")
    out = tmp_path / "m"
    rc = cli_main([*cli_args(src, out), "--retries", "2", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["failed_shards"] == {} and summary["manifest"]["images"] == 8
    (why,) = summary["retried_shards"]["shard-00001"]
    assert why.startswith("its worker tcp://") and why.endswith(" left while running it")
    assert list(summary["retried_shards"]) == ["shard-00001"]
    assert f"shard-00001 lost an attempt ({why}); Dask retries it" in caplog.text

    # an attempt that raises: every shard fails twice (one retry), and the first failure is a retry
    (tmp_path / "m2" / "images").mkdir(parents=True)
    (tmp_path / "m2" / "images" / "_stats").write_text("a file where prep writes a folder")
    summary = run(cfg(src, tmp_path / "m2", retries=1, limit=4))
    assert (
        sorted(summary["failed_shards"])
        == sorted(summary["retried_shards"])
        == ["shard-00000", "shard-00001"]
    )
    assert all(len(whys) == 1 and "Error" in whys[0] for whys in summary["retried_shards"].values())
    text = format_summary({**summary, "out": "m2"})
    assert "2 failed, 2 retried" in text and "RETRIED     shard-00000: " in text


def test_an_output_the_workers_do_not_share_is_refused(photos, tmp_path, serial, capsys):
    rc = cli_main(cli_args(photos, "memory://prep-out/m"))
    line = one_error_line(capsys)
    assert rc == 1 and "--out memory://prep-out/m is held in this process's memory" in line, line
    assert serial.ran == []


# ------------------------------------------------------------------ ids


def test_ids_are_unique_across_tars_row_groups_and_files_of_one_name(tmp_path, serial, data_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from img2dataset_layout import write_webdataset

    from manifests.validate import validate_manifest

    photos = sorted((data_dir / "hagrid_mini").rglob("*.jpg"))[:2]
    tars = tmp_path / "tars"
    write_webdataset(tars / "a", photos, per_shard=2)
    shutil.copytree(tars / "a", tars / "b")  # the same keys again, in a tar of the same name
    jpg = photos[0].read_bytes()
    tables = tmp_path / "tables"
    for folder in ("x", "y"):  # x/part.parquet beside y/part.parquet, keyless: ids from the position
        (tables / folder).mkdir(parents=True)
        pq.write_table(pa.table({"jpg": [jpg, jpg]}), tables / folder / "part.parquet")
    pq.write_table(pa.table({"jpg": [jpg] * 4, "key": ["k"] * 4}), tables / "keys.parquet", row_group_size=2)
    cases = {"webdataset": (tars, 6), "parquet": (tables, 8)}
    for fmt, (src, n) in cases.items():
        out = tmp_path / f"m-{fmt}"
        summary = run(cfg(src, out, format=fmt, label_from_dir=False))
        ids = [r["image_id"] for r in pq.read_table(out / "images").to_pylist()]
        assert summary["manifest"]["images"] == len(ids) == len(set(ids)) == n, ids
        assert [p for p in validate_manifest(str(out), decode=False) if "image_id" in p.message] == []
    assert sorted(ids) == [
        "keys_rg0__k",
        "keys_rg0__k__dup1",
        "keys_rg1__k",
        "keys_rg1__k__dup1",
        "x__part_rg0__row-000000",
        "x__part_rg0__row-000001",
        "y__part_rg0__row-000000",
        "y__part_rg0__row-000001",
    ]


# ------------------------------------------------------------------ memory


@pytest.mark.timeout(300)
def test_hostile_prep_files_and_patterns_stay_within_memory(photos, tmp_path):
    """A `_prep.lock` linked to /dev/zero (23 GB when read unbounded) and a billion-name brace pattern
    (3.1 GB when built whole): each run, in its own process, stays under 1.5 GB of RSS and ends in one line."""
    from peak_memory import run_module_measured

    out = tmp_path / "m"
    out.mkdir()
    (out / LOCK_FILE).symlink_to("/dev/zero")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hardening.ROOT / "tests"), str(hardening.ROOT)])}
    cases = {
        "lock": cli_args(photos, out),
        "braces": cli_args(f"{tmp_path}/s/{{0..999999999}}.tar", tmp_path / "b", "--format", "webdataset"),
    }
    for name, argv in cases.items():
        # The program's own peak: the wait4 usage of a child also counts this process, copied at the fork.
        rc, err, peak_mb = run_module_measured("prep", argv, env, tmp_path / f"{name}.peak")
        assert rc == 1 and len(err) == 1 and "Traceback" not in err[0], (name, err)
        assert peak_mb < 1536, (name, peak_mb)


@pytest.mark.timeout(180)
def test_a_cluster_whose_workers_all_leave_stops_the_run_after_the_wait(photos, tmp_path, capsys):
    import threading
    import time

    from distributed import LocalCluster

    src = tmp_path / "in"
    shutil.copytree(photos, src)
    busy = sorted(src.rglob("*.jpg"))[2]  # shard 1 waits while `.block` exists
    (busy.parent / (busy.name + ".block")).write_text("")
    out = tmp_path / "m"
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:

        def leave_once_busy():
            while not (busy.parent / (busy.name + ".blocked")).exists():
                time.sleep(0.05)
            cluster.scale(0)

        threading.Thread(target=leave_once_busy, daemon=True).start()
        rc = cli_main(cli_args(src, out, "--scheduler", cluster.scheduler_address, "--worker-timeout", "1"))
    line = one_error_line(capsys)
    assert rc == 1 and f"the Dask cluster {cluster.scheduler_address} has had 0 workers for 1 s" in line, line
    assert "with 3 shards to do; the 1 completed this run are kept" in line
    assert sorted(p.name for p in (out / "images").glob("*.parquet")) == ["shard-00000.parquet"]
    assert not (out / LOCK_FILE).exists()
