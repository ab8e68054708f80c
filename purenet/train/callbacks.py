"""fit's callbacks: a small protocol, called at each epoch's end, that may stop training.

A callback is either a plain function ``fn(epoch, history, state)`` or an
object with any of three methods (Keras' and Lightning's shape, cut down to
what a fused loop can honour without a host sync per step):

    on_train_begin(history, keys)       before the first epoch run; True stops
    on_epoch_end(epoch, history, state) after each epoch is recorded; True stops
    on_train_end(history, state)        may return another TrainState to return

``epoch`` counts epochs done (1 after the first), ``history`` is fit's
history so far (resumed epochs included), ``keys`` the names each epoch will
record, ``state`` a ``TrainState`` whose arrays are the callback's to keep
(fit hands callbacks a copy: its own buffers are donated to the next epoch).
``on_epoch_end`` returns ``True`` to stop after this epoch, ``None`` or
``False`` to go on (a NumPy or JAX bool scalar counts as one); anything else
is refused, so a callback that returns a value by mistake does not stop
training by accident.  ``on_train_begin`` answers the same way: ``True``
stops fit before it trains an epoch (a resumed run that had already
finished, e.g. ``EarlyStopping`` whose patience the resumed epochs spent);
every callback's ``on_train_begin`` still runs, and so do the
``on_train_end`` methods.  A state ``on_train_end`` hands back must have the
params' and optimizer state's structure, shapes and dtypes.

fit checks each callback before training: a class where an instance was
meant, a hook that is not callable or cannot take the arguments above is
refused then, not after an epoch.

``EarlyStopping`` is built on it here; ``KeepCheckpoints`` in
``purenet.train.keep``.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from purenet.core import ConfigError, check_like
from purenet.shapes import require_positive_int
from purenet.train.base import TrainState
from purenet.train.monitor import Monitor

HOOKS = {  # each hook and the arguments fit calls it with
    "on_train_begin": ("history", "keys"),
    "on_epoch_end": ("epoch", "history", "state"),
    "on_train_end": ("history", "state"),
}


class EarlyStopping:
    """Stop when a history metric has not improved for ``patience`` epochs; optionally restore the best.

    Prechelt, "Early Stopping - But When?" (1998); *Deep Learning* section
    7.8.  The best value counts from the run's first epoch, resumed ones
    included (they are in the history): a resumed run whose resumed epochs
    already spent the patience (it stopped there before) trains no further,
    fit stopping before its first epoch.

    Args:
      monitor: the history key to watch, e.g. ``"val_loss"``, ``"val_accuracy"``.
      patience: epochs without improvement to tolerate before stopping (>= 1).
      mode: as for ``Monitor``: ``"min"``, ``"max"`` or ``"auto"``.
      min_delta: as for ``Monitor``: a smaller improvement does not count.
      restore_best: at the end, return the params and optimizer state of
        the best epoch instead of the last (a device copy is kept of them).

    After ``fit`` returns (or raises): ``stopped_epoch`` (the epoch it
    stopped after, or None), ``best_epoch`` and ``best`` (the best value),
    and, with ``restore_best``, ``best_state``: the ``TrainState`` of the
    best epoch this run trained (None where that epoch came before a
    resume).  It is kept when fit raises, e.g. ``NonFiniteLossError``, whose
    own state is the last good step's rather than the best epoch's.

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
        self.best_state: TrainState | None = None

    def __repr__(self) -> str:
        return f"EarlyStopping(monitor={self.monitor.name!r}, patience={self.patience})"

    def on_train_begin(self, history: dict, keys: Sequence[str]) -> bool:
        """Check the monitor and take the resumed epochs' best; True where their patience is spent.

        Args:
          history: fit's history, the resumed epochs' entries included.
          keys: the names each epoch of this run records.
        """
        self.monitor.require_in(keys)
        index, self.best = self.monitor.best_of(history.get(self.monitor.name, []))
        self.best_epoch = None if index is None else index + 1
        self.stopped_epoch, self.best_state = None, None
        resumed = len(history.get("loss", []))
        # Only a finite best is evidence the run stopped here before: resumed epochs that never
        # recorded the monitor (validation added on resume) spend no patience.
        if self.best_epoch is None or resumed - self.best_epoch < self.patience:
            return False
        self.stopped_epoch = resumed
        _say(
            f"fit: {self!r} stops before training: {self.monitor.name} has not improved for "
            f"{resumed - self.best_epoch} of the resumed epochs (best {self.best:.6g} at epoch "
            f"{self.best_epoch}), so the run had already stopped; pass a larger patience to train on"
        )
        return True

    def on_epoch_end(self, epoch: int, history: dict, state: TrainState) -> bool:
        value = history[self.monitor.name][-1]
        if self.monitor.improved(value, self.best):
            self.best, self.best_epoch = value, epoch
            self.best_state = state if self.restore_best else None
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
        if self.best_state is None:  # the best epoch was before a resume: its params are not in memory
            _say(
                f"fit: {self!r} cannot restore epoch {self.best_epoch}'s params, which came before this run "
                "resumed; the last params are returned (KeepCheckpoints(best=...) keeps the best on disk)"
            )
            return None
        best = f"{self.monitor.name} {self.best:.6g}"
        _say(f"fit: {self!r} restored the params of epoch {self.best_epoch} ({best})")
        return self.best_state


