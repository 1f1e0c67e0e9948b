"""The project's progress bars: tqdm, switched off by a setting or by the environment.

tqdm reads ``TQDM_DISABLE`` only for options its caller leaves out, so a bar built with
``disable=False`` shows whatever the environment says. `progress_bar` passes ``disable`` only to
switch a bar off: ``TQDM_DISABLE=1`` (which ``-q`` on the command lines sets) then hides every bar.
"""

from __future__ import annotations


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """``tqdm.auto.tqdm(iterable, **kwargs)``, off when `enabled` is false or ``TQDM_DISABLE`` is set."""
    from tqdm.auto import tqdm

    if not enabled:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
