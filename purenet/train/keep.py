"""KeepCheckpoints: a fit callback keeping the last N epochs' checkpoints and the best one.

Files in ``directory``: ``epoch-0007.npz`` (one per kept epoch) and
``best.npz``, each ``purenet.checkpoint`` format (docs/checkpoints.md)
holding the tree ``{"params": ..., "opt_state": ...}`` with the metadata
``epoch``, ``history`` and, for ``best.npz``, ``monitor`` and ``value``.
Every write is atomic, and an older file is deleted only after a newer one
is whole, so a crash never leaves fewer checkpoints than asked for.

Nothing is overwritten silently:

- checkpoints an earlier run left in the directory are announced at the
  start; its epoch files are removed once this run has saved a checkpoint
  of its own, and its ``best.npz`` stays until this run writes its own best
  (or, where this run keeps no best, until its first save);
- when fit resumes, the files of the epochs it resumed from are this run's
  own and are kept (a ``best.npz`` among them is the best to beat) only
  where their recorded history is the resumed run's, epoch for epoch, and a
  ``best.npz`` is the resumed epochs' best by this monitor; another run's
  (another model's, another mode's) is announced as stale;
- a file named like the ones kept here (``epoch-NNNN.npz``, ``best.npz``)
  that is not a training checkpoint is refused before training, never
  deleted or overwritten;
- fit refuses, before training, two ``KeepCheckpoints`` on one directory,
  and a ``checkpoint_path`` that is one of the files kept here.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import sys
from collections.abc import Sequence
from typing import Any

from purenet import checkpoint
from purenet.core import ConfigError
from purenet.shapes import require_positive_int
from purenet.train.base import TrainState
from purenet.train.monitor import Monitor
from purenet.train.resume import check_writable

_EPOCH_FILE = re.compile(r"epoch-(\d{4,})\.npz")
BEST_FILE = "best.npz"


class KeepCheckpoints:
    """Keep the checkpoints of the last ``last`` epochs and/or of the best epoch by ``best``.

    Args:
      directory: where to write them (created if missing; checked writable
        before training); not empty (``"."`` names the working directory).
      last: how many of the most recent epochs to keep (>= 1), or None for
        none.
      best: a history key (e.g. ``"val_loss"``) whose best epoch is kept in
        ``best.npz``, or None.
      mode: as for ``purenet.train.monitor.Monitor``: ``"min"``, ``"max"``
        or ``"auto"``.
      min_delta: as for ``purenet.train.monitor.Monitor``.

    After each epoch: ``paths`` lists the kept epoch files, oldest first;
    ``best_path`` is ``best.npz`` once written, ``best_epoch`` its epoch.
    """

    def __init__(
        self, directory: str | os.PathLike, *, last: int | None = 1, best: str | None = None,
        mode: str = "auto", min_delta: float = 0.0,
    ):  # fmt: skip
        if not isinstance(directory, (str, os.PathLike)):
            raise ConfigError("KeepCheckpoints", f"directory must be a path, got {type(directory).__name__}")
        if not os.fspath(directory).strip():  # "" would mean the working directory, silently
            raise ConfigError(
                "KeepCheckpoints", f"directory must name a directory, got {os.fspath(directory)!r}; "
                "pass '.' for the working directory",
            )  # fmt: skip
        if last is None and best is None:
            raise ConfigError("KeepCheckpoints", "keeps nothing: pass last=N, best='val_loss' (say), or both")
        self.directory = pathlib.Path(directory).expanduser()
        self.last = None if last is None else require_positive_int("KeepCheckpoints", "last", last)
        self.monitor = None if best is None else Monitor("KeepCheckpoints", best, mode, min_delta)
        self.paths: list[pathlib.Path] = []
        self.best_path: pathlib.Path | None = None
        self.best_epoch: int | None = None
        self._best: float | None = None
        self._stale: list[pathlib.Path] = []
        self._saved = False  # whether this run has written a checkpoint yet

    def __repr__(self) -> str:
        return f"KeepCheckpoints({os.fspath(self.directory)!r})"

    def on_train_begin(self, history: dict, keys: Sequence[str]) -> None:
        """Check the monitor and the directory; sort its files into this run's and an earlier run's.

        Args:
          history: fit's history, the resumed epochs' entries included.
          keys: the names each epoch of this run records.
        """
        if self.monitor is not None:
            self.monitor.require_in(keys)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise checkpoint.CheckpointError(
                "KeepCheckpoints", f"cannot create {os.fspath(self.directory)!r}: {error.strerror or error}"
            ) from None
        check_writable(self.directory / BEST_FILE)
        resumed, self._saved = len(history.get("loss", [])), False
        self.paths, self._stale = [], []
        for epoch, (path, meta) in sorted(self._epoch_files().items()):
            own = epoch <= resumed and _same_run(meta, history, epoch)
            (self.paths if own else self._stale).append(path)
        self._adopt_best(history, resumed)
        if self._stale:
            _say(
                f"fit: {self!r} replaces {len(self._stale)} checkpoint(s) an earlier run left there "
                f"({', '.join(path.name for path in self._stale)}), once this run has saved its own"
            )

    def on_epoch_end(self, epoch: int, history: dict, state: TrainState) -> None:
        tree = {"params": state.params, "opt_state": state.opt_state}
        if self.last is not None:
            path = self.directory / f"epoch-{epoch:04d}.npz"
            checkpoint.save(path, tree, epoch=epoch, history=history)
            self.paths.append(path)
            self._saved = True
            for old in self.paths[: -self.last]:
                old.unlink(missing_ok=True)
            self.paths = self.paths[-self.last :]
        if self.monitor is not None and self.monitor.improved(history[self.monitor.name][-1], self._best):
            self._best, self.best_epoch = history[self.monitor.name][-1], epoch
            self.best_path = self.directory / BEST_FILE
            checkpoint.save(
                self.best_path, tree, epoch=epoch, history=history, monitor=self.monitor.name,
                value=self._best,
            )  # fmt: skip
            self._saved = True
        self._drop_stale()

    def _drop_stale(self) -> None:
        """Remove an earlier run's files once this run has saved its own (never before: nothing is lost)."""
        if not self._saved:
            return
        remaining = []
        for stale in self._stale:
            if stale.name == BEST_FILE and self.monitor is not None:
                if self.best_path is None:  # this run has no best yet: the old one stays until it has
                    remaining.append(stale)
                continue  # otherwise this run's best.npz has replaced it
            if stale not in self.paths:
                stale.unlink(missing_ok=True)
        self._stale = remaining

    def _epoch_files(self) -> dict[int, tuple[pathlib.Path, dict]]:
        found = {}
        for path in self.directory.iterdir():
            match = _EPOCH_FILE.fullmatch(path.name)
            if match and path.is_file():
                found[int(match.group(1))] = (path, self._checkpoint_metadata(path))
        return found

    def _checkpoint_metadata(self, path: pathlib.Path) -> dict:
        """A kept file's metadata; a file so named that is no training checkpoint is refused, not deleted."""
        try:
            meta = checkpoint.read_metadata(path)
        except checkpoint.CheckpointError:
            meta = None
        if not isinstance(meta, dict) or not isinstance(meta.get("epoch"), int) or "history" not in meta:
            raise checkpoint.CheckpointError(
                "KeepCheckpoints",
                f"{os.fspath(path)!r} is not a training checkpoint, yet {self!r} would overwrite or delete a "
                "file of that name; move it, or keep the checkpoints in another directory (checked before "
                "training)",
            )
        return meta

    def _adopt_best(self, history: dict, resumed: int) -> None:
        """Take over the resumed run's own best.npz; mark any other stale, saying why where fit resumed."""
        path = self.directory / BEST_FILE
        self.best_path = self.best_epoch = self._best = None
        if path.is_file():
            meta = self._checkpoint_metadata(path)
            reason = self._foreign_best(meta, history, resumed)
            if reason is None:
                self.best_path, self.best_epoch, self._best = path, meta["epoch"], float(meta["value"])
                return
            self._stale.append(path)
            if resumed and self.monitor is not None:
                _say(f"fit: {self!r} does not resume from {os.fspath(path)!r}: {reason}")
        self._resumed_best(history, resumed)

    def _resumed_best(self, history: dict, resumed: int) -> None:
        """Say so where the resumed epochs' best has no file: ``best.npz`` then covers this run's epochs.

        Its params were never kept, so this run's best is what can be
        written; the line keeps ``best.npz`` from passing for the whole run's.
        """
        if self.monitor is None or not resumed:
            return
        index, value = self.monitor.best_of(history.get(self.monitor.name, [])[:resumed])
        if index is not None:
            _say(
                f"fit: {self!r}: by {self.monitor.name} the resumed epochs' best is epoch {index + 1} "
                f"({value:.6g}), whose params were not kept; {BEST_FILE} holds the best of this run's epochs"
            )

    def _foreign_best(self, meta: dict, history: dict, resumed: int) -> str | None:
        """Why ``best.npz`` is not the resumed run's best by this monitor, or None where it is."""
        if self.monitor is None:
            return "this run keeps no best"
        epoch, name = meta.get("epoch"), self.monitor.name
        if meta.get("monitor") != name:
            return f"it holds the best by {meta.get('monitor')!r}, this run watches {name!r}"
        if not 1 <= epoch <= resumed or not isinstance(meta.get("value"), (int, float)):
            return f"its epoch {epoch} is not one of the {resumed} epochs fit resumed"
        if not _same_run(meta, history, epoch):
            return f"its history to epoch {epoch} is not the resumed run's (another run's or another model's)"
        index, _ = self.monitor.best_of(history.get(name, [])[:resumed])
        if index is None or index + 1 != epoch:
            return (
                f"by {name} (mode={self.monitor.mode!r}) the resumed epochs' best is epoch "
                f"{None if index is None else index + 1}, not its epoch {epoch}"
            )
        return None


