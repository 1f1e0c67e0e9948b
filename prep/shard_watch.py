"""What happens to a run's shard tasks on the Dask cluster, as the driver learns it from the scheduler.

A shard task (`shard_task`) logs each exception to the run's own event topic before raising it for
Dask to retry; the scheduler logs a worker that leaves, with the tasks it was running, to its "all"
topic. `ShardWatch` subscribes to both, so the driver can report every lost attempt of a shard
(`prep.cluster.run_shards`): Dask's retries and moves are otherwise invisible to it.
"""

from __future__ import annotations

from .shard import process_shard


def shard_task(topic: str, index: int, *args) -> dict:
    """`process_shard` as a Dask task: an exception is first logged to the scheduler's event `topic`
    (the driver reports each attempt a retry replaces), then raised for Dask to retry the task."""
    try:
        return process_shard(index, *args)
    except Exception as exc:
        try:
            from distributed import get_worker

            get_worker().log_event(topic, {"shard": index, "error": f"{type(exc).__name__}: {exc}"[:500]})
        except Exception:  # noqa: BLE001 - reporting must never replace the task's own error
            pass
        raise


class ShardWatch:
    """What happens to the run's tasks on the cluster, from the scheduler's events: an attempt that
    raised (`shard_task`), or a worker that left while it ran a shard (Dask then runs it elsewhere)."""

    def __init__(self, client, token: str):
        self.client, self.topic = client, f"prep-{token}"
        self.shard_of: dict[str, int] = {}  # task key -> shard index
        self.lost: list[tuple[int, str]] = []  # (shard, why), appended by the client's event thread
        client.subscribe_topic(self.topic, self._attempt_failed)
        client.subscribe_topic("all", self._cluster_event)

    def _attempt_failed(self, event) -> None:
        msg = event[1]
        if isinstance(msg, dict) and isinstance(msg.get("shard"), int):
            self.lost.append((msg["shard"], str(msg.get("error"))))

    def _cluster_event(self, event) -> None:
        msg = event[1]
        if not isinstance(msg, dict) or msg.get("action") != "remove-worker":
            return
        for key in msg.get("processing-tasks") or ():
            if key in self.shard_of:
                self.lost.append(
                    (self.shard_of[key], f"its worker {msg.get('worker')} left while running it")
                )

    def drain(self) -> list[tuple[int, str]]:
        n = len(self.lost)
        lost = self.lost[:n]
        del self.lost[:n]
        return lost

    def close(self) -> None:
        for topic in (self.topic, "all"):
            try:
                self.client.unsubscribe_topic(topic)
            except Exception:  # noqa: BLE001 - a closing client may already have dropped it
                pass