# --------------------------------------------------------------------------
# Running the callbacks
# --------------------------------------------------------------------------


def check_callbacks(callbacks: Any) -> tuple:
    """fit's ``callbacks`` argument, each checked callable with the protocol's arguments before training.

    Args:
      callbacks: None, or a list or tuple of functions ``(epoch, history,
        state)`` or objects with any of ``HOOKS``.
    """
    if callbacks is None:
        return ()
    if callable(callbacks) or not isinstance(callbacks, (list, tuple)):
        raise ConfigError(
            "fit", f"callbacks must be a list of callbacks, got {type(callbacks).__name__}; wrap one in [...]"
        )
    for index, callback in enumerate(callbacks):
        _check_callback(index, callback)
    return tuple(callbacks)


def _check_callback(index: int, callback: Any) -> None:
    """Refuse ``callbacks[index]`` unless fit can call each of its hooks (or it, as a function) as it will."""
    where = f"callbacks[{index}]"
    if isinstance(callback, type):  # EarlyStopping for EarlyStopping(...): its methods want a self
        raise ConfigError(
            "fit", f"{where} is the class {callback.__name__}, not a callback: pass an instance, "
            f"e.g. {callback.__name__}(...)",
        )  # fmt: skip
    hooks = {name: getattr(callback, name) for name in HOOKS if hasattr(callback, name)}
    for name, method in hooks.items():
        if not callable(method):
            raise ConfigError("fit", f"{where}.{name} must be a method, got {type(method).__name__}")
        _require_arguments(f"{where}.{name}", method, HOOKS[name])
    if "on_epoch_end" in hooks or (hooks and not _called_per_epoch(callback)):
        return
    if not callable(callback):
        raise ConfigError(
            "fit",
            f"{where} must be a function (epoch, history, state) or an object with "
            f"on_epoch_end / on_train_begin / on_train_end methods, got {type(callback).__name__}",
        )
    _require_arguments(f"{where} ({_name(callback)})", callback, HOOKS["on_epoch_end"])


