"""The training data as an endless stream of batches with a savable position (exact resume)."""

from __future__ import annotations

import torch

from manifests.datasets import ManifestDataLoader, ResumableStream

from . import checkpoint as ckpt
from .config import TrainConfig
from .task import TrainTask


class Batches:
    """Endless stream of batches whose order depends on (seed, epoch) only, with a savable position.

    Manifest datasets go through `ManifestDataLoader`: they shard over ranks themselves and restore
    the position without reading the skipped rows. A map-style dataset gets a seeded
    `DistributedSampler` (one share per rank, reshuffled per epoch) and is resumed by skipping the
    micro-batches already consumed. Any other IterableDataset must shard over ranks by itself.
    """

    def __init__(self, dataset, task: TrainTask, config: TrainConfig, accelerator, state: ckpt.TrainerState):
        self.dataset, self.task, self.config = dataset, task, config
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        saved = state.data_state or {}
        self.epoch = int(saved.get("epoch", state.epoch))
        self.index = int(saved.get("batches_in_epoch", 0))
        self.resuming = state.step > 0
        self.loader = None
        if isinstance(dataset, ResumableStream):
            # Not passed through accelerator.prepare, which would shard the batches a second time.
            self.loader = ManifestDataLoader(
                dataset, batch_size=config.batch_size, num_workers=config.num_workers, collate_fn=task.collate
            )
            self.loader.set_epoch(self.epoch)
            if state.data_state:
                self.loader.load_state_dict(state.data_state)

    def _plain_loader(self):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        sampler = None
        if not isinstance(self.dataset, torch.utils.data.IterableDataset):
            sampler = torch.utils.data.DistributedSampler(
                self.dataset,
                num_replicas=self.world,
                rank=self.rank,
                shuffle=True,
                seed=self.config.seed,
                drop_last=True,
            )
            sampler.set_epoch(self.epoch)
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.config.batch_size,
            sampler=sampler,
            num_workers=self.config.num_workers,
            collate_fn=self.task.collate,
            drop_last=sampler is not None,
        )

    def data_state(self) -> dict:
        if self.loader is not None:
            return self.loader.state_dict()
        return {"epoch": self.epoch, "batches_in_epoch": self.index}

    def __iter__(self):
        while True:
            count, skip = 0, self.index if self.loader is None else 0
            for i, batch in enumerate(self.loader if self.loader is not None else self._plain_loader()):
                count += 1
                if i < skip:
                    continue
                self.index = self.index + 1 if self.loader is not None else i + 1
                yield batch
            if count == 0 and not self.resuming:
                raise RuntimeError("the training dataset yielded no batch (empty after filtering?)")
            self.epoch, self.index, self.resuming = self.epoch + 1, 0, False
            if self.loader is not None:
                self.loader.set_epoch(self.epoch)


def batch_size(batch) -> int:
    """Samples in a collated batch: the leading size of its first tensor (or list)."""
    for v in batch.values() if isinstance(batch, dict) else [batch]:
        if torch.is_tensor(v) or isinstance(v, (list, tuple)):
            return len(v)
    return 1
