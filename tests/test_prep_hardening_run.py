"""A prep run owns its output: one configuration per manifest, one run at a time, resume that checks
what it keeps, paths that mean the same on every worker, and one clear line for every bad input.

Most runs here go through `prep.run` with the stand-in annotator (`tests/prep_standin.py`) and a
serial in-process shard runner instead of a Dask cluster (`tests/serial_shards.py`, itself checked
against the Dask runner here), so each takes a fraction of a second; the tests about schedulers and
interrupts use real Dask clusters.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from serial_shards import SerialShards, use_serial_shards

import prep.cluster
import prep.runner
from manifests.errors import ManifestError
from manifests.reader import open_manifest
from manifests.storage import temporary_name
from manifests.validate import validate_manifest
from prep.cli import main as cli_main
from prep.config import PrepConfig
from prep.lock import LOCK_FILE, OutputLock, OutputLockedError
from prep.plan import OutputConflictError, plan_shards
from prep.runner import ClusterSetupError, run
from prep.shard import process_shard
from prep.sources import load_records

STANDIN = "prep_standin:StandInAnnotator"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, data_dir):
    """8 hagrid_mini photos in 2 label folders (4 shards of 2)."""
    src = tmp_path_factory.mktemp("hardening") / "in"
    for i, p in enumerate(sorted((data_dir / "hagrid_mini").rglob("*.jpg"))[:8]):
        (src / f"g{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, src / f"g{i % 2}" / p.name)
    return src


def cfg(src, out, **kw) -> PrepConfig:
    base = dict(
        input=str(src),
        out=str(out),
        annotator=STANDIN,
        label_from_dir=True,
        shard_size=2,
        workers=1,
        progress=False,
    )
    return PrepConfig(**{**base, **kw})


def cli_args(src, out, *extra) -> list[str]:
    return [
        "run",
        "--input",
        str(src),
        "--out",
        str(out),
        "--annotator",
        STANDIN,
        "--label-from-dir",
        "--shard-size",
        "2",
        "--workers",
        "1",
        "--no-progress",
        *extra,
    ]


@pytest.fixture
def serial(monkeypatch) -> SerialShards:
    return use_serial_shards(monkeypatch)


def stats_of(root, table="images") -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / table / "_stats").glob("shard-*.json"))}


def files_of(root) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# ------------------------------------------------------------------ 3. one manifest, one configuration


def test_a_rerun_with_other_row_settings_is_refused_and_changes_nothing(photos, tmp_path, serial, capsys):
    out = tmp_path / "m"
    run(cfg(photos, out, crop_size=128))
    before = files_of(out)
    assert len({s["config_fingerprint"] for s in stats_of(out).values()}) == 1

    rc = cli_main(cli_args(photos, out, "--crop-size", "256"))
    line = one_error_line(capsys)
    assert rc == 1 and line.startswith(f"handfirst-prep: error: {out} already holds a manifest")
    assert "shard-00000..shard-00003 were written under other row-shaping settings" in line
    assert "--overwrite" in line
    with pytest.raises(OutputConflictError):
        run(cfg(photos, out, crop_size=256))
    assert files_of(out) == before and serial.ran == [0, 1, 2, 3]  # nothing ran, nothing changed

    # runtime settings (workers, shard retries, ...) are no other configuration: the rerun resumes
    assert run(cfg(photos, out, crop_size=128, retries=0))["shards"]["skipped"] == 4


def test_overwrite_leaves_no_shard_of_the_old_settings_even_when_interrupted(photos, tmp_path, serial):
    out = tmp_path / "m"
    run(cfg(photos, out, crop_size=128))
    old_fp = cfg(photos, out, crop_size=128).fingerprint()
    new = cfg(photos, out, crop_size=256, overwrite=True)

    serial.stop_after = 1
    with pytest.raises(KeyboardInterrupt):
        run(new)
    left = stats_of(out)
    assert list(left) == ["shard-00000"] and left["shard-00000"]["config_fingerprint"] == new.fingerprint()
    assert not (out / "_manifest.json").exists()  # no summary of shards that are gone
    assert sorted(p.name for p in (out / "images").glob("*.parquet")) == ["shard-00000.parquet"]
    assert not (out / LOCK_FILE).exists()

    serial.stop_after = None
    summary = run(new)
    assert summary["shards"] == {"run": 3, "skipped": 1, "failed": 0} and summary["discarded_shards"] == []
    fps = {s["config_fingerprint"] for t in ("images", "hands") for s in stats_of(out, t).values()}
    assert fps == {new.fingerprint()} != {old_fp}
    assert validate_manifest(str(out), decode=False) == []


def test_validate_and_the_reader_name_shards_written_under_other_settings(photos, tmp_path, serial):
    out = tmp_path / "m"
    run(cfg(photos, out, crop_size=128))
    # a manifest of mixed settings: shard 1 written under --crop-size 256, the rest under 128
    other = cfg(photos, out, crop_size=256)
    shard = plan_shards(load_records(other), other)[1]
    process_shard(shard.index, shard.records, other, shard.fingerprint, shard.config_fingerprint)

    problems = [p for p in validate_manifest(str(out), decode=False) if p.kind == "settings"]
    fp_old, fp_new = cfg(photos, out, crop_size=128).fingerprint(), other.fingerprint()
    assert [p.file for p in problems] == [str(out / "images"), str(out / "hands")]
    assert all("shards written under 2 different prep settings" in p.reason for p in problems)
    assert f"{fp_old}: shard-00000, shard-00002, shard-00003" in problems[0].reason
    assert f"{fp_new}: shard-00001" in problems[0].reason
    with pytest.raises(ManifestError, match="different prep settings"):
        open_manifest(str(out))


def test_a_second_run_on_a_locked_output_is_refused_naming_the_holder(photos, tmp_path, serial, capsys):
    out = tmp_path / "m"
    out.mkdir()
    with OutputLock(str(out)):
        rc = cli_main(cli_args(photos, out))
        line = one_error_line(capsys)
    assert (
        rc == 1
        and f"{out} is in use by another prep run (pid {os.getpid()} on {socket.gethostname()}" in line
    )
    assert serial.ran == [] and sorted(p.name for p in out.iterdir()) == []  # released, nothing written
    with OutputLock(str(out)), pytest.raises(OutputLockedError):
        OutputLock(str(out)).acquire()  # O_EXCL: of two takers, one wins


def test_a_stale_lock_of_a_dead_run_is_taken_over_and_one_from_another_host_is_not(photos, tmp_path, serial):
    out = tmp_path / "m"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started_at": 0}))
    assert run(cfg(photos, out))["shards"]["run"] == 4  # killed runs do not block the output forever
    assert not (out / LOCK_FILE).exists()

    # a live pid that started after the lock was written took over a dead holder's number
    (out / LOCK_FILE).write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started_at": 0})
    )
    assert run(cfg(photos, out))["shards"]["skipped"] == 4 and not (out / LOCK_FILE).exists()

    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": "elsewhere", "started_at": 0}))
    with pytest.raises(
        OutputLockedError,
        match=f"on elsewhere.*if that run is gone, delete {re.escape(str(out / LOCK_FILE))}",
    ):
        run(cfg(photos, out))


def test_of_two_runs_taking_over_one_stale_lock_only_one_gets_it(tmp_path):
    import fcntl

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started_at": 0}))
    with open(lock, "rb") as other:  # another run is in the middle of taking it over
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputLockedError, match=f"pid {dead.pid} on"):
            OutputLock(str(tmp_path)).acquire()
    with OutputLock(str(tmp_path)) as mine:  # that run went away: the stale lock is ours now
        assert json.loads(lock.read_text())["token"] == mine.token


def test_the_object_store_lock_refuses_a_second_run():
    root = "memory://hardening-lock/m"
    with OutputLock(root):
        with pytest.raises(OutputLockedError, match=f"{root} is in use by another prep run"):
            OutputLock(root).acquire()
    OutputLock(root).acquire().release()  # released: free again


# ------------------------------------------------------------------ 4. resume checks what it keeps


def test_damaged_complete_shards_are_redone_and_their_rows_come_back(photos, tmp_path, serial):
    out = tmp_path / "m"
    run(cfg(photos, out))
    rows = pq.read_table(out / "images").sort_by("image_id").to_pylist()
    truncated = out / "images" / "shard-00000.parquet"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    (out / "hands" / "shard-00001.parquet").unlink()
    footer = out / "images" / "shard-00002.parquet"  # same size, broken footer magic
    footer.write_bytes(footer.read_bytes()[:-4] + b"XXXX")
    (out / "hands" / "_stats" / "shard-00003.json").write_text('{"rows": ')  # cut short by a full disk

    serial.ran.clear()
    summary = run(cfg(photos, out, limit=None))
    assert serial.ran == [0, 1, 2, 3] and summary["shards"] == {"run": 4, "skipped": 0, "failed": 0}
    damaged = summary["damaged_shards"]
    assert "bytes, its stats say" in damaged["shard-00000"]
    assert damaged["shard-00001"] == "hands/shard-00001: its Parquet file is missing"
    assert "footer cannot be read" in damaged["shard-00002"]
    assert damaged["shard-00003"] == "hands/_stats/shard-00003.json cannot be read"
    assert open_manifest(str(out)).images.num_rows == 8  # _manifest.json lists what is there
    assert pq.read_table(out / "images").sort_by("image_id").to_pylist() == rows


def test_leftover_temporaries_of_dead_writes_are_removed_on_rerun(photos, tmp_path, serial):
    out = tmp_path / "m"
    run(cfg(photos, out))
    old = [
        out / temporary_name("images/shard-00000.parquet"),
        out / temporary_name("hands/_stats/shard-00001.json"),
        out / temporary_name("_manifest.json"),
    ]
    for p in old:
        p.write_bytes(b"PAR1" if p.name.startswith(".shard-00000.parquet") else b"{")
        os.utime(p, (1, 1))
    # written after this run started: not a leftover, maybe another writer's file about to be renamed
    newer = out / temporary_name("hands/shard-00002.parquet")
    newer.write_bytes(b"PAR1")
    future = 4_000_000_000
    os.utime(newer, (future, future))
    run(cfg(photos, out))
    assert [p.exists() for p in old] == [False, False, False] and newer.exists()


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    import torch

    from prep.masks import build_sam_vit_tiny

    path = tmp_path_factory.mktemp("sam") / "vit_tiny.pth"
    torch.save(build_sam_vit_tiny().state_dict(), path)
    return path


def test_every_driver_check_fails_before_any_work_with_one_line(
    photos, tmp_path, serial, capsys, monkeypatch
):
    out = tmp_path / "m"
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    afile = tmp_path / "afile"
    afile.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "missing checkpoint": (
            cli_args(photos, out, "--mask-method", "sam", "--sam-checkpoint", str(tmp_path / "no.pth")),
            f"SAM checkpoint not found: {tmp_path / 'no.pth'}",
        ),
        "bad checkpoint": (
            cli_args(photos, out, "--sam-checkpoint", str(garbage)),
            f"cannot load SAM checkpoint {garbage}",
        ),
        "annotator": (cli_args(photos, out, "--annotator", "no_such_module:Annotator"), "no_such_module"),
        "out is a file": (cli_args(photos, afile), f"--out {afile} is a file, not a folder"),
        "out below a file": (
            cli_args(photos, afile / "m"),
            f"--out {afile / 'm'}: a part of that path is a file",
        ),
        "empty input": (cli_args(empty, out), f"no images found in {empty}"),
    }
    real_load = prep.runner.load_records
    for name, (argv, expected) in cases.items():
        # the output checks come before the input is even listed
        if name.startswith("out is"):
            monkeypatch.setattr(prep.runner, "load_records", lambda c: pytest.fail("read the input"))
        rc = cli_main(argv)
        monkeypatch.setattr(prep.runner, "load_records", real_load)
        line = one_error_line(capsys)
        assert rc == 1 and line.startswith("handfirst-prep: error: ") and expected in line, (name, line)
        assert serial.ran == [] and not out.exists(), name
    assert afile.read_text() == "x"


def test_a_loadable_sam_checkpoint_passes_the_driver_check(tiny_sam, tmp_path):
    from prep.errors import ModelLoadError
    from prep.runner import check_sam

    check_sam(PrepConfig(mask_method="sam", sam_checkpoint=str(tiny_sam), sam_model_type="vit_tiny"))
    # a checkpoint the run does not use is not loaded
    check_sam(PrepConfig(mask_method="grabcut", sam_checkpoint=str(tmp_path / "unused.pth")))
    with pytest.raises(ModelLoadError, match="needs a checkpoint"):
        check_sam(PrepConfig(mask_method="sam"))


# ------------------------------------------------------------------ 5. paths and external schedulers


@pytest.fixture(scope="module")
def other_cwd_cluster(tmp_path_factory):
    """An external cluster whose worker runs in another working directory than the tests."""
    from distributed import LocalCluster

    cwd = os.getcwd()
    there = tmp_path_factory.mktemp("worker_cwd")
    os.chdir(there)
    try:
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0")
    finally:
        os.chdir(cwd)
    with cluster:
        yield cluster, there


@pytest.mark.slow  # an external Dask scheduler and workers
def test_relative_paths_reach_external_workers_resolved_and_remote_workers_need_a_shared_filesystem(
    photos, tmp_path, monkeypatch, other_cwd_cluster
):
    cluster, worker_cwd = other_cwd_cluster
    monkeypatch.chdir(tmp_path)
    # workers on another host: a local --out would land on their disks
    monkeypatch.setattr(prep.cluster, "is_local_host", lambda host: False)
    with pytest.raises(
        ClusterSetupError,
        match=rf"runs workers on other hosts \(127\.0\.0\.1\), but --input {re.escape(str(photos))}, --out m are local",
    ):
        run(cfg(photos, "m", scheduler=cluster.scheduler_address, limit=2))
    assert not list(tmp_path.glob("m/images/*.parquet"))

    summary = run(cfg(photos, "m", scheduler=cluster.scheduler_address, limit=2, shared_filesystem=True))
    assert summary["shards"]["run"] == 1 and summary["out"] == "m"
    assert (tmp_path / "m" / "images" / "shard-00000.parquet").is_file()  # the driver's m, not the worker's
    assert not (worker_cwd / "m").exists()


def test_an_unreachable_scheduler_is_one_line_after_a_short_wait(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prep.cluster, "SCHEDULER_CONNECT_TIMEOUT_S", 0.3)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    rc = cli_main(cli_args(photos, tmp_path / "m", "--scheduler", f"tcp://127.0.0.1:{port}"))
    line = one_error_line(capsys)
    assert rc == 1 and f"cannot reach the Dask scheduler tcp://127.0.0.1:{port} within 0.3 s" in line
    assert not (tmp_path / "m" / LOCK_FILE).exists()
    rc = cli_main(cli_args(photos, tmp_path / "m", "--scheduler", "head-node"))
    line = one_error_line(capsys)
    assert rc == 1 and "--scheduler head-node is not a Dask scheduler address: missing port number" in line


# ------------------------------------------------------------------ interrupts


@pytest.mark.slow  # a Dask cluster, several seconds
def test_ctrl_c_exits_130_with_one_line_and_the_rerun_resumes(photos, tmp_path, monkeypatch, capsys):
    """The real runner on a real LocalCluster; Ctrl-C lands in the driver's result loop."""
    out = tmp_path / "m"

    class InterruptAfterFirstShard:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt

        def set_postfix(self, **k):
            pass

    monkeypatch.setattr(prep.cluster, "_progress", InterruptAfterFirstShard)
    rc = cli_main(cli_args(photos, out, "--limit", "4"))
    line = one_error_line(capsys)
    assert rc == 130
    assert (
        line
        == f"handfirst-prep: interrupted: 1 completed shard in {out} is kept; rerun the same command to resume"
    )
    assert not (out / LOCK_FILE).exists()
    monkeypatch.undo()
    serial = use_serial_shards(monkeypatch)
    summary = run(cfg(photos, out, limit=4))
    assert summary["shards"] == {"run": 1, "skipped": 1, "failed": 0} and serial.ran == [1]


