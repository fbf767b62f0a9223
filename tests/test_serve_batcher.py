"""The batcher of ``elmo serve``: requests merged into model calls, each getting its own result."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

import elmo
from conftest import short_sentences as _sentences
from conftest import tiny_model
from elmo.choices import LAYERS
from elmo.serve.batcher import Batcher, BatcherStopped, QueueFull, pool_mean
from elmo.serve.planning import CallCosts


@pytest.fixture(scope="module")
def module(tiny_plain_module: elmo.ElmoModule) -> elmo.ElmoModule:
    return tiny_plain_module


# A sentence's outputs do not depend on its batch up to float32 rounding: a matrix product
# may round a row differently by its position in the batch (seen on the tiny model's widths,
# up to 1e-7; the bundled model's widths give equal bits on AVX-512). ``module.embed`` itself
# differs by as much between two batch sizes.
ATOL = 1e-6


def _assert_same(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == np.float32 and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=0, atol=ATOL)


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("pool", [None, "mean"])
def test_each_request_gets_what_embed_gives_it_alone(module, layers, pool):
    """Requests queued together run in one batch, yet each result equals
    ``module.embed`` on that request's sentences alone."""
    if pool and layers == "default":
        with pytest.raises(ValueError, match="pool: layers='default' is already one vector per sentence"):
            Batcher(module).submit([["a"]], layers, pool)
        return
    rng = random.Random(LAYERS.index(layers))
    batcher = Batcher(module, max_batch_tokens=10_000, max_wait_ms=0)
    requests = [_sentences(rng, rng.randint(1, 5)) for _ in range(6)]
    futures = [batcher.submit(r, layers, pool) for r in requests]  # queued before the thread runs
    batcher.start()
    try:
        for r, f in zip(requests, futures):
            expected = module.embed(r, layers)
            if pool == "mean":
                expected = [pool_mean(a) for a in expected]
            _assert_same(f.result(timeout=30), expected)
    finally:
        batcher.stop()
    assert batcher.batch_requests.count == 1  # one batch for all six requests
    assert batcher.batch_requests.sum == 6
    assert batcher.sentences_total.value() == sum(map(len, requests))


def test_pool_mean_is_the_mean_over_tokens():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)  # [L, n, D]
    np.testing.assert_array_equal(pool_mean(a), a.mean(axis=1))
    np.testing.assert_array_equal(pool_mean(a[0]), a[0].mean(axis=0))


def _record_calls(module: elmo.ElmoModule, monkeypatch) -> list[list[list[str]]]:
    """The sentences of each model call the inference thread makes, recorded as they run."""
    calls = []
    original = module.embed_batch_layers

    def recording(batch, choices):
        if threading.current_thread().name == "elmo-inference":
            calls.append(batch)
        return original(batch, choices)

    monkeypatch.setattr(module, "embed_batch_layers", recording)
    return calls


def _run_and_check(batcher: Batcher, requests: list[list[list[str]]]) -> None:
    """Queue every request, start the batcher, and check each answer against ``embed``."""
    futures = [batcher.submit(r, "all") for r in requests]
    batcher.start()
    try:
        for r, f in zip(requests, futures):
            _assert_same(f.result(timeout=30), batcher.module.embed(r, "all"))
    finally:
        batcher.stop()


def test_the_token_budget_splits_model_calls(module, monkeypatch):
    """A budget of 20 tokens: batches of at most 20 tokens, calls of at most 4 x 20 padded
    positions (sentences x longest), and a request spread over several batches and calls
    still gets its own arrays, in order."""
    rng = random.Random(3)
    calls = _record_calls(module, monkeypatch)
    batcher = Batcher(module, max_batch_tokens=20, max_wait_ms=0)
    _run_and_check(batcher, [_sentences(rng, 4, longest=5) for _ in range(8)])  # <= 20 tokens each
    assert len(calls) == batcher.batch_sentences.count > 1
    bound = 20 * CallCosts.for_model(module.config, packed=False).padded_per_token
    assert all(len(call) * max(map(len, call)) <= bound for call in calls)


def test_the_fast_engine_batches_a_long_sentence_with_short_ones(monkeypatch):
    """On the fast engine (lanes, unpadded outputs) the long sentence shares its call with
    short ones, and every request still gets what ``embed`` gives it alone."""
    module = elmo.load(tiny_model(), engine="fast")
    calls = _record_calls(module, monkeypatch)
    rng = random.Random(11)
    requests = [[["the"] * 120], *(_sentences(rng, 8, longest=6) for _ in range(12))]
    _run_and_check(Batcher(module, max_batch_tokens=10_000, max_wait_ms=0), requests)
    assert sum(map(len, calls)) == 97
    assert len(calls[-1]) > 1 and ["the"] * 120 in calls[-1]  # the long sentence's call is shared


