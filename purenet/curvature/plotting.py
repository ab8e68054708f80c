"""Plots of spectral densities on a log scale, as Ghorbani, Krishnan and Xiao (2019), figure 1.

matplotlib comes with the ``examples`` extra and is imported inside the
function, so ``import purenet`` never needs it.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from purenet.curvature.density import SpectralDensity


def plot_spectral_density(
    densities: SpectralDensity | Mapping[str, SpectralDensity],
    path: str,
    *,
    sigma: float | None = None,
    num_points: int = 1000,
    title: str = "Eigenvalue density",
) -> str:
    """Plot one or more spectral densities on a log scale (as Ghorbani et al., figure 1) to a PNG.

    Args:
      densities: a ``SpectralDensity``, or a mapping from legend labels to them.
      path: the file to write.
      sigma: Gaussian width; default each density's ``default_sigma``.
      num_points: grid points across the joint range.
      title: the plot's title.

    Returns:
      ``path``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # matplotlib comes with the examples extra
        raise ImportError(
            "plot_spectral_density needs matplotlib: pip install 'purenet[examples]'"
        ) from error
    if isinstance(densities, SpectralDensity):
        densities = {"": densities}
    low = min(float(jnp.min(d.nodes)) for d in densities.values())
    high = max(float(jnp.max(d.nodes)) for d in densities.values())
    margin = 0.05 * max(high - low, 1e-6)
    grid = np.linspace(low - margin, high + margin, num_points)
    figure, axes = plt.subplots(figsize=(7, 4))
    for label, density in densities.items():
        values = np.maximum(density.evaluate(grid, sigma), 1e-12)
        axes.semilogy(grid, values, label=label or None)
    axes.set_xlabel("eigenvalue")
    axes.set_ylabel("density")
    axes.set_title(title)
    if any(densities):
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
