"""What every benchmark here shares: the machine's description and a median timer."""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable


def machine(note: str = "") -> str:
    """The CPU model (from /proc/cpuinfo where there is one), the core count and an optional note."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores" + (f", {note}" if note else "")


def median_seconds(fn: Callable[[], object], repeats: int, warmups: int = 1) -> float:
    """The median wall time of ``fn()`` over ``repeats`` calls after ``warmups`` (compilation) calls.

    ``fn`` must block until its work is done (``jax.block_until_ready``).
    """
    for _ in range(warmups):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(
    thunks: dict[str, Callable[[], object]],
    repeats: int,
    warmup_rounds: int = 3,
    calls_per_round: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Median seconds of each thunk, timed in rounds so that drift on a noisy machine hits all alike.

    Each round runs every thunk ``calls_per_round`` times back to back, in an
    order shuffled afresh (seeded): a fixed order lets one contender always
    follow the same other, and on a GPU a call that follows a long, hot one
    (a fused 256-step loop, say) runs at lower clocks.  ``warmup_rounds``
    untimed rounds go first: the first compiles, and the others let an idle
    GPU raise its clocks (an H200 idles at 345 MHz, and sub-millisecond
    timings taken while it ramps are off by tens of percent).
    """
    for _ in range(warmup_rounds):
        for fn in thunks.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in thunks}
    order, rng = list(thunks), random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            for _ in range(calls_per_round):
                start = time.perf_counter()
                thunks[name]()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(samples) for name, samples in times.items()}


def peak_bytes(stats) -> int:
    """A compiled computation's peak device memory from XLA's memory analysis.

    Arguments + outputs + temporaries, less the outputs that reuse donated
    argument buffers (aliased).
    """
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )


def record_header(note: str = "", **versions: str) -> dict:
    """The date, the machine and the versions every benchmark record starts with."""
    import jax
    import numpy as np

    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(note),
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "jax": jax.__version__}
        | versions,
    }


def save_json(path: str | None, record: dict) -> None:
    """Write ``record`` to ``path`` as indented JSON (nothing when no path was asked for)."""
    if path:
        with open(path, "w") as f:
            json.dump(record, f, indent=2)
