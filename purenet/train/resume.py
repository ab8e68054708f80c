"""fit's checkpoints: what a run records, when it may resume, and saying so.

``fit`` never resumes, starts over, or overwrites silently.  Each checkpoint
records the run's configuration beside its state: the params tree (every
leaf's path, shape and dtype), the optimizer state's structure (its node
types, e.g. ``ScaleByAdamState``, and leaf shapes: another optimizer differs
there), the batch size, and the optimizer's hyperparameters where optax
exposes them (``optax.inject_hyperparams``).  A checkpoint whose recorded
configuration disagrees with the call is refused with a ``ResumeError`` naming
what differs.  A changed learning rate of a plain ``optax.adam(lr)`` leaves no
trace in the state and cannot be detected: start such a run with
``resume="never"`` or another ``checkpoint_path``.
"""

from __future__ import annotations

import os
import pathlib
import sys
import uuid
from collections import Counter
from typing import Any

import jax
import numpy as np

from purenet import checkpoint
from purenet.core import ConfigError
from purenet.train.base import ResumeError, TrainState
from purenet.train.history import recordable

RESUME_POLICIES = ("auto", "never", "require")
_ADVICE = "pass resume='never' to start over (overwriting it), or another checkpoint_path"


def check_resume_policy(resume: Any) -> str:
    if not isinstance(resume, str) or resume not in RESUME_POLICIES:
        raise ConfigError("fit", f"resume must be one of {RESUME_POLICIES}, got {resume!r}")
    return resume


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, before the first step, a checkpoint path fit could not write after an epoch of training.

    A missing directory is created (``runs/digits`` works in a fresh checkout).
    """
    directory = pathlib.Path(path).expanduser().absolute().parent
    probe = directory / f".purenet-write-test-{uuid.uuid4().hex}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise checkpoint.CheckpointError(
            "fit",
            f"cannot write checkpoints at {os.fspath(path)!r}: {error.strerror or error} "
            "(checked before training)",
        ) from None


def _leaves(tree: Any) -> list[list]:
    """Every leaf's path, shape and dtype, as JSON lists."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        [jax.tree_util.keystr(path), list(np.shape(leaf)), str(getattr(leaf, "dtype", ""))]
        for path, leaf in flat
    ]


def injected_hyperparams(opt_state: Any) -> dict[str, Any]:
    """The scalar hyperparameters ``optax.inject_hyperparams`` keeps in ``opt_state``, by name (on device).

    A schedule given to ``inject_hyperparams`` leaves its current value there,
    so this is the learning rate the last update used.  A name several
    injected states keep (an ``optax.multi_transform`` of two
    ``inject_hyperparams``, a chain of two) comes once per state, as
    ``name/<group>``: the group is the dict keys and sequence indices on the
    way to that state (``learning_rate/a``), so no group's value hides another's.

    Args:
      opt_state: an optax optimizer state.
    """
    # optax's inject_hyperparams states (InjectHyperparamsState, InjectStatefulHyperparamsState) all
    # keep a dict ``hyperparams``; match that field rather than one class name.
    is_injected = lambda node: isinstance(getattr(node, "hyperparams", None), dict)  # noqa: E731
    flat = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=is_injected)[0]
    states = [(path, _scalars(node.hyperparams)) for path, node in flat if is_injected(node)]
    counts = Counter(name for _, scalars in states for name in scalars)
    found: dict[str, Any] = {}
    for label, (_, scalars) in zip(_group_labels([path for path, _ in states]), states):
        for name, value in scalars.items():
            found[name if counts[name] == 1 else f"{name}/{label}"] = value
    return found


def _scalars(hyperparams: dict) -> dict[str, Any]:
    """The numeric 0-d entries of an injected state's ``hyperparams`` (not arrays, not flags)."""
    found = {}
    for name, value in hyperparams.items():
        dtype = value.dtype if hasattr(value, "dtype") else np.result_type(value)
        if np.ndim(value) == 0 and np.issubdtype(dtype, np.number):
            found[name] = value
    return found


def _group_labels(paths: list) -> list[str]:
    """A short, distinct label per path: its dict keys and indices (``a``, ``0/b``), else its full path."""
    labels = []
    for path in paths:
        parts = [str(getattr(entry, "key", getattr(entry, "idx", ""))) for entry in path]
        parts = [part for entry, part in zip(path, parts) if not isinstance(entry, jax.tree_util.GetAttrKey)]
        labels.append("/".join(parts))
    if len(set(labels)) == len(labels) and all(labels):
        return labels
    return [jax.tree_util.keystr(path) or "root" for path in paths]


def _hyperparams(opt_state: Any) -> dict[str, float]:
    """The injected hyperparameters at the start of a run, as JSON numbers."""
    return {name: float(value) for name, value in injected_hyperparams(opt_state).items()}


def configuration(state: TrainState, batch_size: int) -> dict:
    """What a checkpoint records about the run that wrote it (JSON)."""
    opt_def = jax.tree_util.tree_structure(state.opt_state)
    return {
        "params": _leaves(state.params),
        "optimizer_state": {"structure": str(opt_def), "leaves": _leaves(state.opt_state)},
        "batch_size": int(batch_size),
        "hyperparams": _hyperparams(state.opt_state),
    }