@pytest.mark.slow  # a Dask cluster, several seconds
def test_sigint_to_the_process_group_stops_workers_quietly(photos, tmp_path):
    """Ctrl-C in a terminal: SIGINT reaches the driver and every worker process of its LocalCluster."""
    import signal
    import time

    src = tmp_path / "in"
    shutil.copytree(photos, src)
    images = sorted(src.rglob("*.jpg"))[:3]
    for p in sorted(src.rglob("*.jpg"))[3:]:
        p.unlink()
    block = images[1].with_name(images[1].name + ".block")  # the second shard waits until interrupted
    block.write_text("")
    out = tmp_path / "m"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    argv = [sys.executable, "-m", "prep", *cli_args(src, out)]
    argv[argv.index("--shard-size") + 1] = "1"
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        busy = images[1].with_name(images[1].name + ".blocked")  # shard 0 is written, shard 1 is running
        while not busy.exists() and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    expected = (
        f"handfirst-prep: interrupted: 1 completed shard in {out} is kept; rerun the same command to resume"
    )
    *before, last = err.strip().splitlines()
    assert last == expected and all(line.startswith("INFO ") for line in before), err  # no worker noise
    assert not (out / LOCK_FILE).exists()


@pytest.mark.slow  # a Dask cluster, several seconds
def test_the_serial_stand_in_writes_what_the_dask_runner_writes(photos, tmp_path):
    """The stand-in the other tests use gives the real `run_shards`' stats and rows for the same shards."""
    from prep.cluster import run_shards
    from prep.runner import plan_input

    volatile = {"timings", "seconds", "cpu_seconds", "worker"}
    results = {}
    for name, runner in (("dask", run_shards), ("serial", SerialShards().run_shards)):
        config = cfg(photos, tmp_path / name)
        done, failed, _ = runner(plan_input(config), config)
        assert failed == {}
        stats = sorted(
            ({k: v for k, v in s.items() if k not in volatile} for s in done), key=lambda s: s["index"]
        )
        tables = {
            p.relative_to(tmp_path / name).as_posix(): pq.read_table(p)
            for p in sorted((tmp_path / name).rglob("*.parquet"))
        }
        results[name] = stats, tables
    (dask_stats, dask_tables), (serial_stats, serial_tables) = results["dask"], results["serial"]
    assert [s["index"] for s in dask_stats] == [0, 1, 2, 3] and dask_stats == serial_stats
    assert sorted(dask_tables) == sorted(serial_tables) and len(dask_tables) == 8
    assert all(dask_tables[k].equals(serial_tables[k]) for k in dask_tables)
