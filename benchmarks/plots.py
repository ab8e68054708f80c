"""One figure per benchmark, drawn from the JSON records in this folder (no timing here).

    python benchmarks/plots.py            # writes benchmarks/figures/*.png

Each figure reads only records that exist, so it can be drawn on a machine
that ran some of the benchmarks.
"""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES = os.path.join(HERE, "figures")


def load(name: str) -> dict | None:
    path = os.path.join(HERE, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def available(named_files) -> list[tuple[str, dict]]:
    """``(label, record)`` for each ``(label, file name)`` whose record exists."""
    return [(label, record) for label, name in named_files if (record := load(name))]


def save(fig, name: str) -> str:
    os.makedirs(FIGURES, exist_ok=True)
    path = os.path.join(FIGURES, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def peers() -> str | None:
    """ms per step of every contender, one panel per (record, size), purenet's bars highlighted."""
    panels = [
        (label, size, figures) for label, r in available(PEER_RECORDS) for size, figures in r["sizes"].items()
    ]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)))
    for ax, (label, size, figures) in zip(axes if len(panels) > 1 else [axes], panels):
        rows = sorted(figures["contenders"].items(), key=lambda item: item[1]["ms"], reverse=True)
        names = [name + ("*" if r["compute_dtype"] != figures["dtype"] else "") for name, r in rows]
        colours = ["tab:orange" if name.startswith("purenet") else "tab:blue" for name, _ in rows]
        ms = [r["ms"] for _, r in rows]
        ax.barh(names, ms, color=colours)
        if max(ms) > 10 * min(ms):  # log only where the bars span decades; else honest bars from zero
            ax.set_xscale("log")
        ax.set_title(f"{label}: {size} ({figures['dtype']}), ms per step", fontsize=9)
        ax.tick_params(labelsize=7)
    return save(fig, "peers.png")


PEER_RECORDS = [
    ("2-core CPU", "peers_cpu.json"),
    ("H200", "peers_h200_f32.json"),
    ("H200", "peers_h200_bf16.json"),
]


def compile_times() -> str | None:
    records = available((("CPU", "compile_cpu.json"), ("H200", "compile_h200.json")))
    if not records:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, r in records:
        for kind, style in (("repeat", "-o"), ("serial", "--s")):
            rows = r["kinds"][kind]
            depths = sorted(rows, key=int)
            name = "repeat (lax.scan)" if kind == "repeat" else "unrolled serial"
            ax.plot(
                [int(d) for d in depths], [rows[d]["total"] for d in depths], style, label=f"{label}: {name}"
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("blocks n")
    ax.set_ylabel("jit(grad) trace + compile, s")
    ax.legend(fontsize=7)
    return save(fig, "compile.png")


def remat() -> str | None:
    records = available((("CPU", "remat_cpu.json"), ("H200", "remat_h200.json")))
    if not records:
        return None
    fig, axes = plt.subplots(1, len(records), figsize=(5 * len(records), 3.5), squeeze=False)
    for ax, (label, r) in zip(axes[0], records):
        labels = {}  # settings that land on one point (serial on the CPU) share one label
        for kind, marker in (("repeat", "o"), ("serial", "s")):
            for name, row in r["kinds"].get(kind, {}).items():
                point = (row["time_ratio"], row["activation_cut"])
                ax.scatter(*point, marker=marker)
                near = next(
                    (q for q in labels if abs(q[0] - point[0]) < 0.03 and abs(q[1] - point[1]) < 0.1), point
                )
                labels.setdefault(near, []).append(f"{kind}: {name}")
        for point, names in labels.items():
            ax.annotate(", ".join(names), point, fontsize=6)
        ax.axhline(4, color="grey", lw=0.5)
        ax.axvline(1.4, color="grey", lw=0.5)
        ax.set_xlabel("step time / no remat")
        ax.set_ylabel("activation memory cut (x)")
        ax.set_title(f"{label}: {r['depth']} blocks, width {r['width']}, batch {r['batch']}", fontsize=9)
    return save(fig, "remat.png")


def curvature() -> str | None:
    records = available(
        (
            ("CPU f32", "curvature.json"),
            ("H200 f32", "curvature_h200_f32.json"),
            ("H200 bf16", "curvature_h200_bf16.json"),
        )
    )
    if not records:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, r in records:
        sizes = list(r["sizes"])
        ax.plot(sizes, [r["sizes"][s]["ratios"]["hvp f/r / grad"] for s in sizes], "-o", label=label)
    ax.axhline(2.3, color="grey", lw=0.5, label="target at large: 2.3x")
    ax.set_ylabel("purenet HVP / gradient time")
    ax.legend(fontsize=7)
    return save(fig, "curvature.png")


def reference() -> str | None:
    r = load("reference.json")
    if not r:
        return None
    fig, ax = plt.subplots(figsize=(6, 2.5))
    names = list(r["median_seconds"])
    ax.barh(names, [r["median_seconds"][n] * 1e3 for n in names])
    ax.set_xlabel("ms per gradient of the cost (1M-parameter MLP, batch 256, one core)")
    ax.tick_params(labelsize=7)
    return save(fig, "reference.png")


def top_eigenvalue() -> str | None:
    r = load("top_eigenvalue.json")
    if not r:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, style in (("pyhessian", "s--"), ("purenet", "o-")):
        runs = [v for v in r[name].values() if isinstance(v, dict) and "error" in v]
        runs.sort(key=lambda v: v["seconds"])
        ax.plot([v["seconds"] * 1e3 for v in runs], [v["error"] for v in runs], style, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("ms to the top eigenvalue")
    ax.set_ylabel("relative error (worst of 5 seeds)")
    ax.legend(fontsize=7)
    return save(fig, "top_eigenvalue.png")


def main() -> list[str]:
    written = [
        path
        for draw in (peers, compile_times, remat, curvature, reference, top_eigenvalue)
        if (path := draw())
    ]
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main()
