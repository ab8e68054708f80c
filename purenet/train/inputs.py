"""What fit checks and sets up around its loop: validation data, devices, the progress bar.

Split from ``purenet.train.loop`` so that module holds the loop itself.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from purenet.core import ConfigError, Layer, ShapeError, describe_tree
from purenet.data import check_arrays
from purenet.train.base import DEVICE_DATA_BYTES, DEVICE_DATA_FRACTION, Loss


def _check_shapes_before_training(
    model: Layer, params: Any, x: np.ndarray, y: np.ndarray, loss: Loss
) -> None:
    """Trace the model and the loss on one example (shapes only): a misfit fails now, not after an epoch."""
    jax.eval_shape(lambda p, xb, yb: loss(model.apply(p, xb), yb), params, x[:1], y[:1])


def _check_validation(validation: Any, x: np.ndarray, y: np.ndarray, classes: int | None) -> tuple:
    """The validation data, refused before training unless it is shaped like the training data."""
    if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
        raise ConfigError("fit", f"validation must be a pair (x_val, y_val), got {describe_tree(validation)}")
    x_val, y_val = check_arrays("fit", *validation, num_classes=classes)
    if len(x_val) == 0:
        raise ShapeError(
            "fit (validation)", "the validation set holds no examples; pass validation=None instead"
        )
    for name, got, want in (("x_val", x_val, x), ("y_val", y_val, y)):
        if got.shape[1:] != want.shape[1:]:
            raise ShapeError(
                "fit (validation)",
                f"expected {name} of shape (n, *{want.shape[1:]}) like the training data, got {got.shape}",
            )
    return x_val, y_val


def _warn_if_apply_if_finite(opt_state: Any, on_nonfinite: str) -> None:
    """Say that fit's guard, not ``optax.apply_if_finite``, decides on non-finite steps."""
    is_state = lambda node: isinstance(node, optax.ApplyIfFiniteState)  # noqa: E731
    if any(is_state(node) for node in jax.tree_util.tree_leaves(opt_state, is_leaf=is_state)):
        warnings.warn(
            f"fit: the optimizer is wrapped in optax.apply_if_finite, but fit's own guard "
            f"(on_nonfinite={on_nonfinite!r}) decides first and never passes it a non-finite step; "
            "on_nonfinite='skip' skips such steps as apply_if_finite would, counted in history['skipped']",
            stacklevel=3,
        )


def _device_data_budget() -> int:
    """Bytes of training data fit keeps on the device: a share of its memory where it reports it."""
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    return int(limit * DEVICE_DATA_FRACTION) if limit else DEVICE_DATA_BYTES


def _mesh_shardings(mesh: Mesh, axis: str, batch_size: int) -> tuple[NamedSharding, NamedSharding]:
    if not isinstance(mesh, Mesh):
        raise ConfigError("fit", f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis not in mesh.shape:
        raise ConfigError(
            "fit", f"data_axis {axis!r} is not an axis of the mesh, whose axes are {mesh.axis_names}"
        )
    if batch_size % mesh.shape[axis]:
        raise ConfigError(
            "fit",
            f"batch_size must be a multiple of the {mesh.shape[axis]} devices on mesh axis {axis!r}, "
            f"got {batch_size}",
        )
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(axis))


def _progress_bar(progress: bool | None, total: int):
    if progress is None:
        progress = sys.stderr.isatty() and not os.environ.get("CI")
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training", unit="example", unit_scale=True)  # the rate: examples/s


def _close(bar) -> None:
    if bar is not None:
        bar.close()
