"""Rematerialization: recompute in segments instead of storing (the book's section 6.5.7).

Chen et al. 2016, "Training deep nets with sublinear memory cost": with
segments of k blocks, back-propagation holds n/k segment inputs plus one
segment's activations; ``serial`` and ``repeat`` take ``remat=`` and use the
segment lengths chosen here.

On XLA's CPU backend the unrolled ``serial`` gains nothing: the CPU
compiler expands ``jax.checkpoint``'s optimization barriers before its CSE
and scheduling passes, which then merge the recomputation into the forward
pass or run it early.  ``repeat``'s scan keeps the recomputation in its loop
on every backend.
"""

from __future__ import annotations

import jax

from purenet.shapes import require_positive_int

# Chen et al. 2016: with segments of k blocks, back-propagation holds n/k segment inputs plus one
# segment's activations, k c inputs' worth, least at k = sqrt(n / c).  A Dense-ReLU-Dense residual
# block keeps c = 2.25 input-sized arrays (its float32 input and activation, a boolean mask).
STORED_PER_BLOCK = 2.25


def segment_length(name: str, remat, count: int) -> int | None:
    """The number of children per recomputed segment, or None when nothing is recomputed.

    ``remat=True`` takes the divisor k of ``count`` that minimizes
    count / k + STORED_PER_BLOCK * k: a divisor, so that no shorter segment
    is left over to run outside the scan (measured: 64 blocks in segments of
    4 hold 4.3x less than without remat on an H200, segments of 8 3.8x).
    """
    if remat is False:
        return None
    if remat is True:
        divisors = [k for k in range(1, count + 1) if count % k == 0]
        return min(divisors, key=lambda k: count / k + STORED_PER_BLOCK * k)
    return min(require_positive_int(name, "remat (False, True or a segment length)", remat), count)


def segmented_scan(copies, x, stacked, count: int, segment: int):
    """``copies(x, stacked)`` run as checkpointed segments of ``segment`` copies each.

    The outer scan keeps only each segment's input; the backward pass
    recomputes a segment's inner scan, and so holds one segment's
    activations at a time.  A last, shorter segment takes the remainder.
    """
    whole = count // segment * segment
    head = jax.tree_util.tree_map(
        lambda a: a[:whole].reshape((whole // segment, segment, *a.shape[1:])), stacked
    )
    # prevent_cse=False inside scan, as jax.checkpoint's documentation advises: scan already keeps
    # the recomputation from being merged with the forward pass
    recomputed_in_scan = jax.checkpoint(copies, prevent_cse=False)
    h = jax.lax.scan(lambda h, chunk: (recomputed_in_scan(h, chunk), None), x, head)[0]
    if whole < count:
        h = jax.checkpoint(copies)(h, jax.tree_util.tree_map(lambda a: a[whole:], stacked))
    return h


__all__ = ["STORED_PER_BLOCK", "segment_length", "segmented_scan"]
