"""Plots of spectral densities on a log scale, as Ghorbani, Krishnan and Xiao (2019), figure 1.

Each density gets its own panel over its own support: the spectrum at
initialization (say, in [-0.1, 0.1]) and after training (in [-1, 60]) differ
by orders of magnitude in range, and one shared axis would squash the first
to a spike.  The curves are the smoothed densities themselves, never clipped:
on the log axis the lower limit sits a fixed number of decades below each
curve's peak, and values that underflow to 0 (far from every Ritz value) are
left out of the line rather than drawn at an invented floor.

matplotlib comes with the ``examples`` extra and is imported inside the
function, so ``import purenet`` never needs it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from purenet.core import ConfigError
from purenet.curvature.density import SpectralDensity, checked_density
from purenet.validate import DataError, require_number

_WHERE = "plot_spectral_density"


def plot_spectral_density(
    densities: SpectralDensity | Mapping[str, SpectralDensity],
    path: str | os.PathLike,
    *,
    sigma: float | None = None,
    num_points: int = 1000,
    title: str = "Eigenvalue density",
    decades: float = 8.0,
    overlay: bool = False,
) -> str:
    """Plot one or more spectral densities on a log scale (as Ghorbani et al., figure 1) to an image file.

    Each density gets its own panel (stacked, ``sharex=False``) whose x-range
    is its own support: its Ritz values from smallest to largest, widened by
    the larger of 5% of that range and 4 sigma, so the Gaussian tails show.
    The y-axis is logarithmic and runs from ``10**-decades`` times the
    curve's peak to twice the peak; nothing is clipped, and points where the
    density underflows to 0 are left out of the line.

    Args:
      densities: a ``SpectralDensity``, or a mapping from labels (strings) to them.
      path: the file to write, not an existing directory; matplotlib picks
        the format from its extension, and a path without one gets ``.png``.
      sigma: Gaussian width; default each density's ``default_sigma``.
      num_points: evenly spaced grid points per curve, at least 2; every Ritz
        value is added to the grid as well, so no peak falls between points.
      title: the figure's title.
      decades: how many powers of ten below each curve's peak the log axis
        shows (> 0, and not so many that the limit underflows float64).
      overlay: draw every curve on one axis whose x-range spans all their
        supports (for direct comparison), instead of one panel each.

    Returns:
      The path written, as a string: ``path``, with ``.png`` added when it has no extension.

    Raises:
      ConfigError: ``densities`` is empty, not a density or a mapping of
        string labels to densities; or another argument is out of range; or
        ``path`` is a directory or cannot be written.
      ShapeError: a density's nodes and weights are not of one shape (probes, m).
      DataError: a density holds NaN or inf, negative weights, rows of
        weights not summing to 1, or nodes spanning a range that overflows.
    """
    plt = _pyplot()
    densities = _checked_densities(densities)
    path = _checked_path(path)
    if sigma is not None:
        sigma = require_number(_WHERE, "sigma", sigma, low=0.0, low_open=True)
    num_points = int(require_number(_WHERE, "num_points", num_points, low=2, integer=True))
    decades = require_number(_WHERE, "decades", decades, low=0.0, low_open=True)
    if not isinstance(title, str):
        raise ConfigError(_WHERE, f"title must be a string, got {title!r} ({type(title).__name__})")
    curves = {label: _curve(d, sigma, num_points) for label, d in densities.items()}
    panels = 1 if overlay else len(curves)
    figure, axes = plt.subplots(panels, 1, figsize=(7, 1.2 + 2.8 * panels), sharex=False, squeeze=False)
    try:
        lines = {}
        for index, (label, (grid, values)) in enumerate(curves.items()):
            lines[label] = _draw(axes[0 if overlay else index, 0], grid, values, label, decades, overlay)
        if overlay:
            _legend(axes[0, 0], lines)
            _fit_limits(axes[0, 0], list(curves.values()), decades)
        figure.suptitle(title)
        figure.tight_layout()
        _save(figure, path)
    finally:
        plt.close(figure)
    return path


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # matplotlib comes with the examples extra
        raise ImportError(
            "plot_spectral_density needs matplotlib: pip install 'purenet[examples]'"
        ) from error
    return plt


def _checked_densities(densities: Any) -> dict[str, SpectralDensity]:
    """``densities`` as a non-empty dict from string labels to finite densities."""
    single = isinstance(densities, SpectralDensity)
    if single:
        densities = {"": densities}
    if not isinstance(densities, Mapping):
        raise ConfigError(
            _WHERE,
            "densities must be a SpectralDensity or a mapping from labels to them, "
            f"got a {type(densities).__name__}",
        )
    if not densities:
        raise ConfigError(_WHERE, "densities is empty: give at least one SpectralDensity to plot")
    for label, density in densities.items():
        if not isinstance(label, str):
            raise ConfigError(
                _WHERE, f"densities' labels must be strings, got {label!r} ({type(label).__name__})"
            )
        if not isinstance(density, SpectralDensity):
            raise ConfigError(
                _WHERE,
                f"densities[{label!r}] must be a SpectralDensity (from spectral_density), "
                f"got a {type(density).__name__}",
            )
        checked_density(_WHERE, density, "densities" if single else f"densities[{label!r}]")
    return dict(densities)


def _checked_path(path: Any) -> str:
    """The file to write: ``path`` as a string, if it names a file in an existing directory.

    A path without an extension gets ``.png``, as matplotlib would add it
    (after stripping trailing dots), so that the path returned is the file written.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(
            _WHERE, f"path must be a string or os.PathLike, got {path!r:.80} ({type(path).__name__})"
        )
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    if not path or not os.path.isdir(folder):
        raise ConfigError(_WHERE, f"path {path!r} cannot be written: the directory {folder!r} does not exist")
    if not os.path.isdir(path) and not os.path.splitext(path)[1][1:]:
        path = path.rstrip(".") + ".png"
    if os.path.isdir(path):  # given, or what the .png added names: matplotlib would write a sibling
        raise ConfigError(
            _WHERE, f"path {path!r} is an existing directory; give a file name, such as a .png in it"
        )
    return path


