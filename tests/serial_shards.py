"""A serial stand-in for `prep.cluster.run_shards`: the same shard tasks, one after another in this
process, with no Dask cluster, so a `prep.run` test takes a fraction of a second.

`test_prep_hardening_run.py::test_the_serial_stand_in_writes_what_the_dask_runner_writes` holds it to
the real runner: the same shards give the same stats and the same rows.
"""

from __future__ import annotations

from contextlib import contextmanager

import prep.runner
from prep.shard import process_shard


class SerialShards:
    """Runs shards in this process. `stop_after = n` raises KeyboardInterrupt (what SIGINT raises)
    once n shards are written; `ran` lists the shard indices run, in order."""

    def __init__(self):
        self.stop_after: int | None = None
        self.ran: list[int] = []

    def run_shards(self, todo, config, client=None, retried=None):
        done = []
        for shard in todo:
            if self.stop_after is not None and len(done) == self.stop_after:
                raise KeyboardInterrupt
            args = (
                shard.index,
                shard.records,
                config,
                shard.fingerprint,
                shard.config_fingerprint,
                shard.unit,
            )
            done.append(process_shard(*args))
            self.ran.append(shard.index)
        return done, {}, None


@contextmanager
def _no_cluster(config):
    yield None


def use_serial_shards(monkeypatch) -> SerialShards:
    """Make `prep.run` start no cluster and run its shards through a new `SerialShards`."""
    serial = SerialShards()
    monkeypatch.setattr(prep.runner, "run_shards", serial.run_shards)
    monkeypatch.setattr(prep.runner, "dask_client", _no_cluster)
    return serial
