"""What EarlyStopping and KeepCheckpoints watch: a history metric, its direction and the margin that counts.

Split from ``purenet.train.callbacks`` so that module holds the protocol and
EarlyStopping; ``purenet.train.keep`` watches the same way.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from purenet.core import ConfigError
from purenet.train.base import STEP_LOSS

MODES = ("auto", "min", "max")


class Monitor:
    """A history metric watched for improvement: its name, direction and the margin that counts.

    Args:
      owner: who watches (named in errors), e.g. ``"EarlyStopping"``.
      name: a history key, e.g. ``"val_loss"`` or ``"val_accuracy"``.
      mode: ``"min"``, ``"max"``, or ``"auto"``: ``"min"`` for names ending
        in ``loss``, ``"max"`` for names ending in ``accuracy``; other names
        must say.
      min_delta: an improvement smaller than this does not count: a real
        number >= 0 (Python, NumPy or a 0-d JAX array).
    """

    def __init__(self, owner: str, name: Any, mode: Any = "auto", min_delta: Any = 0.0):
        if not isinstance(name, str) or not name:
            raise ConfigError(owner, f"monitor must be a history key such as 'val_loss', got {name!r}")
        if not isinstance(mode, str) or mode not in MODES:
            raise ConfigError(owner, f"mode must be one of {MODES}, got {mode!r}")
        delta = real_number(min_delta)
        if delta is None or not math.isfinite(delta) or delta < 0:
            raise ConfigError(owner, f"min_delta must be a finite number >= 0, got {min_delta!r}")
        self.owner, self.name, self.mode, self.min_delta = owner, name, mode, delta

    def require_in(self, keys: Sequence[str]) -> None:
        """Refuse, before training, a metric the run will not record, a list, or one of unknown direction."""
        if self.name not in keys:
            hint = " (val_ metrics need fit(validation=...))" if self.name.startswith("val_") else ""
            raise ConfigError(
                self.owner, f"monitor {self.name!r} is not in fit's history{hint}; it records {sorted(keys)}"
            )
        if self.name == STEP_LOSS:  # its entries are lists: comparing them would fail after an epoch
            raise ConfigError(
                self.owner,
                f"monitor {STEP_LOSS!r} records a list of every step's loss per epoch, not one number; "
                "watch 'loss' (the epoch's mean) instead",
            )
        if self.mode == "auto":
            self.mode = _auto_mode(self.owner, self.name)

    def improved(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` by more than ``min_delta``; NaN never improves."""
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta

    def best_of(self, values: Sequence[float]) -> tuple[int | None, float | None]:
        """The index and value of the best entry in ``values`` (first of ties), or ``(None, None)``."""
        best_index = best = None
        for index, value in enumerate(values):
            if self.improved(value, best):
                best_index, best = index, value
        return best_index, best


def real_number(value: Any) -> float | None:
    """``value`` as a float where it is a real number (Python, NumPy, or a 0-d JAX array), else None.

    Args:
      value: anything; a bool is not a number here (``True`` as a margin is a slip).
    """
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, jax.Array)) and value.shape == () and value.dtype.kind in "iuf":
        return float(value)
    return None


def _auto_mode(owner: str, name: str) -> str:
    if name.endswith("loss"):
        return "min"
    if name.endswith("accuracy"):
        return "max"
    raise ConfigError(owner, f"cannot tell whether {name!r} should fall or rise: pass mode='min' or 'max'")


__all__ = ["MODES", "Monitor", "real_number"]
