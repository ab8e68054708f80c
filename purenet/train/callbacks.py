"""fit's callbacks: a small protocol, called at each epoch's end, that may stop training.

A callback is either a plain function ``fn(epoch, history, state)`` or an
object with any of three methods (Keras' and Lightning's shape, cut down to
what a fused loop can honour without a host sync per step):

    on_train_begin(history, keys)       before the first epoch run
    on_epoch_end(epoch, history, state) after each epoch is recorded; True stops
    on_train_end(history, state)        may return another TrainState to return

``epoch`` counts epochs done (1 after the first), ``history`` is fit's
history so far (resumed epochs included), ``keys`` the names each epoch will
record, ``state`` a ``TrainState`` whose arrays are the callback's to keep
(fit hands callbacks a copy: its own buffers are donated to the next epoch).
``on_epoch_end`` returns ``True`` to stop after this epoch, ``None`` or
``False`` to go on; anything else is refused, so a callback that returns a
value by mistake does not stop training by accident.

``EarlyStopping`` is built on it here; ``KeepCheckpoints`` in
``purenet.train.keep``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from purenet.core import ConfigError
from purenet.shapes import require_positive_int
from purenet.train.base import TrainState

MODES = ("auto", "min", "max")


class Monitor:
    """A history metric watched for improvement: its name, direction and the margin that counts.

    Args:
      owner: who watches (named in errors), e.g. ``"EarlyStopping"``.
      name: a history key, e.g. ``"val_loss"`` or ``"val_accuracy"``.
      mode: ``"min"``, ``"max"``, or ``"auto"``: ``"min"`` for names ending
        in ``loss``, ``"max"`` for names ending in ``accuracy``; other names
        must say.
      min_delta: an improvement smaller than this does not count (>= 0).
    """

    def __init__(self, owner: str, name: Any, mode: Any = "auto", min_delta: Any = 0.0):
        if not isinstance(name, str) or not name:
            raise ConfigError(owner, f"monitor must be a history key such as 'val_loss', got {name!r}")
        if mode not in MODES:
            raise ConfigError(owner, f"mode must be one of {MODES}, got {mode!r}")
        finite = isinstance(min_delta, (int, float)) and math.isfinite(min_delta)
        if isinstance(min_delta, bool) or not finite or min_delta < 0:
            raise ConfigError(owner, f"min_delta must be a finite number >= 0, got {min_delta!r}")
        self.owner, self.name, self.mode, self.min_delta = owner, name, mode, float(min_delta)

    def require_in(self, keys: Sequence[str]) -> None:
        """Refuse, before training, a metric the run will not record, or one whose direction is unknown."""
        if self.name not in keys:
            hint = " (val_ metrics need fit(validation=...))" if self.name.startswith("val_") else ""
            raise ConfigError(
                self.owner, f"monitor {self.name!r} is not in fit's history{hint}; it records {sorted(keys)}"
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


def _auto_mode(owner: str, name: str) -> str:
    if name.endswith("loss"):
        return "min"
    if name.endswith("accuracy"):
        return "max"
    raise ConfigError(owner, f"cannot tell whether {name!r} should fall or rise: pass mode='min' or 'max'")


class EarlyStopping:
    """Stop when a history metric has not improved for ``patience`` epochs; optionally restore the best.

    Prechelt, "Early Stopping - But When?" (1998); *Deep Learning* section
    7.8.  The best value counts from the run's first epoch, resumed ones
    included (they are in the history).

    Args:
      monitor: the history key to watch, e.g. ``"val_loss"``, ``"val_accuracy"``.
      patience: epochs without improvement to tolerate before stopping (>= 1).
      mode: as for ``Monitor``: ``"min"``, ``"max"`` or ``"auto"``.
      min_delta: as for ``Monitor``: a smaller improvement does not count.
      restore_best: at the end, return the params and optimizer state of
        the best epoch instead of the last (a device copy is kept of them).

    After ``fit`` returns: ``stopped_epoch`` (the epoch it stopped after, or
    None), ``best_epoch`` and ``best`` (the best value).

    Examples:
      With a learning rate of 0 the validation loss never improves on epoch
      1's, so ``patience=1`` stops training after epoch 2 of 10:

      >>> import jax, numpy as np, optax
      >>> import purenet as pn
      >>> x = np.random.default_rng(0).standard_normal((32, 2)).astype(np.float32)
      >>> y = (x[:, 0] > 0).astype(np.int32)
      >>> model = pn.Dense(2)
      >>> _, params = model.init(jax.random.PRNGKey(0), (-1, 2))
      >>> stop = pn.EarlyStopping("val_loss", patience=1)
      >>> result = pn.fit(model, params, x, y, loss=pn.softmax_cross_entropy, optimizer=optax.sgd(0.0),
      ...                 epochs=10, batch_size=8, key=jax.random.PRNGKey(1), validation=(x, y),
      ...                 callbacks=[stop], progress=False)
      >>> stop.stopped_epoch, stop.best_epoch, len(result.history["val_loss"])
      (2, 1, 2)
    """

    def __init__(
        self, monitor: str = "val_loss", *, patience: int = 5, mode: str = "auto", min_delta: float = 0.0,
        restore_best: bool = True,
    ):  # fmt: skip
        self.monitor = Monitor("EarlyStopping", monitor, mode, min_delta)
        self.patience = require_positive_int("EarlyStopping", "patience", patience)
        if not isinstance(restore_best, bool):
            raise ConfigError("EarlyStopping", f"restore_best must be True or False, got {restore_best!r}")
        self.restore_best = restore_best
        self.stopped_epoch = self.best_epoch = self.best = None
        self._best_state: TrainState | None = None

    def __repr__(self) -> str:
        return f"EarlyStopping(monitor={self.monitor.name!r}, patience={self.patience})"

    def on_train_begin(self, history: dict, keys: Sequence[str]) -> None:
        self.monitor.require_in(keys)
        index, self.best = self.monitor.best_of(history.get(self.monitor.name, []))
        self.best_epoch = None if index is None else index + 1
        self.stopped_epoch, self._best_state = None, None

    def on_epoch_end(self, epoch: int, history: dict, state: TrainState) -> bool:
        value = history[self.monitor.name][-1]
        if self.monitor.improved(value, self.best):
            self.best, self.best_epoch = value, epoch
            self._best_state = state if self.restore_best else None
        waited = epoch - (self.best_epoch or 0)
        if waited < self.patience:
            return False
        self.stopped_epoch = epoch
        _say(
            f"fit: {self!r} stopped training after epoch {epoch}: {self.monitor.name} has not improved "
            f"for {waited} epochs (best {self.best:.6g} at epoch {self.best_epoch})"
            if self.best is not None
            else f"fit: {self!r} stopped training after epoch {epoch}: {self.monitor.name} was never finite"
        )
        return True

    def on_train_end(self, history: dict, state: TrainState) -> TrainState | None:
        if not self.restore_best or self.best_epoch is None or self.best_epoch == len(history["loss"]):
            return None
        if self._best_state is None:  # the best epoch was before a resume: its params are not in memory
            _say(
                f"fit: {self!r} cannot restore epoch {self.best_epoch}'s params, which came before this run "
                "resumed; the last params are returned (KeepCheckpoints(best=...) keeps the best on disk)"
            )
            return None
        best = f"{self.monitor.name} {self.best:.6g}"
        _say(f"fit: {self!r} restored the params of epoch {self.best_epoch} ({best})")
        return self._best_state


# --------------------------------------------------------------------------
# Running the callbacks
# --------------------------------------------------------------------------


def check_callbacks(callbacks: Any) -> tuple:
    """fit's ``callbacks`` argument: a sequence of functions or objects with a callback method."""
    if callbacks is None:
        return ()
    if callable(callbacks) or not isinstance(callbacks, (list, tuple)):
        raise ConfigError(
            "fit", f"callbacks must be a list of callbacks, got {type(callbacks).__name__}; wrap one in [...]"
        )
    for index, callback in enumerate(callbacks):
        methods = ("on_train_begin", "on_epoch_end", "on_train_end")
        if not callable(callback) and not any(callable(getattr(callback, m, None)) for m in methods):
            raise ConfigError(
                "fit",
                f"callbacks[{index}] must be a function (epoch, history, state) or an object with "
                f"on_epoch_end / on_train_begin / on_train_end methods, got {type(callback).__name__}",
            )
    return tuple(callbacks)