def _curve(density: SpectralDensity, sigma: float | None, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """The grid over the density's own support (with its Ritz values in it) and the density there."""
    sigma = density.default_sigma() if sigma is None else sigma
    nodes = np.asarray(density.nodes, np.float64).reshape(-1)
    low, high = float(nodes.min()), float(nodes.max())
    margin = max(0.05 * (high - low), 4 * sigma)
    if not np.isfinite([low - margin, high + margin]).all():
        raise DataError(
            _WHERE,
            f"a density's nodes span [{low:g}, {high:g}]: with its margins, too wide to plot in float64",
        )
    grid = np.union1d(np.linspace(low - margin, high + margin, num_points), nodes)
    return grid, density.evaluate(grid, sigma)


def _draw(axes: Any, grid: np.ndarray, values: np.ndarray, label: str, decades: float, overlay: bool) -> Any:
    """One curve on a log axis, the points that underflowed to 0 left out; limits from its own data.

    A panel of its own is titled by the label; curves overlaid on one axis get a legend (``_legend``).
    Returns the line.
    """
    (line,) = axes.plot(grid, np.ma.masked_less_equal(values, 0.0))
    axes.set_yscale("log")
    axes.set_xlabel("eigenvalue")
    axes.set_ylabel("density")
    if label and not overlay:
        axes.set_title(label)
    _fit_limits(axes, [(grid, values)], decades)
    return line


def _legend(axes: Any, lines: dict[str, Any]) -> None:
    """The overlaid curves' labels, passed explicitly: else matplotlib drops a label starting with "_"."""
    labelled = {label: line for label, line in lines.items() if label}
    if labelled:
        axes.legend(list(labelled.values()), list(labelled), loc="upper right")


def _fit_limits(axes: Any, curves: list[tuple[np.ndarray, np.ndarray]], decades: float) -> None:
    """x over every curve's grid; y from ``10**-decades`` below the lowest peak to twice the highest."""
    peaks = [float(values.max()) for _, values in curves]
    axes.set_xlim(min(grid[0] for grid, _ in curves), max(grid[-1] for grid, _ in curves))
    low = min(peaks) * 10.0**-decades
    if not low >= np.finfo(np.float64).tiny:  # 0 (underflowed) on a log axis: matplotlib warns and ignores it
        tiny = np.finfo(np.float64).tiny
        most = math.floor(math.log10(min(peaks)) - math.log10(tiny)) if min(peaks) > 0 else 0
        raise ConfigError(
            _WHERE,
            f"decades={decades:g} puts the lower y-limit below the smallest float64 (the lowest peak is "
            f"{min(peaks):.3g}); give decades <= {most}",
        )
    axes.set_ylim(low, 2 * max(peaks))


def _save(figure: Any, path: str) -> None:
    """``figure.savefig``, its refusals (an unknown format, an unwritable file) as a ConfigError."""
    try:
        figure.savefig(path, dpi=120)
    except (OSError, ValueError) as error:
        raise ConfigError(_WHERE, f"path {path!r} cannot be written: {error}") from error
