"""KeepCheckpoints: a fit callback keeping the last N epochs' checkpoints and the best one.

Files in ``directory``: ``epoch-0007.npz`` (one per kept epoch) and
``best.npz``, each ``purenet.checkpoint`` format (docs/checkpoints.md)
holding the tree ``{"params": ..., "opt_state": ...}`` with the metadata
``epoch``, ``history`` and, for ``best.npz``, ``monitor`` and ``value``.
Every write is atomic, and an older file is deleted only after a newer one
is whole, so a crash never leaves fewer checkpoints than asked for.

Nothing is overwritten silently: checkpoints an earlier run left in the
directory are announced at the start and removed once this run has saved
its first; when fit resumes, the files of the epochs it resumed from are
this run's own and are kept (a ``best.npz`` among them is the best to beat).
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
from collections.abc import Sequence

from purenet import checkpoint
from purenet.core import ConfigError
from purenet.shapes import require_positive_int
from purenet.train.base import TrainState
from purenet.train.callbacks import Monitor
from purenet.train.resume import check_writable

_EPOCH_FILE = re.compile(r"epoch-(\d{4,})\.npz")
BEST_FILE = "best.npz"


class KeepCheckpoints:
    """Keep the checkpoints of the last ``last`` epochs and/or of the best epoch by ``best``.

    Args:
      directory: where to write them (created if missing; checked writable
        before training).
      last: how many of the most recent epochs to keep (>= 1), or None for
        none.
      best: a history key (e.g. ``"val_loss"``) whose best epoch is kept in
        ``best.npz``, or None.
      mode: as for ``purenet.train.callbacks.Monitor``: ``"min"``, ``"max"``
        or ``"auto"``.
      min_delta: as for ``purenet.train.callbacks.Monitor``.

    After each epoch: ``paths`` lists the kept epoch files, oldest first;
    ``best_path`` is ``best.npz`` once written, ``best_epoch`` its epoch.
    """

    def __init__(
        self, directory: str | os.PathLike, *, last: int | None = 1, best: str | None = None,
        mode: str = "auto", min_delta: float = 0.0,
    ):  # fmt: skip
        if not isinstance(directory, (str, os.PathLike)):
            raise ConfigError("KeepCheckpoints", f"directory must be a path, got {type(directory).__name__}")
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

    def __repr__(self) -> str:
        return f"KeepCheckpoints({os.fspath(self.directory)!r})"

    def on_train_begin(self, history: dict, keys: Sequence[str]) -> None:
        if self.monitor is not None:
            self.monitor.require_in(keys)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise checkpoint.CheckpointError(
                "KeepCheckpoints", f"cannot create {os.fspath(self.directory)!r}: {error.strerror or error}"
            ) from None
        check_writable(self.directory / BEST_FILE)
        resumed = len(history.get("loss", []))
        epochs = self._epoch_files()
        self.paths = [path for epoch, path in sorted(epochs.items()) if epoch <= resumed]
        self._stale = [path for epoch, path in sorted(epochs.items()) if epoch > resumed]
        self._adopt_best(resumed)
        if self._stale:
            _say(
                f"fit: {self!r} replaces {len(self._stale)} checkpoint(s) an earlier run left there "
                f"({', '.join(path.name for path in self._stale)}), once this run has saved its first"
            )

    def on_epoch_end(self, epoch: int, history: dict, state: TrainState) -> None:
        tree = {"params": state.params, "opt_state": state.opt_state}
        if self.last is not None:
            path = self.directory / f"epoch-{epoch:04d}.npz"
            checkpoint.save(path, tree, epoch=epoch, history=history)
            self.paths.append(path)
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
        for stale in self._stale:
            if stale not in self.paths and stale != self.best_path:
                stale.unlink(missing_ok=True)
        self._stale = []

    def _epoch_files(self) -> dict[int, pathlib.Path]:
        found = {}
        for path in self.directory.iterdir():
            match = _EPOCH_FILE.fullmatch(path.name)
            if match and path.is_file():
                found[int(match.group(1))] = path
        return found

    def _adopt_best(self, resumed: int) -> None:
        """Take over a best.npz written before the epoch fit resumed from; mark any other one stale."""
        path = self.directory / BEST_FILE
        self.best_path = self.best_epoch = self._best = None
        if not path.exists():
            return
        meta = _metadata_or_none(path)
        usable = (
            self.monitor is not None
            and meta is not None
            and meta.get("monitor") == self.monitor.name
            and isinstance(meta.get("epoch"), int)
            and 1 <= meta["epoch"] <= resumed
            and isinstance(meta.get("value"), (int, float))
        )
        if usable:
            self.best_path, self.best_epoch, self._best = path, meta["epoch"], float(meta["value"])
        else:
            self._stale.append(path)


def _metadata_or_none(path: pathlib.Path) -> dict | None:
    try:
        return checkpoint.read_metadata(path)
    except checkpoint.CheckpointError:
        return None


def _say(line: str) -> None:
    print(line, file=sys.stderr)


__all__ = ["BEST_FILE", "KeepCheckpoints"]
