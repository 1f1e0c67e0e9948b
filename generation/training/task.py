"""What a training task supplies to the shared loop (`generation.training.loop.train`).

The loop owns everything that is the same for every model: accelerate, optimizer, LR schedule, EMA,
checkpoints and exact resume, metrics, guards. A task owns what differs: which data, which model,
which loss, what a validation image shows and what the final artefact is.

Call order, all processes unless noted::

    task.check_models()                    # before the run folder is made: model folders, ids, configs
    task.check_data()                      # before any model is loaded; raise on bad data
    task.build(accelerator)                # load / build models; frozen ones to the device
    model = task.trainable()               # the nn.Module the optimizer trains (EMA follows it)
    dataset = task.dataset(accelerator)    # torch Dataset / IterableDataset of dict samples
    ... per micro-batch: task.loss(model, batch, generator) -> {"loss": ..., other terms}
    ... main process, EMA weights in place: task.validate(unwrapped_model, step, png_path)
    ... main process at the end: task.save_final(unwrapped_model, run_folder)
"""

from __future__ import annotations

import torch


class TrainTask:
    """Base class; override the methods marked required."""

    #: short name written to config.json ("hand", "body")
    name = "task"
    #: extra hints appended to the out-of-memory message, e.g. "--cache-latents"
    oom_hints: tuple[str, ...] = ()
    #: the diffusers pipeline class `save_final` saves, whose components `final_entries` names
    pipeline_class: type | None = None

    def __init__(self, config):
        self.config = config

    # -- required ------------------------------------------------------------------------------------
    def check_data(self) -> None:
        """Raise a clear error if the data cannot serve this task (missing columns, empty filter)."""
        raise NotImplementedError

    def build(self, accelerator) -> None:
        """Load or build the models; move frozen parts to ``accelerator.device``."""
        raise NotImplementedError

    def trainable(self) -> torch.nn.Module:
        """The module whose parameters are trained (one module; wrap several in an nn.ModuleDict)."""
        raise NotImplementedError

    def dataset(self, accelerator):
        """A torch Dataset or IterableDataset yielding dict samples (collated by `collate`).

        A manifest dataset (`manifests.datasets`) must be built with ``rank=accelerator.process_index,
        world_size=accelerator.num_processes``; the loop wraps it in a `ManifestDataLoader` whose position
        goes into checkpoints. A map-style dataset is sharded by the loop (DistributedSampler).
        """
        raise NotImplementedError

    def loss(self, model, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Scalar tensors; ``"loss"`` is what is minimised, the other terms are logged.

        All randomness (noise, timesteps, condition dropout) must come from `generator`, so a resumed run
        draws exactly what an uninterrupted one would.
        """
        raise NotImplementedError

    def save_final(self, model, out_dir: str) -> None:
        """Write the finished model (e.g. a pipeline's save_pretrained) into `out_dir`."""
        raise NotImplementedError

    # -- optional ------------------------------------------------------------------------------------
    def check_models(self) -> None:
        """Find and check the model folders the run starts from (from their config files, no weights
        loaded), before the run folder is made; raise a clear error naming the option."""

    def collate(self, samples: list[dict]) -> dict:
        return torch.utils.data.default_collate(samples)

    def prepare_batch(self, batch: dict, device) -> dict:
        """Move tensors to the device (strings and other values stay)."""
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def validate(self, model, step: int, path: str) -> dict:
        """Write a validation image to `path` (PNG); return metrics to log (may be empty)."""
        return {}

    def final_entries(self, run: str) -> list[str]:
        """Names in `run` that `save_final` writes, removed with the rest of the run by ``--overwrite``.
        Default: ``model_index.json`` and the component folders of `pipeline_class`, whatever else the
        folder's ``model_index.json`` lists (entries a user added there are theirs)."""
        if self.pipeline_class is None:
            return []
        modules, _ = self.pipeline_class._get_signature_keys(self.pipeline_class)
        return ["model_index.json", *modules]

    def describe(self) -> dict:
        """Facts about the data / models to record in config.json (sizes, sources)."""
        return {}

    def close(self) -> None:
        """Release resources (caches, file handles)."""
