"""fit's history: one entry per epoch under every name, padded where an epoch recorded none.

Split from ``purenet.train.loop`` so that module holds the loop itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from purenet.core import ConfigError
from purenet.train.base import LEARNING_RATE, STEP_LOSS


def append_epoch(history: dict[str, list], name: str, value: Any, epoch: int, missing: Any = float("nan")):
    """``history[name].append(value)`` for epoch ``epoch`` (0-based), padding epochs a resumed run lacks.

    Args:
      history: fit's history, changed in place.
      name: the name recorded.
      value: the epoch's entry.
      epoch: the epoch's index, 0-based.
      missing: the entry of an earlier epoch that recorded no ``name``.

    A run resumed with validation or step losses its first part did not
    record still keeps one entry per epoch under every name.
    """
    values = history.setdefault(name, [])
    values.extend(_fillers(missing, epoch - len(values)))
    values.append(value)


def pad_epoch(history: dict[str, list], epochs_done: int, only: Callable[[str], bool] | None = None) -> None:
    """Pad every name (``only`` those it accepts) the epoch did not record up to ``epochs_done`` entries.

    A run resumed without the validation, metrics or step losses its first
    part recorded (or a callback's key it no longer writes) would otherwise
    leave a history fit's own resume refuses: each name keeps one entry per
    epoch, NaN (an empty list for the lists of ``step_loss``) where none came.

    Args:
      history: fit's history, changed in place.
      epochs_done: the epochs recorded so far.
      only: which names to pad (None: all); before the callbacks run, only fit's own
        (a callback's name is not short until the callback has had its turn).
    """
    for name, values in history.items():
        if (only is None or only(name)) and isinstance(values, list) and len(values) < epochs_done:
            missing = [] if values and isinstance(values[-1], list) else float("nan")
            values.extend(_fillers(missing, epochs_done - len(values)))


def fits_own(name: str) -> bool:
    """Whether fit records ``name`` (in some run): a callback's own names are padded after it runs."""
    return name.startswith(("val_", LEARNING_RATE)) or name in ("loss", "skipped", "seconds", STEP_LOSS)


def recordable(history: dict[str, list]) -> dict[str, list]:
    """``history`` as a checkpoint's JSON metadata records it: NumPy and JAX scalars as Python numbers.

    A callback may well record ``np.float32(...)`` or a 0-d array (a norm of
    the params, say); JSON cannot hold those, and the save would fail after
    the epoch with a message naming neither fit nor the name.

    Raises:
      ConfigError: naming the history key and epoch of an entry that is no
        number, string, bool, None or list of them.
    """
    recorded = {}
    for name, values in history.items():
        recorded[name] = [_plain(entry) for entry in values] if isinstance(values, list) else _plain(values)
        try:
            json.dumps(recorded[name], allow_nan=True)
        except (TypeError, ValueError) as error:
            raise ConfigError(
                "fit", f"history[{name!r}] holds a value a checkpoint cannot record ({error}); a callback "
                "records numbers, strings, bools, None or lists of them",
            ) from None  # fmt: skip
    return recorded


def _plain(entry: Any) -> Any:
    """A NumPy/JAX scalar (or 0-d array) as the Python number it holds; a list element by element."""
    if isinstance(entry, list):
        return [_plain(item) for item in entry]
    if isinstance(entry, np.generic) or (hasattr(entry, "shape") and np.shape(entry) == ()):
        return np.asarray(entry).item()
    return entry


def _fillers(missing: Any, count: int) -> list:
    # a fresh empty list each: one shared list appended to later would change every padded epoch
    return [list(missing) if isinstance(missing, list) else missing for _ in range(count)]


__all__ = ["append_epoch", "fits_own", "pad_epoch", "recordable"]
