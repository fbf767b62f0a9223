"""How a batch of sentences is cut into model calls: the fewest, fullest calls that pay off.

A model call's time has four parts, each measured by least squares over calls of many
shapes (one torch thread, no autograd, AMD EPYC with AVX-512; the bundled model, and a
random model of the original's size):

- **rows**: every time step multiplies each active sentence's row through every LSTM
  weight, and every product has at least ``MIN_ROWS`` rows (so that a sentence's result
  does not depend on its company; see :mod:`elmo.model`). The fast engine packs the
  sentences in lanes (:mod:`elmo.engine.recurrent`): a call of s steps (its longest
  sentence and the two markers) runs ``max(MIN_ROWS x s, its rows)`` row-steps, the
  short sentences filling the long one's steps (measured within a few row-steps on the
  books' sentences). The plain model runs every step over every sentence. A row-step
  (24 us for the bundled model, 826 us for the original's size) is the unit below.
- **steps**: a step's fixed work (its small elementwise operations): 10 row-steps for the
  bundled model, 2.2 for the original's size; ``STEP_ROWS`` = 6.
- **padded positions** (sentences x longest): the plain model's outputs, the layer mix and
  the copies out cost ``PADDED_ROWS`` x (output floats per position) / (floating-point
  operations per row-step): 0.079 row-steps for the bundled model, 0.0099 for the
  original's size. The fast engine's outputs hold real tokens only; what remains per
  padded position is its index bookkeeping, ``RAGGED_PADDED_FLOPS`` / (operations per
  row-step): 0.001 row-steps for the bundled model (timed on its own: 0.024 us a position).
- **a call**: preparing the batch and its bookkeeping: 115 row-steps (bundled), 38
  (original's size); ``CALL_ROWS`` = 80.

Sorting a batch by length and cutting it into contiguous calls with the least total cost
then weighs what a long sentence costs the short ones beside it against the steps and
the call a separate call would cost. For the fast engine that is nearly always one call:
the books' sentences the service was measured on, 8 to a request from 32 clients, run
as one call per batch (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from elmo.config import ElmoConfig
from elmo.model import MIN_ROWS

__all__ = ["CallCosts", "plan_calls"]

STEP_ROWS = 6.0
CALL_ROWS = 80.0
PADDED_ROWS = 486.0
RAGGED_PADDED_FLOPS = 5_000.0
# The sentence markers: a sentence of n tokens takes n + 2 steps.
MARKERS = 2


@dataclass(frozen=True)
class CallCosts:
    """The parts of a model call's cost, in row-steps (see the module docstring).

    ``padded_per_token``: the padded positions (sentences x longest) a call may hold per
    token of the batch budget, the bound on the memory that grows with them: the plain
    model's padded outputs (3 KB a position for the bundled model), the fast engine's
    index tables only (about 64 bytes a position).
    """

    call: float = CALL_ROWS
    step: float = STEP_ROWS
    padded: float = 0.001
    packed: bool = True  # the fast engine: lanes, outputs without padding
    padded_per_token: int = 64

    @classmethod
    def for_model(cls, config: ElmoConfig, *, packed: bool) -> CallCosts:
        """The costs for a model of these options on the fast (``packed``) or plain engine."""
        lstm = config.lstm
        # A row-step: each layer and direction multiplies [x | h] (both P wide) by the
        # gates' kernel and the cell by the projection.
        per_layer = 2 * lstm.projection_dim * 4 * lstm.dim + lstm.dim * lstm.projection_dim
        flops = 2 * 2 * lstm.n_layers * per_layer
        if packed:
            return cls(padded=RAGGED_PADDED_FLOPS / flops, packed=True, padded_per_token=64)
        outputs = (lstm.n_layers + 1) * config.output_dim
        return cls(padded=PADDED_ROWS * outputs / flops, packed=False, padded_per_token=4)


def plan_calls(
    lengths: Sequence[int], max_padded: int, costs: CallCosts | None = None
) -> list[tuple[int, int]]:
    """Cut sentences sorted longest first (``lengths``) into model calls: ranges
    ``(start, end)`` that cover them in order, each holding at most ``max_padded``
    padded positions (sentences x its first, longest sentence) unless one sentence alone
    is longer, of the least total cost (:class:`CallCosts`).

    Dynamic programming over runs of equal length: calls begin and end between runs,
    except where a run alone is over the bound and is cut into pieces that fit. The inner
    loop stops at the bound, so its work is about (runs x runs within one call).
    """
    if any(a < b for a, b in itertools.pairwise(lengths)):
        raise ValueError("plan_calls: lengths must be sorted longest first")
    costs = costs or CallCosts()
    pieces: list[tuple[int, int, int]] = []  # (start, end, width)
    i = 0
    while i < len(lengths):
        width = max(1, lengths[i])
        j = i
        while j < len(lengths) and lengths[j] == lengths[i]:
            j += 1
        per_call = max(1, max_padded // width)
        pieces.extend((s, min(j, s + per_call), width) for s in range(i, j, per_call))
        i = j
    # Rows (markers included) of the sentences before each index: a call's rows in O(1).
    before = [0, *itertools.accumulate(n + MARKERS for n in lengths)]

    def cost(start: int, end: int, width: int) -> float:
        count = end - start
        if costs.packed:
            # Lanes: the steps carry MIN_ROWS rows, or all the call's rows if it has more.
            # (The tokens' own rows are left out: every plan pays them alike.)
            rows = max(0.0, MIN_ROWS * (width + MARKERS) - (before[end] - before[start]))
        else:
            rows = float(max(MIN_ROWS, count) * width)
        return costs.call + costs.step * width + rows + costs.padded * count * width

    best = [0.0] + [math.inf] * len(pieces)  # best[k]: the least cost of the first k pieces
    cut = [0] * (len(pieces) + 1)
    for k in range(1, len(pieces) + 1):
        end = pieces[k - 1][1]
        for first in range(k - 1, -1, -1):
            start, _, width = pieces[first]
            if (end - start) * width > max_padded and first < k - 1:
                break  # earlier starts are wider and hold more sentences: over the bound too
            total = best[first] + cost(start, end, width)
            if total < best[k]:
                best[k], cut[k] = total, first
    calls = []
    k = len(pieces)
    while k > 0:
        calls.append((pieces[cut[k]][0], pieces[k - 1][1]))
        k = cut[k]
    return calls[::-1]
