"""Drawing across processes and GPUs: ``accelerate launch -m generation generate ...`` (or ``baseline``)
starts N processes, and each draws its own share of the selected rows.

- the rows are split by `accelerate.PartialState.split_between_processes`: contiguous shares in row
  order, every row in exactly one share, so N processes draw the same set of images, with the same
  seeds, as one process;
- each process writes its own images and sidecars (the names are the rows', so they never clash) and
  its own failures file (`failures_file`); a sidecar records ``process_index`` and ``num_processes``;
- resume is per row, as in one process: a rerun skips every row whose PNG and sidecar exist, whichever
  process drew it;
- without ``accelerate launch`` there is one process and nothing changes.

Processes do not talk to each other: there is no gather, so a process that finishes early just exits.
On GPUs: ``accelerate launch --multi_gpu --num_processes N -m generation generate ...``. On CPUs (tests,
no GPU): ``ACCELERATE_USE_CPU=1 python -m torch.distributed.run --nproc_per_node N -m generation ...``
(``accelerate launch --cpu`` starts one process however many are asked for); processes talk over gloo.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessShare:
    """This process's place among the launched ones, and its default device (None: the caller's)."""

    index: int = 0
    count: int = 1
    device: str | None = None

    def take(self, items: list) -> list:
        """This process's contiguous share of `items` (all of them in a single process)."""
        if self.count == 1:
            return list(items)
        from accelerate import PartialState

        with PartialState().split_between_processes(list(items)) as mine:
            return list(mine)

    def failures_file(self, name: str = "failures.jsonl") -> str:
        """``failures.jsonl`` in one process; ``failures.process-I-of-N.jsonl`` per process otherwise."""
        if self.count == 1:
            return name
        stem, dot, ext = name.rpartition(".")
        return f"{stem}.process-{self.index}-of-{self.count}{dot}{ext}"

    def record(self) -> dict:
        return {"process_index": self.index, "num_processes": self.count}


def this_process() -> ProcessShare:
    """The `ProcessShare` of this process: from accelerate's state when launched with several processes
    (``WORLD_SIZE`` > 1), else the single process."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return ProcessShare()
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # Processes on CPUs (gloo) where no GPU is, or where asked for (accelerate launch --cpu sets this).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    return ProcessShare(state.process_index, state.num_processes, str(state.device))
