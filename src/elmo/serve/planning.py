"""How a batch of sentences is cut into model calls: the fewest, fullest calls that pay off.

A model call's time has four parts, each measured by least squares over calls of many
shapes (one torch thread, no autograd, AMD EPYC with AVX-512; the bundled model and a
random model of the original's size):

- **rows**: every time step multiplies each active sentence's row through every LSTM
  weight, and every product has at least ``MIN_ROWS`` rows (so that a sentence's result
  does not depend on its company; see :mod:`elmo.model`). The fast engine packs the
  sentences, so step ``t`` has ``max(MIN_ROWS, n_t)`` rows, ``n_t`` the sentences longer
  than ``t``; the plain model runs every step over every sentence. A row-step (26 us for
  the bundled model, 826 us for the original's size) is the unit below.
- **steps**: a step's fixed work (its small elementwise operations): 6.6 row-steps for
  the bundled model, 2.2 for the original's size; ``STEP_ROWS`` = 6.
- **padded positions** (sentences x longest): the outputs, the layer mix, the copies out.
  They cost ``PADDED_ROWS`` x (output floats per position) / (floating-point operations
  per row-step): 0.079 row-steps for the bundled model (measured 0.079), 0.0099 for the
  original's size (measured 0.0049: padding is charged double there, which costs little).
- **a call**: preparing the batch and its bookkeeping: 85 row-steps (bundled), 38
  (original's size); ``CALL_ROWS`` = 80.

Sorting a batch by length and cutting it into contiguous calls with the least total cost
then weighs the padding a long sentence imposes on short ones against the rows and steps
a separate call would cost. The books' sentences the service was measured on, 8 to a
request from 32 clients, go from calls of a fixed padded budget to about half as many
calls (``benchmarks/RESULTS.md``).
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


@dataclass(frozen=True)
class CallCosts:
    """The parts of a model call's cost, in row-steps (see the module docstring)."""

    call: float = CALL_ROWS
    step: float = STEP_ROWS
    padded: float = 0.079
    packed: bool = True  # the fast engine: rows of finished sentences cost nothing

    @classmethod
    def for_model(cls, config: ElmoConfig, *, packed: bool) -> CallCosts:
        """The costs for a model of these options on the fast (``packed``) or plain engine."""
        lstm = config.lstm
        # A row-step: each layer and direction multiplies [x | h] (both P wide) by the
        # gates' kernel and the cell by the projection.
        per_layer = 2 * lstm.projection_dim * 4 * lstm.dim + lstm.dim * lstm.projection_dim
        flops = 2 * 2 * lstm.n_layers * per_layer
        outputs = (lstm.n_layers + 1) * config.output_dim
        return cls(padded=PADDED_ROWS * outputs / flops, packed=packed)


def _idle_rows(lengths: Sequence[int], start: int, end: int) -> int:
    """Rows the packed steps of a call over ``lengths[start:end]`` run beyond its tokens:
    between the k-th and the (k+1)-th longest sentence, k < MIN_ROWS sentences are active
    and the step's products still have MIN_ROWS rows."""
    rows = 0
    for k in range(1, MIN_ROWS):
        longer = lengths[start + k - 1] if start + k - 1 < end else 0
        shorter = lengths[start + k] if start + k < end else 0
        rows += (MIN_ROWS - k) * (longer - shorter)
    return rows


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
    # Idle rows of a call depend on its first MIN_ROWS sentences only: the same for every
    # call of MIN_ROWS sentences or more from one start (the packed engine's only).
    idle_from = (
        {start: _idle_rows(lengths, start, len(lengths)) for start, _, _ in pieces} if costs.packed else {}
    )

    def cost(start: int, end: int, width: int) -> float:
        count = end - start
        if not costs.packed:
            rows = float(max(MIN_ROWS, count) * width)
        elif count >= MIN_ROWS:
            rows = idle_from[start]
        else:
            rows = _idle_rows(lengths, start, end)
        # (The packed engine's tokens are left out: every plan pays them alike.)
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
