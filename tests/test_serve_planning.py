"""How a batch is cut into model calls: the least cost under the padded bound."""

from __future__ import annotations

import itertools
import random

import pytest

from elmo.config import ElmoConfig, LSTMConfig
from elmo.model import MIN_ROWS
from elmo.serve.planning import CallCosts, plan_calls


def _rows(lengths: list[int], start: int, end: int) -> int:
    """Rows the packed engine runs for a call, step by step: max(MIN_ROWS, active)."""
    call = lengths[start:end]
    return sum(max(MIN_ROWS, sum(1 for n in call if n > t)) for t in range(max(1, call[0])))


def _cost(lengths: list[int], calls: list[tuple[int, int]], costs: CallCosts) -> float:
    """A plan's cost counted from its definition (tokens included)."""
    total = 0.0
    for s, e in calls:
        width = max(1, lengths[s])
        total += costs.call + costs.step * width + _rows(lengths, s, e) + costs.padded * (e - s) * width
    return total


def _brute_force(lengths: list[int], costs: CallCosts) -> float:
    """The least cost over every way to cut ``lengths`` into contiguous calls."""
    best = [0.0] + [float("inf")] * len(lengths)
    for end in range(1, len(lengths) + 1):
        for start in range(end):
            best[end] = min(best[end], best[start] + _cost(lengths, [(start, end)], costs))
    return best[-1]


@pytest.mark.parametrize("seed", range(30))
def test_plan_calls_finds_the_cheapest_cuts(seed):
    """With distinct lengths (every cut possible) and no binding bound, the plan costs what
    the best of every possible cut costs."""
    rng = random.Random(seed)
    lengths = sorted(rng.sample(range(1, 90), rng.randint(1, 30)), reverse=True)
    costs = CallCosts(
        call=rng.choice([0, 20, 80]), step=rng.choice([0, 2, 6]), padded=rng.choice([0.05, 0.2, 1.0])
    )
    calls = plan_calls(lengths, max_padded=10**9, costs=costs)
    assert calls[0][0] == 0 and calls[-1][1] == len(lengths)
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in itertools.pairwise(calls))
    assert _cost(lengths, calls, costs) == pytest.approx(_brute_force(lengths, costs))


def test_padding_is_weighed_against_a_call():
    lengths = [30] + [20] * 63
    # 63 x 10 padded positions at 0.079 cost less than a second call (and its idle rows).
    assert plan_calls(lengths, 10**9, CallCosts()) == [(0, 64)]
    # Dear padding and free calls: the long sentence goes alone.
    assert plan_calls(lengths, 10**9, CallCosts(call=0, step=0, padded=1.0)) == [(0, 1), (1, 64)]
    # A much longer sentence runs alone: its 180 extra steps idle 15 rows each either way,
    # and beside the others it would add 63 x 180 padded positions.
    assert plan_calls([200] + [20] * 63, 10**9, CallCosts()) == [(0, 1), (1, 64)]


def test_the_plain_engine_pays_for_every_row_of_every_step():
    # The same sentences the packed engine merges: the plain one runs 63 x 10 padded rows.
    assert plan_calls([30] + [20] * 63, 10**9, CallCosts(packed=False)) == [(0, 1), (1, 64)]


@pytest.mark.parametrize("seed", range(20))
def test_every_call_stays_under_the_bound(seed):
    rng = random.Random(seed)
    lengths = sorted((rng.randint(1, 80) for _ in range(rng.randint(1, 300))), reverse=True)
    calls = plan_calls(lengths, max_padded=400)
    assert [i for s, e in calls for i in range(s, e)] == list(range(len(lengths)))
    assert all((e - s) * lengths[s] <= 400 for s, e in calls)


def test_a_sentence_over_the_bound_is_a_call_of_its_own():
    assert plan_calls([500, 3, 2], max_padded=400) == [(0, 1), (1, 3)]


def test_unsorted_lengths_are_refused():
    with pytest.raises(ValueError, match="sorted longest first"):
        plan_calls([1, 2], 100)


def test_costs_follow_the_model_size():
    """Padding weighs less against the rows of a larger LSTM (the ratio measured: 0.079 for
    the bundled model's size, 0.0049 for the original's)."""
    small = CallCosts.for_model(ElmoConfig(lstm=LSTMConfig(dim=512, projection_dim=128)), packed=True)
    original = CallCosts.for_model(ElmoConfig.preset("original"), packed=True)
    assert small.padded == pytest.approx(0.079, abs=0.001)
    assert original.padded == pytest.approx(0.0099, abs=0.0005)
