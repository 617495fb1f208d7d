"""Progress bars that honour tqdm's environment settings (``TQDM_DISABLE=1``, ...).

tqdm reads ``TQDM_*`` variables only as defaults: passing ``disable=False`` explicitly would
override a user's ``TQDM_DISABLE=1``. So a bar is hidden by passing ``disable=True`` and shown
by not passing ``disable`` at all.
"""

from typing import Any

from tqdm.auto import tqdm


def progress_bar(desc: str | None, show: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm(**kwargs)`` labelled ``desc``; hidden when ``desc`` is None or ``show`` is False."""
    if desc is None or not show:
        return tqdm(disable=True, **kwargs)
    return tqdm(desc=desc, **kwargs)
