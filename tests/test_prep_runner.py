"""Shard planning, resume, worker death and the Dask runner, with a light stand-in annotator.

`prep_standin.StandInAnnotator` reads every image through fsspec like the real annotator (so bad files
really fail) but fakes the models, which keeps these Dask runs to a second or two each; it can also
kill its worker process on demand. The real annotator's end-to-end run is `hagrid_manifest`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections import Counter

import pyarrow.parquet as pq
import pytest

from manifests.reader import open_manifest
from manifests.writer import ManifestWriter
from prep.cli import main as cli_main
from prep.config import PrepConfig
from prep.plan import OutputConflictError, pending_shards, plan_shards
from prep.runner import run
from prep.shard import process_shard
from prep.sources import load_records

STANDIN = "prep_standin:StandInAnnotator"


@pytest.fixture
def mixed_input(tmp_path, data_dir):
    """12 hagrid_mini copies in 3 label folders plus 4 bad files (zero-byte, truncated, text, corrupt)."""
    src = tmp_path / "in"
    photos = sorted((data_dir / "hagrid_mini").rglob("*.jpg"))[:12]
    for i, p in enumerate(photos):
        (src / f"g{i % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, src / f"g{i % 3}" / p.name)
    (src / "bad").mkdir()
    (src / "bad" / "empty.jpg").write_bytes(b"")
    (src / "bad" / "truncated.jpg").write_bytes(photos[0].read_bytes()[:300])
    (src / "bad" / "text.png").write_text("not an image")
    (src / "bad" / "garbage.jpg").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    return src


def cfg(src, out, **kw):
    base = dict(
        input=str(src),
        out=str(out),
        annotator=STANDIN,
        label_from_dir=True,
        shard_size=5,
        workers=2,
        progress=False,
    )
    return PrepConfig(**{**base, **kw})


def read_table(root, table):
    return pq.read_table(f"{root}/{table}").to_pylist()


def image_ids(root):
    return sorted(r["image_id"] for r in read_table(root, "images"))


def test_process_shard_turns_every_failure_into_a_row(mixed_input, tmp_path):
    config = cfg(mixed_input, tmp_path / "m")
    records = load_records(config)
    bad = [r for r in records if r.label == "bad"]
    assert len(bad) == 4
    records = (
        bad
        + [r for r in records if r.label != "bad"][:2]
        + [records[0].__class__(image_id="src-err", source_uri="?", dataset="folder", error="made up")]
    )
    stats = process_shard(0, records, config, "fp")
    assert stats["images"] == len(records) and sum(stats["status_counts"].values()) == len(records)
    assert stats["status_counts"]["error"] == 5 and {"decode", "annotate", "write"} <= set(stats["timings"])
    rows = {r["image_id"]: r for r in read_table(config.out, "images")}
    assert set(rows) == {r.image_id for r in records}
    for r in bad:
        assert rows[r.image_id]["status"] == "error" and rows[r.image_id]["error"]
    assert rows["src-err"]["error"] == "SourceRecordError: made up"
    on_disk = json.loads((tmp_path / "m" / "images" / "_stats" / "shard-00000.json").read_text())
    assert (
        on_disk["fingerprint"] == "fp"
        and on_disk["rows"] == len(records)
        and on_disk["status_counts"]["error"] == 5
    )


def test_resume_plan_skips_complete_redoes_dead_and_changed(mixed_input, tmp_path):
    config = cfg(mixed_input, tmp_path / "m")
    shards = plan_shards(load_records(config), config)
    assert [s.num_images for s in shards] == [5, 5, 5, 1]
    assert [s.fingerprint for s in shards] == [
        s.fingerprint for s in plan_shards(load_records(config), config)
    ]
    writer = ManifestWriter(config.out)
    for s in shards[:3]:
        process_shard(s.index, s.records, config, s.fingerprint, s.config_fingerprint)
    plan = pending_shards(shards, writer)
    assert [s.index for s in plan.todo] == [3] and sorted(plan.skipped) == [0, 1, 2] and plan.discard == []
    # a worker that died mid-write leaves a shard without stats: it is redone
    (tmp_path / "m" / "hands" / "_stats" / "shard-00001.json").unlink()
    assert [s.index for s in pending_shards(shards, writer).todo] == [1, 3]
    # settings that change rows make another manifest: refused, or with overwrite all old shards go
    changed = plan_shards(load_records(config), cfg(mixed_input, tmp_path / "m", crop_size=256))
    with pytest.raises(
        OutputConflictError, match=r"shards shard-00000..shard-00002 were written under other"
    ):
        pending_shards(changed, writer)
    plan = pending_shards(changed, writer, overwrite=True)
    assert [s.index for s in plan.todo] == [0, 1, 2, 3] and plan.discard == [0, 2] and plan.skipped == {}
    # runtime settings do not change rows
    same = plan_shards(load_records(config), cfg(mixed_input, tmp_path / "m", workers=7, retries=5))
    assert [s.index for s in pending_shards(same, writer).todo] == [1, 3]
    # an output written from a larger input cannot be resumed by a smaller plan
    smaller = plan_shards(load_records(config)[:10], config)
    with pytest.raises(OutputConflictError, match="shards shard-00002 are beyond this run's 2 shards"):
        pending_shards(smaller, writer)
    plan = pending_shards(smaller, writer, overwrite=True)  # overwrite: the extra shard goes
    assert plan.discard == [2] and [s.index for s in plan.todo] == [1] and sorted(plan.skipped) == [0]


@pytest.mark.slow  # Dask clusters, several seconds
def test_run_accounts_for_every_input_and_rerun_changes_nothing(mixed_input, tmp_path):
    out = tmp_path / "m"
    summary = run(cfg(mixed_input, out))
    assert summary["images"] == 16 and summary["shards"] == {"run": 4, "skipped": 0, "failed": 0}
    assert summary["status_counts"] == {"no_hands": 12, "error": 4}
    assert summary["manifest"]["images"] == 16 and summary["failed_shards"] == {}
    assert summary["images_per_s"] > 0 and "decode" in summary["stage_ms_per_image"]
    rows = read_table(out, "images")
    assert sorted(r["image_id"] for r in rows) == sorted(
        r.image_id for r in load_records(cfg(mixed_input, out))
    )
    errors = {r["image_id"]: r["error"] for r in rows if r["status"] == "error"}
    assert set(errors) == {"bad__empty", "bad__truncated", "bad__text", "bad__garbage"}
    assert all(e for e in errors.values())
    manifest = open_manifest(str(out))  # counts in shards, stats and _manifest.json agree
    assert manifest.images.num_rows == 16
    assert json.loads((out / "_manifest.json").read_text())["config"]["shard_size"] == 5

    again = run(cfg(mixed_input, out))
    assert again["images"] == 0 and again["shards"] == {"run": 0, "skipped": 4, "failed": 0}
    assert read_table(out, "images") == rows


@pytest.mark.slow  # Dask clusters, several seconds
def test_the_driver_reads_the_cluster_size_once_a_second_not_once_a_shard(mixed_input, tmp_path, monkeypatch):
    # Each read is a round trip to the scheduler; paid on every finished shard, it would stand between a
    # worker's task and its next one (bench/scale.py measures that idle gap).
    import distributed

    import prep.cluster

    calls = []
    nthreads = distributed.Client.nthreads
    monkeypatch.setattr(
        distributed.Client, "nthreads", lambda self, *a, **k: calls.append(1) or nthreads(self, *a, **k)
    )
    monkeypatch.setattr(prep.cluster, "SLOTS_REFRESH_S", 1e9)  # no refresh within this run
    summary = run(cfg(mixed_input, tmp_path / "m", shard_size=2))  # 8 shards on 2 workers
    assert summary["shards"] == {"run": 8, "skipped": 0, "failed": 0}
    assert len(calls) == 1
    assert set(summary["phase_seconds"]) == {"plan", "resume_check", "cluster_start", "shards", "finalize"}
    calls.clear()
    monkeypatch.setattr(prep.cluster, "SLOTS_REFRESH_S", 0.0)  # a read per refill
    run(cfg(mixed_input, tmp_path / "m2", shard_size=2))
    assert len(calls) >= 8


@pytest.mark.slow  # Dask clusters, several seconds
def test_worker_killed_mid_run_is_retried_within_the_run(mixed_input, tmp_path):
    victim = sorted((mixed_input / "g1").glob("*.jpg"))[0]
    (victim.parent / (victim.name + ".die-once")).write_text("")
    summary = run(cfg(mixed_input, tmp_path / "m", retries=2))
    assert not (victim.parent / (victim.name + ".die-once")).exists()  # the worker really died once
    assert summary["failed_shards"] == {} and summary["manifest"]["images"] == 16
    ids = image_ids(tmp_path / "m")
    assert len(ids) == len(set(ids)) == 16


@pytest.mark.slow  # Dask clusters, several seconds
def test_worker_killed_then_resume_completes_without_duplicates(mixed_input, tmp_path):
    out = tmp_path / "m"
    records = load_records(cfg(mixed_input, out))
    victim = next(r for r in records[5:10])  # lives in shard 1
    marker = victim.source_uri + ".die"
    open(marker, "w").close()
    first = run(cfg(mixed_input, out, retries=0))
    assert (
        list(first["failed_shards"]) == ["shard-00001"]
        and "KilledWorker" in first["failed_shards"]["shard-00001"]
    )
    assert first["shards"] == {"run": 3, "skipped": 0, "failed": 1}
    assert first["manifest"]["images"] == 11  # the dead shard left nothing behind
    assert victim.image_id not in image_ids(out)
    assert open_manifest(str(out)).images.num_rows == 11  # what is on disk is consistent

    shutil.os.remove(marker)
    second = run(cfg(mixed_input, out))
    assert second["shards"] == {"run": 1, "skipped": 3, "failed": 0} and second["images"] == 5
    ids = image_ids(out)
    assert ids == sorted(r.image_id for r in records) and len(ids) == len(set(ids))
    assert open_manifest(str(out)).images.num_rows == 16
    assert Counter(r["status"] for r in read_table(out, "images")) == {"no_hands": 12, "error": 4}


@pytest.mark.slow  # Dask clusters, several seconds
def test_cli_runs_and_reports(mixed_input, tmp_path, capsys):
    rc = cli_main(
        [
            "run",
            "--input",
            str(mixed_input),
            "--out",
            str(tmp_path / "m"),
            "--annotator",
            STANDIN,
            "--label-from-dir",
            "--shard-size",
            "8",
            "--workers",
            "1",
            "--limit",
            "9",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "images      9 this run" in out and "2 run, 0 already complete, 0 failed" in out
    assert len(image_ids(tmp_path / "m")) == 9


def test_cli_missing_input_exits_nonzero_with_a_clear_message(tmp_path, capsys):
    rc = cli_main(["run", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "m")])
    assert rc == 1  # the run could not read its input: it failed
    assert f"input folder not found: {tmp_path / 'missing'}" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_a_failed_shards_leftovers_are_removed(mixed_input, tmp_path):
    from prep.runner import remove_shard

    config = cfg(mixed_input, tmp_path / "m")
    shards = plan_shards(load_records(config), config)
    for s in shards[:2]:
        process_shard(s.index, s.records, config, s.fingerprint)
    (tmp_path / "m" / "hands" / "_stats" / "shard-00001.json").unlink()  # died between tables' stats
    remove_shard(ManifestWriter(config.out), 1)
    left = sorted(p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("shard-*"))
    assert left == [
        "hands/_stats/shard-00000.json",
        "hands/shard-00000.parquet",
        "images/_stats/shard-00000.json",
        "images/shard-00000.parquet",
    ]


def test_bad_settings_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"workers \(--workers\) must be >= 1, got 0"):
        run(input=str(tmp_path), out=str(tmp_path / "m"), workers=0)
    with pytest.raises(TypeError, match=r"unknown prep settings: \['crop_sise'\]"):
        run(input=str(tmp_path), crop_sise=3)
    assert not (tmp_path / "m").exists()


def test_cli_options_come_from_the_config():
    import dataclasses

    from prep.cli import build_parser
    from prep.commands.run import config_from_args

    api_only = {f.name for f in dataclasses.fields(PrepConfig) if not f.metadata.get("cli", True)}
    assert api_only == {"caption_templates", "split_fractions"}
    assert all(f.metadata["help"] for f in dataclasses.fields(PrepConfig))  # every setting is documented
    options = {a.dest for a in build_parser("run")._actions}
    assert {f.name for f in dataclasses.fields(PrepConfig)} - api_only <= options

    assert config_from_args(build_parser().parse_args([])) == PrepConfig()  # defaults come from the config
    args = build_parser().parse_args(["--crop-size", "256", "--heatmap-size", "16", "--no-wrist-refine"])
    config = config_from_args(args)
    assert (config.crop_size, config.heatmap_size, config.wrist_refine) == (256, 16, False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--format", "voc"])


@pytest.mark.slow  # Dask clusters, several seconds
def test_sam_shards_ask_for_a_gpu_resource_and_local_workers_offer_it(mixed_input, tmp_path):
    from prep.cluster import dask_client, run_shards

    config = cfg(mixed_input, tmp_path / "m", gpu_resource=True, mask_method="sam", limit=6, workers=1)
    shards = plan_shards(load_records(config), config)
    with dask_client(config) as client:
        assert [w["resources"] for w in client.scheduler_info()["workers"].values()] == [{"GPU": 1}]
        calls, submit = [], client.submit
        client.submit = lambda *a, **k: calls.append(k) or submit(*a, **k)
        done, failed, _ = run_shards(shards, config, client)
    assert not failed and sum(s["images"] for s in done) == 6
    assert len(calls) == 2 and all(c["resources"] == {"GPU": 1} for c in calls)


@pytest.mark.slow  # a Dask cluster, several seconds
def test_a_local_cluster_leaves_the_drivers_environment_as_it_found_it(mixed_input, tmp_path, monkeypatch):
    """The nannies write Dask's pre-spawn environment (MALLOC_TRIM_THRESHOLD_=65536, which turns off
    glibc's adaptive mmap threshold, and OMP_NUM_THREADS=1) into the driver's os.environ, where every
    process started after prep (a training) inherited it."""
    import dask
    import distributed  # noqa: F401 (its defaults join dask's config)

    from prep.cluster import dask_client

    for name in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HANDFIRST_TEST_KEPT", "1")
    before = dict(os.environ)
    pre_spawn = dask.config.get("distributed.nanny.pre-spawn-environ")
    assert "MALLOC_TRIM_THRESHOLD_" in pre_spawn  # what the nannies set, or this test proves nothing
    with dask_client(cfg(mixed_input, tmp_path / "m", limit=2, workers=1)) as client:
        assert all(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values())  # workers keep it
    assert dict(os.environ) == before


def _standins_built() -> int:
    import prep_standin

    return prep_standin.StandInAnnotator.built


@pytest.mark.slow  # Dask clusters, several seconds
def test_external_scheduler_is_used_and_left_running(mixed_input, tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    import prep.runner

    monkeypatch.setattr(
        prep.runner, "check_sam", lambda config: None
    )  # no SAM weights here: the GPU check is the point

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        summary = run(cfg(mixed_input, tmp_path / "m", scheduler=cluster.scheduler_address, limit=6))
        # The dashboard's address where its pages work (bokeh installed), else none.
        dashboard = cluster.dashboard_link if importlib.util.find_spec("bokeh") else None
        assert summary["images"] == 6 and summary["dashboard"] == dashboard
        with Client(cluster) as client:  # the run did not shut the cluster down
            assert len(client.scheduler_info()["workers"]) == 1
            # its one worker ran both shards with one annotator, built once
            assert list(client.run(_standins_built).values()) == [1]
        with pytest.raises(RuntimeError, match="no worker of tcp://.* offers a GPU resource"):
            run(
                cfg(
                    mixed_input,
                    tmp_path / "m2",
                    scheduler=cluster.scheduler_address,
                    gpu_resource=True,
                    mask_method="sam",
                    limit=2,
                )
            )


# ---------------------------------------------------------------- the real annotator, end to end


@pytest.mark.slow
def test_hagrid_mini_end_to_end_on_a_2_worker_cluster(hagrid_manifest, data_dir):
    summary = json.loads((hagrid_manifest.parent / "summary.json").read_text())
    assert summary["images"] == 40 and summary["shards"] == {"run": 4, "skipped": 0, "failed": 0}
    assert sum(summary["status_counts"].values()) == 40 and "error" not in summary["status_counts"]
    assert summary["status_counts"].get("ok", 0) >= 36  # plain MediaPipe alone finds 36 of 40
    assert {"decode", "hands", "pose", "masks", "crops_heatmaps", "encode", "write"} <= set(
        summary["stage_ms_per_image"]
    )

    manifest = open_manifest(str(hagrid_manifest))  # shards, stats and _manifest.json agree
    images = manifest.read("images", ["image_id", "label", "status", "num_hands"]).to_pylist()
    hands = manifest.read("hands", ["hand_id", "image_id"]).to_pylist()
    records = load_records(PrepConfig(input=str(data_dir / "hagrid_mini"), label_from_dir=True))
    assert sorted(r["image_id"] for r in images) == sorted(r.image_id for r in records)
    assert {r["image_id"]: r["label"] for r in images} == {r.image_id: r.label for r in records}
    per_image = Counter(h["image_id"] for h in hands)
    assert len({h["hand_id"] for h in hands}) == len(hands) == summary["hands"]
    for r in images:
        assert r["num_hands"] == per_image.get(r["image_id"], 0)
        assert (r["status"] == "ok") == (r["num_hands"] > 0)
    assert manifest.config["workers"] == 2 and manifest.config["input"].endswith("hagrid_mini")


@pytest.mark.slow
def test_real_rerun_redoes_only_the_dead_shard_with_identical_rows(hagrid_manifest, data_dir, tmp_path):
    out = tmp_path / "manifest"
    shutil.copytree(hagrid_manifest, out)
    before = {t: read_table(out, t) for t in ("images", "hands")}
    (out / "images" / "_stats" / "shard-00002.json").unlink()  # as if its worker died before finishing
    summary = run(
        input=str(data_dir / "hagrid_mini"),
        out=str(out),
        label_from_dir=True,
        shard_size=10,
        workers=1,
        progress=False,
    )
    assert summary["shards"] == {"run": 1, "skipped": 3, "failed": 0} and summary["images"] == 10
    after = {t: read_table(out, t) for t in ("images", "hands")}
    for t, id_col in (("images", "image_id"), ("hands", "hand_id")):
        assert [r[id_col] for r in after[t]] == [r[id_col] for r in before[t]]  # no duplicates, same order
        assert after[t] == before[t], f"{t}: the redone shard's rows differ from the first run's"