def _require_arguments(what: str, function: Callable, names: tuple[str, ...]) -> None:
    """Refuse, before training, a function that cannot be called with fit's arguments ``names``."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins do not say; they are called and answer for themselves
        return
    try:
        signature.bind(*names)
    except TypeError as error:
        raise ConfigError(
            "fit", f"{what} cannot be called as ({', '.join(names)}), as fit calls it: {error}"
        ) from None


def begin(callbacks: tuple, history: dict, keys: Sequence[str]) -> bool:
    """Call every ``on_train_begin`` (all of them, even after one asks to stop); whether any asked to stop."""
    stop = False
    for index, callback in enumerate(callbacks):
        method = getattr(callback, "on_train_begin", None)
        if callable(method):
            stop = _wants_stop(index, callback, method(history, tuple(keys)), "before training") or stop
    return stop


def epoch_end(callbacks: tuple, epoch: int, history: dict, state: TrainState) -> bool:
    """Call every callback (all of them, even after one asks to stop); whether any asked to stop."""
    if not callbacks:
        return False
    kept = jax.tree_util.tree_map(jnp.copy, state)  # fit donates its own buffers to the next epoch
    stop = False
    for index, callback in enumerate(callbacks):
        method = _epoch_method(callback)
        if method is not None:
            stop = _wants_stop(index, callback, method(epoch, history, kept), f"at epoch {epoch}") or stop
    return stop


def _wants_stop(index: int, callback: Any, answer: Any, when: str) -> bool:
    """A hook's answer as a bool: True, False or None, a NumPy or JAX bool scalar; anything else refused."""
    if answer is None:
        return False
    if isinstance(answer, (bool, np.bool_)):
        return bool(answer)
    # a comparison of JAX or NumPy values (loss < 1e-3) gives a 0-d bool array: as good as a bool
    if isinstance(answer, (np.ndarray, jax.Array)) and answer.shape == () and answer.dtype == np.bool_:
        return bool(answer)
    raise ConfigError(
        "fit",
        f"callbacks[{index}] ({_name(callback)}) returned {answer!r} {when}: a callback "
        "returns True to stop training, or None/False to go on",
    )


def end(callbacks: tuple, history: dict, state: TrainState) -> TrainState:
    """The state fit returns: the last, or one a callback's ``on_train_end`` hands back (checked like it)."""
    for index, callback in enumerate(callbacks):
        method = getattr(callback, "on_train_end", None)
        replaced = method(history, state) if callable(method) else None
        if replaced is None:
            continue
        where = f"callbacks[{index}] ({_name(callback)}).on_train_end"
        if not isinstance(replaced, TrainState):
            raise ConfigError(
                "fit", f"{where} returned {type(replaced).__name__}; it returns a TrainState or None"
            )
        # another model's or optimizer's state would otherwise come back from fit as this run's
        for field in ("params", "opt_state"):
            check_like(
                getattr(replaced, field), getattr(state, field), layer=f"fit ({where} returned a state "
                "unlike this run's)", what=field, error=ConfigError,
            )  # fmt: skip
        state = replaced
    return state


def _epoch_method(callback: Any) -> Callable | None:
    """What fit calls at each epoch's end: ``on_epoch_end``, else the callback itself where callable.

    A callable object with only ``on_train_begin``/``on_train_end`` is still
    called each epoch where its ``__call__`` takes ``(epoch, history, state)``.
    """
    method = getattr(callback, "on_epoch_end", None)
    if callable(method):
        return method
    if not any(hasattr(callback, hook) for hook in HOOKS):
        return callback if callable(callback) else None
    return callback if _called_per_epoch(callback) else None


def _called_per_epoch(callback: Any) -> bool:
    """Whether an object with other hooks but no ``on_epoch_end`` is itself the epoch's callback.

    It is where its ``__call__`` takes ``(epoch, history, state)``; a
    ``__call__`` for something else (a timer's ``()``) is left alone.
    """
    if not callable(callback):
        return False
    try:
        inspect.signature(callback).bind(*HOOKS["on_epoch_end"])
    except (TypeError, ValueError):
        return False
    return True


def _name(callback: Any) -> str:
    return getattr(callback, "__name__", None) or type(callback).__name__


def _say(line: str) -> None:
    print(line, file=sys.stderr)


__all__ = ["EarlyStopping", "Monitor"]
