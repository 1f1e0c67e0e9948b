"""The project's progress bars: tqdm, switched off by a setting or by ``TQDM_DISABLE``.

tqdm reads ``TQDM_DISABLE`` once, when it is imported, and only for options its caller leaves out: a
bar built with ``disable=False`` (or ``None``) shows whatever the environment says, and one built
after ``-q`` set the variable may not see it. `progress_bar` reads the variable at each call, so
``TQDM_DISABLE=1`` (which ``-q`` on the command lines sets) hides every bar.
"""

from __future__ import annotations

import os

ENV = "TQDM_DISABLE"


def disabled_by_environment() -> bool:
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no")


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """``tqdm.auto.tqdm(iterable, **kwargs)``, off when `enabled` is false or ``TQDM_DISABLE`` is set."""
    from tqdm.auto import tqdm

    if not enabled or disabled_by_environment():
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