def check_directories(callbacks: Sequence[Any], checkpoint_path: Any) -> None:
    """Refuse, before training, KeepCheckpoints that would overwrite or delete one another's files.

    Args:
      callbacks: fit's checked callbacks.
      checkpoint_path: fit's own checkpoint path, or None.
    """
    seen: dict[pathlib.Path, int] = {}
    for index, keep in enumerate(callbacks):
        if not isinstance(keep, KeepCheckpoints):
            continue
        where = _real(keep.directory)
        if where in seen:
            raise ConfigError(
                "fit", f"callbacks[{seen[where]}] and callbacks[{index}] are KeepCheckpoints on one "
                f"directory {os.fspath(keep.directory)!r}: each would overwrite and delete the other's "
                "epoch files and best.npz; give each its own directory",
            )  # fmt: skip
        seen[where] = index
        if checkpoint_path is None:
            continue
        target = checkpoint._npz_path(pathlib.Path(checkpoint_path).expanduser())  # where fit saves it
        if _real(target.parent) == where and (target.name == BEST_FILE or _EPOCH_FILE.fullmatch(target.name)):
            raise ConfigError(
                "fit", f"checkpoint_path {os.fspath(checkpoint_path)!r} is {target.name} in the directory "
                f"callbacks[{index}] {keep!r} manages: each would overwrite the other's file; pass another "
                "checkpoint_path (e.g. a 'run' beside the directory) or another directory",
            )  # fmt: skip


def _real(path: pathlib.Path) -> pathlib.Path:
    # symlinks and '..' resolved, so two spellings of one directory compare equal
    return pathlib.Path(os.path.realpath(path.expanduser()))


def _same_run(meta: dict, history: dict, epoch: int) -> bool:
    """Whether a kept file's recorded losses are the resumed run's, epoch for epoch (NaN equal to NaN)."""
    saved = (meta.get("history") or {}).get("loss") if isinstance(meta.get("history"), dict) else None
    ours = history.get("loss", [])[:epoch]
    if not isinstance(saved, list) or len(saved) != epoch or len(ours) != epoch:
        return False
    return all(_same_number(a, b) for a, b in zip(saved, ours))


def _same_number(a: Any, b: Any) -> bool:
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return both_nan or a == b


def _say(line: str) -> None:
    print(line, file=sys.stderr)


__all__ = ["BEST_FILE", "KeepCheckpoints", "check_directories"]
