"""What the book's examples share: their command line, where they write, and how they check their claims."""

from __future__ import annotations

import argparse
import pathlib


def arguments(description: str, argv=None) -> argparse.Namespace:
    """``--quick`` (the CI mode: fewer epochs, the same claims) and ``--out DIR`` (default examples/out)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short run for CI; the claims are the same")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "out"), help="where plots go")
    args = parser.parse_args(argv)
    args.out = pathlib.Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (6.0, 4.0)):
    """A matplotlib figure on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)


def save(fig, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(f"wrote {path}")
    return path


def report(claims: dict[str, bool]) -> int:
    """Print each claim with its verdict; the exit status is 1 if any failed."""
    for claim, holds in claims.items():
        print(f"{'ok' if holds else 'CLAIM FAILED'}: {claim}")
    return 0 if all(claims.values()) else 1
