"""How a batch is cut into model calls: the least cost under the padded bound."""

from __future__ import annotations

import itertools
import random

import pytest

from elmo.config import ElmoConfig, LSTMConfig
from elmo.model import MIN_ROWS
from elmo.serve.planning import CallCosts, plan_calls


def _rows(lengths: list[int], start: int, end: int, packed: bool) -> float:
    """Rows a call runs beyond its tokens' own: the packed engine's lanes fill MIN_ROWS rows
    a step where the tokens suffice (markers count); the plain one runs every row of every step."""
    call = lengths[start:end]
    if packed:
        return max(0, MIN_ROWS * (call[0] + 2) - sum(n + 2 for n in call))
    return max(MIN_ROWS, len(call)) * max(1, call[0])


def _cost(lengths: list[int], calls: list[tuple[int, int]], costs: CallCosts) -> float:
    """A plan's cost counted from its definition (tokens included)."""
    total = 0.0
    for s, e in calls:
        width = max(1, lengths[s])
        total += (
            costs.call
            + costs.step * width
            + _rows(lengths, s, e, costs.packed)
            + costs.padded * (e - s) * width
        )
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
        call=rng.choice([0, 20, 80]),
        step=rng.choice([0, 2, 6]),
        padded=rng.choice([0.001, 0.05, 0.2, 1.0]),
        packed=rng.random() < 0.5,
    )
    calls = plan_calls(lengths, max_padded=10**9, costs=costs)
    assert calls[0][0] == 0 and calls[-1][1] == len(lengths)
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in itertools.pairwise(calls))
    assert _cost(lengths, calls, costs) == pytest.approx(_brute_force(lengths, costs))


def test_padding_is_weighed_against_a_call():
    lengths = [30] + [20] * 63
    plain = CallCosts(padded=0.079, packed=False)
    # The plain model: 63 x 10 padded rows cost more than a second call.
    assert plan_calls(lengths, 10**9, plain) == [(0, 1), (1, 64)]
    # 63 x 10 padded positions at 0.01 cost less than a second call and its steps.
    assert plan_calls(lengths, 10**9, CallCosts(padded=0.01, packed=False)) == [(0, 64)]
    # Dear padding and free calls: the long sentence goes alone.
    assert plan_calls(lengths, 10**9, CallCosts(call=0, step=0, padded=1.0)) == [(0, 1), (1, 64)]


def test_lanes_take_short_sentences_beside_a_long_one():
    """With lanes, short sentences fill the steps of a long one's call, where its other
    MIN_ROWS - 1 rows would idle: one call, at the fast engine's costs for the bundled
    model's size."""
    costs = CallCosts.for_model(ElmoConfig(lstm=LSTMConfig(dim=512, projection_dim=128)), packed=True)
    assert plan_calls([200] + [20] * 63, 10**9, costs) == [(0, 64)]
    assert plan_calls([300] + [6] * 300, 10**9, costs) == [(0, 301)]
    # Once the long call's steps are full (MIN_ROWS long sentences), many short ones are
    # cheaper in a call of their own than as padding of the long one.
    assert plan_calls([400] * MIN_ROWS + [2] * 300, 10**9, costs) == [
        (0, MIN_ROWS),
        (MIN_ROWS, MIN_ROWS + 300),
    ]


def test_the_plain_engine_pays_for_every_row_of_every_step():
    # The same sentences the packed engine merges: the plain one runs 63 x 10 padded rows.
    assert plan_calls([30] + [20] * 63, 10**9, CallCosts(padded=0.079, packed=False)) == [(0, 1), (1, 64)]


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
    """Padding weighs less against the rows of a larger LSTM. The plain model's padded
    outputs: 0.079 row-steps a position for the bundled model's size, 0.0099 for the
    original's; the fast engine keeps only index bookkeeping per padded position."""
    small_config = ElmoConfig(lstm=LSTMConfig(dim=512, projection_dim=128))
    small = CallCosts.for_model(small_config, packed=False)
    original = CallCosts.for_model(ElmoConfig.preset("original"), packed=False)
    assert small.padded == pytest.approx(0.079, abs=0.001)
    assert original.padded == pytest.approx(0.0099, abs=0.0005)
    assert (small.padded_per_token, small.packed) == (4, False)
    fast = CallCosts.for_model(small_config, packed=True)
    assert fast.padded == pytest.approx(0.00106, abs=0.0001)
    assert (fast.padded_per_token, fast.packed) == (64, True)
