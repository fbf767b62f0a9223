"""Micro-batching across requests: many small embedding requests, few large model calls.

A :class:`Batcher` owns one model and one inference thread. Requests (each a list of
token lists, the layers it wants and an optional pooling) wait in a bounded queue; the
thread takes them first come, first served, once the queued tokens reach the token
budget, or as many requests have arrived as the previous batch answered, or the oldest
request has waited ``max_wait_ms`` (counted from the end of the previous batch if that
is later). It sorts their sentences by length, cuts them into model calls
(:func:`elmo.serve.planning.plan_calls`), runs the calls shortest sentences first, and
hands each request its own sentences' arrays as soon as its last sentence is done. The
model is stateless and batch-independent, so every request gets what
:meth:`elmo.ElmoModule.embed` gives for its sentences alone.

Nothing here knows HTTP: :meth:`Batcher.submit` returns a
:class:`concurrent.futures.Future`, which an asyncio server awaits with
:func:`asyncio.wrap_future`. Cancelling the future before its batch starts takes the
request out of the queue, so a client that went away costs no model time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from elmo.choices import LAYERS, Layers, check_choice
from elmo.module import ElmoModule
from elmo.serve.metrics import Counter, Histogram, ThroughputWindow
from elmo.serve.planning import CallCosts, plan_calls

__all__ = ["Batcher", "BatcherStopped", "Pool", "QueueFull", "pool_mean"]

Pool = Literal["mean"]
POOLS: tuple[Pool, ...] = ("mean",)

# Sentences per model call and tokens per model call: the buckets of the batch-size histograms.
_SENTENCE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384)


class QueueFull(Exception):
    """The queue holds ``max_queue`` requests; ``retry_after`` (seconds) is when room is likely."""

    def __init__(self, max_queue: int, retry_after: int) -> None:
        super().__init__(f"the queue is full ({max_queue} requests waiting, the --max-queue limit)")
        self.max_queue = max_queue
        self.retry_after = retry_after


class BatcherStopped(Exception):
    """The batcher is stopping (the server is shutting down) and takes no new requests."""


def pool_mean(array: np.ndarray) -> np.ndarray:
    """The mean over a sentence's tokens (the axis before the last) of one of
    :meth:`elmo.ElmoModule.embed`'s arrays: ``[n, D]`` -> ``[D]``, ``[L, n, D]`` -> ``[L, D]``."""
    return np.ascontiguousarray(array.mean(axis=-2, dtype=np.float32))


@dataclass(eq=False)
class _Request:
    sentences: list[list[str]]
    layers: Layers
    pool: Pool | None
    tokens: int
    enqueued: float
    future: Future[list[np.ndarray]] = field(default_factory=Future)
    results: list[np.ndarray | None] = field(default_factory=list)
    remaining: int = 0