def begin(callbacks: tuple, history: dict, keys: Sequence[str]) -> None:
    for callback in callbacks:
        method = getattr(callback, "on_train_begin", None)
        if callable(method):
            method(history, tuple(keys))


def epoch_end(callbacks: tuple, epoch: int, history: dict, state: TrainState) -> bool:
    """Call every callback (all of them, even after one asks to stop); whether any asked to stop."""
    if not callbacks:
        return False
    kept = jax.tree_util.tree_map(jnp.copy, state)  # fit donates its own buffers to the next epoch
    stop = False
    for index, callback in enumerate(callbacks):
        method = _epoch_method(callback)
        if method is None:
            continue
        answer = method(epoch, history, kept)
        if answer is not None and not isinstance(answer, bool):
            raise ConfigError(
                "fit",
                f"callbacks[{index}] ({_name(callback)}) returned {answer!r} at epoch {epoch}: a callback "
                "returns True to stop training, or None/False to go on",
            )
        stop = stop or bool(answer)
    return stop


def end(callbacks: tuple, history: dict, state: TrainState) -> TrainState:
    """The state fit returns: the last, or one a callback's ``on_train_end`` hands back."""
    for index, callback in enumerate(callbacks):
        method = getattr(callback, "on_train_end", None)
        replaced = method(history, state) if callable(method) else None
        if replaced is not None:
            if not isinstance(replaced, TrainState):
                raise ConfigError(
                    "fit",
                    f"callbacks[{index}] ({_name(callback)}).on_train_end returned "
                    f"{type(replaced).__name__}; it returns a TrainState or None",
                )
            state = replaced
    return state


def _epoch_method(callback: Any) -> Callable | None:
    method = getattr(callback, "on_epoch_end", None)
    if callable(method):
        return method
    hooks = ("on_train_begin", "on_train_end")
    if callable(callback) and not any(hasattr(callback, hook) for hook in hooks):
        return callback
    return None


def _name(callback: Any) -> str:
    return getattr(callback, "__name__", None) or type(callback).__name__


def _say(line: str) -> None:
    print(line, file=sys.stderr)


__all__ = ["EarlyStopping", "Monitor"]