def _differences(recorded: dict, current: dict) -> list[str]:
    names = {
        "params": "the params tree (leaf paths, shapes or dtypes)",
        "optimizer_state": "the optimizer state's structure (another optimizer, or another model)",
        "batch_size": "the batch size",
        "hyperparams": "the optimizer's hyperparameters",
    }
    differ = []
    for key, what in names.items():
        if recorded.get(key) != current[key]:
            if key == "batch_size":
                what += f" ({recorded.get(key)!r} saved, {current[key]!r} now)"
            elif key == "hyperparams":
                what += _hyperparams_difference(recorded.get(key) or {}, current[key])
            elif key == "params":
                what += _first_leaf_difference(recorded.get(key) or [], current[key])
            differ.append(what)
    return differ


def _hyperparams_difference(saved: dict, now: dict) -> str:
    """Which injected hyperparameters changed; or that the checkpoint predates per-group names."""
    renamed = sorted(n for n in saved if n not in now and any(m.startswith(n + "/") for m in now))
    if renamed:  # one merged value then, one per optax group now: not comparable, and not a change of run
        groups = ", ".join(sorted(m for m in now if m.split("/")[0] in renamed))
        return (
            f" (the checkpoint records one {', '.join(renamed)} where this run injects one per group: "
            f"{groups}; either it was written before purenet named each group's value or the optimizer "
            "changed, and the two cannot be compared)"
        )
    changed = sorted(n for n in set(saved) | set(now) if saved.get(n) != now.get(n))
    return " (" + ", ".join(f"{n}: {_g(saved.get(n))} saved, {_g(now.get(n))} now" for n in changed) + ")"


def _g(value: Any) -> str:
    return "none" if value is None else f"{value:.6g}"


def _first_leaf_difference(saved: list, now: list) -> str:
    """Where two ``_leaves`` lists first differ: ``, first at params[0]['b']: (32,) float32 saved, ...``."""
    for (path, shape, dtype), (path_now, shape_now, dtype_now) in zip(saved, now):
        if (path, shape, dtype) != (path_now, shape_now, dtype_now):
            if path != path_now:
                return f", first at params{path} saved where this run has params{path_now}"
            saved_leaf, now_leaf = f"{tuple(shape)} {dtype}", f"{tuple(shape_now)} {dtype_now}"
            return f", first at params{path}: {saved_leaf} saved, {now_leaf} now"
    return f", {len(saved)} leaves saved, {len(now)} now"


def _check_metadata(path, meta: dict, epochs: int) -> int:
    """The epoch a fit checkpoint reached, refused unless it is sane and at most ``epochs``."""
    epoch, history = meta.get("epoch"), meta.get("history")
    where = f"resuming from {os.fspath(path)!r}"
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise ResumeError(
            "fit", f"{where}: its metadata records epoch {epoch!r}, not an integer >= 1; {_ADVICE}"
        )
    lengths = {len(v) for v in history.values()} if isinstance(history, dict) else {-1}
    if not isinstance(history, dict) or "loss" not in history or lengths != {epoch}:
        raise ResumeError(
            "fit", f"{where}: its history does not hold one entry per epoch of {epoch}; {_ADVICE}"
        )
    if epoch > epochs:
        raise ResumeError(
            "fit",
            f"{where}: it has already trained {epoch} epochs, more than the epochs={epochs} asked; "
            f"ask for epochs >= {epoch} to go on, or {_ADVICE}",
        )
    return epoch


def start(path, resume: str, state: TrainState, key: jax.Array, epochs: int, config: dict):
    """``(state, key, history, first_epoch)``: fresh, or resumed from ``path`` as ``resume`` says (one line).

    ``config`` is this run's ``configuration``, taken from its fresh state.
    """
    fresh = (state, key, {"loss": [], "skipped": [], "seconds": []}, 0)
    if path is None:
        if resume == "require":
            raise ResumeError("fit", "resume='require' needs a checkpoint_path to resume from")
        return fresh
    found = checkpoint.exists(path)
    if resume == "require" and not found:
        raise ResumeError("fit", f"resume='require', but there is no checkpoint at {os.fspath(path)!r}")
    if resume == "never" or not found:
        if found:
            _say(f"fit: starting over; the checkpoint at {os.fspath(path)!r} is overwritten (resume='never')")
        return fresh
    meta = checkpoint.read_metadata(path)
    first_epoch = _check_metadata(path, meta, epochs)
    differ = _differences(meta.get("configuration") or {}, config)
    if differ:
        raise ResumeError(
            "fit",
            f"resuming from {os.fspath(path)!r} refused: this run differs in {'; '.join(differ)}; {_ADVICE}",
        )
    template = {"params": state.params, "opt_state": state.opt_state, "key": key}
    saved, meta = checkpoint.load(path, like=template)
    _say(f"fit: resuming from {os.fspath(path)!r} after epoch {first_epoch} of {epochs}")
    restored = TrainState(saved["params"], saved["opt_state"], state.healthy)
    return restored, saved["key"], meta["history"], first_epoch


def save(
    path, state: TrainState, key: jax.Array, history: dict, epochs: int, steps_per_epoch: int, config: dict
):
    """Save what ``start`` reads back after ``epochs`` epochs, and the run's configuration."""
    tree = {"params": state.params, "opt_state": state.opt_state, "key": key}
    checkpoint.save(
        path,
        tree,
        epoch=epochs,
        step=epochs * steps_per_epoch,
        history=recordable(history),
        configuration=config,
    )


def _say(line: str) -> None:
    print(line, file=sys.stderr)