class Batcher:
    """Merges concurrent requests into model calls on one inference thread.

    ``max_batch_tokens``: the most tokens taken into one batch (a request larger than that
    alone is a batch of its own), and the queued tokens at which a batch starts without
    waiting; a model call holds at most ``padded_per_token`` times as many padded
    positions (sentences x longest sentence; see :class:`~elmo.serve.planning.CallCosts`).
    ``max_wait_ms``: how long the oldest queued request may wait for others to join
    (counted from the end of the previous batch if that is later). A batch also starts
    once as many requests have arrived since the previous one began as that one held:
    under a steady load those are its clients coming back, and waiting for them keeps
    the batches full instead of splitting the clients into groups that take turns.
    ``max_queue``: the most requests waiting; :meth:`submit` raises :class:`QueueFull`
    beyond it.
    """

    def __init__(
        self,
        module: ElmoModule,
        *,
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
    ) -> None:
        if max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens: expected an integer >= 1, found {max_batch_tokens}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms: expected a number >= 0, found {max_wait_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue: expected an integer >= 1, found {max_queue}")
        if module.stateful:
            raise ValueError("the batcher needs a stateless model: carried state would mix requests")
        self.module = module
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._costs = CallCosts.for_model(module.config, packed=module.uses_fast_engine())
        self._pending: deque[_Request] = deque()
        self._pending_tokens = 0
        self._running = 0  # requests taken into the batch being computed
        self._last_batch_end = 0.0  # monotonic time the previous batch ended
        self._last_batch_requests = 0  # requests the previous batch answered
        self._arrived = 0  # requests submitted since the previous batch began
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.throughput = ThroughputWindow()
        self.batch_requests = Histogram(
            "elmo_batch_requests", "Requests merged into one batch.", _SENTENCE_BUCKETS
        )
        self.batch_sentences = Histogram(
            "elmo_batch_sentences", "Sentences per model call.", _SENTENCE_BUCKETS
        )
        self.batch_tokens = Histogram(
            "elmo_batch_padded_tokens", "Padded tokens (sentences x longest) per model call.", _TOKEN_BUCKETS
        )
        self.tokens_total = Counter("elmo_tokens_embedded_total", "Tokens run through the model.")
        self.sentences_total = Counter("elmo_sentences_embedded_total", "Sentences run through the model.")
        self.cancelled_total = Counter(
            "elmo_requests_cancelled_total", "Queued requests dropped because their client went away."
        )
        self.inference_seconds = Counter("elmo_inference_seconds_total", "Time spent in model calls.")

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start the inference thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="elmo-inference", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Take no new requests, finish the queued ones, and end the inference thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not counting the batch being computed)."""
        return len(self._pending)

    @property
    def queued_tokens(self) -> int:
        return self._pending_tokens

    @property
    def in_flight(self) -> int:
        """Requests queued or being computed."""
        with self._cond:
            return len(self._pending) + self._running

    def full(self) -> bool:
        return len(self._pending) >= self.max_queue

    # ------------------------------------------------------------------ requests
    def submit(
        self, sentences: Sequence[Sequence[str]], layers: Layers = "elmo", pool: Pool | None = None
    ) -> Future[list[np.ndarray]]:
        """Queue one request; its future gives one array per sentence, in order, as
        ``module.embed(sentences, layers)`` would (each through :func:`pool_mean` with
        ``pool="mean"``). Raises :class:`QueueFull` or :class:`BatcherStopped`."""
        check_choice("layers", layers, LAYERS)
        if pool is not None:
            check_choice("pool", pool, POOLS)
            if layers == "default":
                raise ValueError("pool: layers='default' is already one vector per sentence")
        batch = [list(s) for s in sentences]
        tokens = sum(max(1, len(s)) for s in batch)
        request = _Request(batch, layers, pool, tokens, time.monotonic())
        request.results = [None] * len(batch)
        request.remaining = len(batch)
        with self._cond:
            if self._stopping:
                raise BatcherStopped("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(self.max_queue, self._retry_after())
            if not batch:
                request.future.set_result([])
                return request.future
            self._pending.append(request)
            self._pending_tokens += tokens
            self._arrived += 1
            self._cond.notify_all()
        request.future.add_done_callback(lambda f: self._forget(request) if f.cancelled() else None)
        return request.future

    def _forget(self, request: _Request) -> None:
        """A cancelled request leaves the queue (if it is still there)."""
        with self._cond:
            try:
                self._pending.remove(request)
            except ValueError:
                return
            self._pending_tokens -= request.tokens
        self.cancelled_total.inc()

    def _retry_after(self) -> int:
        """Seconds until the queue has likely drained, from the recent throughput (1 to 60)."""
        rate = self.throughput.rate()
        if rate <= 0:
            return 1
        return int(min(60, max(1, math.ceil(self._pending_tokens / rate))))

    # ------------------------------------------------------------------ the inference thread
    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            while True:
                if self._pending:
                    if self._pending_tokens >= self.max_batch_tokens or self._stopping:
                        break
                    if self._arrived >= self._last_batch_requests > 0:
                        break  # as many requests as the last batch answered: its clients are back
                    # The wait runs from the oldest request's arrival or from the end of the
                    # previous batch, whichever is later: the clients just answered then
                    # have time to send their next requests into this batch, instead of
                    # a half-full batch starting at once and keeping them apart for good.
                    since = max(self._pending[0].enqueued, self._last_batch_end)
                    remaining = since + self.max_wait - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                elif self._stopping:
                    return None
                else:
                    self._cond.wait()
            taken: list[_Request] = []
            tokens = 0
            while self._pending and (not taken or tokens + self._pending[0].tokens <= self.max_batch_tokens):
                request = self._pending.popleft()
                self._pending_tokens -= request.tokens
                if request.future.set_running_or_notify_cancel():
                    taken.append(request)
                    tokens += request.tokens
            self._running = len(taken)
            self._last_batch_requests = len(taken)
            self._arrived = 0
            return taken

    def _loop(self) -> None:
        while True:
            taken = self._next_batch()
            if taken is None:
                return
            try:
                self._run(taken)
            except BaseException as e:  # the requests learn of it; the thread goes on
                for request in taken:
                    if not request.future.done():
                        request.future.set_exception(e)
            finally:
                with self._cond:
                    self._running = 0
                    self._last_batch_end = time.monotonic()

    def _run(self, taken: list[_Request]) -> None:
        rows = [(r, i) for r in taken for i in range(len(r.sentences))]
        rows.sort(key=lambda row: -len(row[0].sentences[row[1]]))
        lengths = [len(r.sentences[i]) for r, i in rows]
        self.batch_requests.observe(len(taken))
        calls = plan_calls(lengths, self.max_batch_tokens * self._costs.padded_per_token, self._costs)
        # Shortest sentences first: a request is answered with the call of its longest
        # sentence, so answers leave (and their clients' next requests arrive) while the
        # rest of the batch still runs.
        for start, end in reversed(calls):
            # The longest sentence comes first, so it sets the padded width of the call.
            self._call(rows[start:end], max(1, lengths[start]))

    def _call(self, chunk: list[tuple[_Request, int]], width: int) -> None:
        t0 = time.perf_counter()
        batch = [r.sentences[i] for r, i in chunk]
        try:
            by_layers = self.module.embed_batch_layers(batch, {r.layers for r, _ in chunk})
        except Exception as e:
            for r, _ in chunk:
                if not r.future.done():
                    r.future.set_exception(e)
            return
        seconds = time.perf_counter() - t0
        n_tokens = sum(len(s) for s in batch)
        self.batch_sentences.observe(len(batch))
        self.batch_tokens.observe(len(batch) * width)
        self.tokens_total.inc(n_tokens)
        self.sentences_total.inc(len(batch))
        self.inference_seconds.inc(seconds)
        self.throughput.add(n_tokens)
        for row, (r, i) in enumerate(chunk):
            if r.future.done():  # failed in an earlier call
                continue
            array = by_layers[r.layers][row]
            r.results[i] = pool_mean(array) if r.pool == "mean" else array
            r.remaining -= 1
            if r.remaining == 0:
                r.future.set_result(r.results)  # type: ignore[arg-type]