def test_calls_run_shortest_first_and_answer_requests_as_they_finish(module, monkeypatch):
    """A request whose sentences are all in the batch's first (shortest) call is answered
    while the call with the long sentences still runs."""
    release = threading.Event()
    widths = []
    original = module.embed_batch_layers

    def gated(batch, choices):
        widths.append(max(map(len, batch)))
        if len(widths) == 2:  # the second call waits until the test has looked
            assert release.wait(30)
        return original(batch, choices)

    monkeypatch.setattr(module, "embed_batch_layers", gated)
    batcher = Batcher(module, max_batch_tokens=10_000, max_wait_ms=0)
    short = [["a", "b"]] * 20
    long = [["the"] * 400]  # 20 x 400 padded positions cost more than a call: two calls
    futures = [batcher.submit(short), batcher.submit(long)]
    batcher.start()
    try:
        _assert_same(futures[0].result(timeout=30), module.embed(short, "elmo"))
        assert not futures[1].done()
        release.set()
        _assert_same(futures[1].result(timeout=30), module.embed(long, "elmo"))
    finally:
        release.set()
        batcher.stop()
    assert widths[:2] == [2, 400]


def test_a_batch_starts_once_the_last_batchs_clients_are_back(module):
    """After a batch of three requests, three new requests start the next batch without
    waiting out max_wait_ms; fewer wait for it."""
    batcher = Batcher(module, max_batch_tokens=10_000, max_wait_ms=600)
    batcher.start()
    try:
        first = [batcher.submit([["a", "b"]]) for _ in range(3)]
        for f in first:
            f.result(timeout=30)  # the first batch: after max_wait_ms (no previous batch)
        t0 = time.monotonic()
        again = [batcher.submit([["c"]]) for _ in range(3)]
        for f in again:
            f.result(timeout=30)
        assert time.monotonic() - t0 < 0.5  # well under the 600 ms wait
        assert batcher.batch_requests.count == 2
        lone = batcher.submit([["d"]])
        time.sleep(0.2)
        assert not lone.done()  # one of three back: it waits for company
        lone.result(timeout=30)
    finally:
        batcher.stop()


def test_threads_submitting_at_once_each_get_their_own_result(module):
    rng = random.Random(7)
    batcher = Batcher(module, max_batch_tokens=256, max_wait_ms=2)
    batcher.start()
    requests = [(_sentences(rng, rng.randint(1, 4)), rng.choice(LAYERS)) for _ in range(40)]
    results: dict[int, list[np.ndarray]] = {}

    def client(k: int) -> None:
        sentences, layers = requests[k]
        results[k] = batcher.submit(sentences, layers).result(timeout=60)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.stop()
    for k, (sentences, layers) in enumerate(requests):
        _assert_same(results[k], module.embed(sentences, layers))


def test_a_full_queue_refuses_with_a_retry_hint(module):
    batcher = Batcher(module, max_queue=2)  # not started: nothing leaves the queue
    batcher.submit([["a"]])
    batcher.submit([["b"]])
    assert batcher.full()
    with pytest.raises(QueueFull, match=r"queue is full \(2 requests waiting, the --max-queue limit\)") as e:
        batcher.submit([["c"]])
    assert e.value.retry_after >= 1
    assert batcher.queue_depth == 2


def test_a_cancelled_request_leaves_the_queue_and_is_never_computed(module):
    batcher = Batcher(module, max_queue=2, max_wait_ms=0)
    keep = batcher.submit([["kept", "one"]])
    drop = batcher.submit([["dropped"]])
    assert drop.cancel()
    assert batcher.queue_depth == 1 and batcher.cancelled_total.value() == 1
    batcher.submit([["room", "again"]])  # the cancelled one's place is free
    batcher.start()
    keep.result(timeout=30)
    batcher.stop()
    assert batcher.sentences_total.value() == 2  # "dropped" never reached the model


def test_stop_finishes_queued_requests_then_refuses(module):
    batcher = Batcher(module, max_wait_ms=60_000)  # would wait a minute for company
    futures = [batcher.submit([["a", "b"]]) for _ in range(3)]
    batcher.start()
    t0 = time.monotonic()
    batcher.stop()
    assert time.monotonic() - t0 < 30
    assert all(len(f.result(timeout=0)) == 1 for f in futures)
    with pytest.raises(BatcherStopped):
        batcher.submit([["late"]])


def test_a_failing_model_call_fails_only_its_requests(module, monkeypatch):
    batcher = Batcher(module, max_wait_ms=0)
    calls = []
    original = module.embed_batch_layers

    def flaky(batch, choices):
        calls.append(batch)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return original(batch, choices)

    monkeypatch.setattr(module, "embed_batch_layers", flaky)
    first = batcher.submit([["x"]])
    batcher.start()
    with pytest.raises(RuntimeError, match="boom"):
        first.result(timeout=30)
    second = batcher.submit([["y"]])  # the thread lives on
    assert second.result(timeout=30)[0].shape == (1, 32)
    batcher.stop()


def test_the_batcher_refuses_bad_settings_and_stateful_models(module):
    with pytest.raises(ValueError, match="max_batch_tokens: expected an integer >= 1, found 0"):
        Batcher(module, max_batch_tokens=0)
    with pytest.raises(ValueError, match="max_queue"):
        Batcher(module, max_queue=0)
    stateful = elmo.load(tiny_model(), stateful=True)
    with pytest.raises(ValueError, match="stateless"):
        Batcher(stateful)
