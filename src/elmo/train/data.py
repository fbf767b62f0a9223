"""Training data as bilm-tf feeds it: text shards, sentence streams and batches.

The text is one or more files ("shards"), one tokenized sentence a line, read as
:mod:`elmo.train.text` describes; an empty line is a sentence of no words (``<S> </S>``).
An empty file is skipped; a corpus of empty files is an error.

:class:`SentenceStream` is one direction of bilm-tf's ``LMDataset``: in training mode an
endless stream that loads one shard at a time (so memory holds one shard, never the
corpus), taking the shards of every pass ("epoch") in an order shuffled anew and, with
``shuffle_lines``, the lines of each shard in shuffled order; in test mode every shard
once, in sorted order, then the end. The backward stream reverses each sentence's tokens
and frames them ``</S> .. <S>``. Forward and backward are independent streams, as in
bilm-tf: with shuffling they see the sentences in different orders.

:class:`LMBatches` is bilm-tf's ``_get_batch`` over both directions: each of the B rows is
one continuous token stream; a row copies ``min(len(stream) - 1, T - pos)`` positions
(inputs ``stream[:n]``, targets ``stream[1:n+1]``), drops them, and pulls the next
sentence when only the final marker is left, so sentences follow each other within a row
with no reset and no padding. Rows are filled in order. In test mode bilm-tf drops the
whole batch in which the data runs out (``drop_last=True``); ``drop_last=False`` instead
runs every row's stream to its end and returns ``mask`` / ``mask_reverse`` [B, T] so that
every target is scored exactly once (masked-out positions hold id 0 and char ids 0).

Differences from bilm-tf, none of which changes a batch of the reproduced settings:
shards are sorted (bilm-tf takes ``glob`` order, which the file system decides, and pops
test shards from its end); the random generators are our own, derived from ``seed`` by
hashing so that every shuffle can be redone after a restart; a leading UTF-8 byte order
mark is dropped.

Exact resume: :meth:`LMBatches.state_dict` is a JSON-serialisable dict (per partition and
direction the pass number, its shard order, the shard and line reached, and the pending
tokens of every row) and :meth:`LMBatches.load_state_dict` continues from it with
exactly the batches an uninterrupted iterator would give. The shuffles are recomputed
from the seed, so the dict stays small.

Data partitions (distributed training): the sorted non-empty shards are dealt to P
partitions (shard i to partition i % P); each partition is an independent pair of streams
filling B / P rows, and a batch is the selected partitions' rows in partition order. A
rank r of a world of W processes takes partitions ``range(r, P, W)``, so the ranks
together produce exactly the batches of one process reading all P partitions, whatever W
(a divisor of P) is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from elmo.chars import BOS_TOKEN, EOS_TOKEN
from elmo.errors import DataError
from elmo.train.text import find_shards, read_lines, split_line
from elmo.train.vocab import Vocabulary, word_to_char_ids

__all__ = ["LMBatches", "SentenceStream"]

log = logging.getLogger(__name__)

STATE_FORMAT = "elmo-lm-batches"
STATE_VERSION = 1


def _derived_seed(*parts: int | str) -> int:
    # A stable 64-bit seed per (seed, partition, direction, purpose, pass, shard): every
    # shuffle can be redone from the state alone, and no two streams share a sequence.
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


# --------------------------------------------------------------------------- sentences
class SentenceStream:
    """One direction of bilm-tf's ``LMDataset``: sentences as token lists with markers.

    ``next_sentence()`` returns ``["<S>", w1, .., wn, "</S>"]`` (with ``reverse``:
    ``["</S>", wn, .., w1, "<S>"]``), or ``None`` when a test-mode stream has read every
    shard. Training mode (``test=False``) never ends: each pass takes the shards in an
    order shuffled with ``shuffle_shards`` and, with ``shuffle_lines``, each shard's lines
    in a shuffled order. ``key`` (any ints and strings) selects the random sequences
    together with ``seed``; streams meant to be independent need different keys.
    """

    def __init__(
        self,
        shards: Sequence[str | os.PathLike[str]],
        *,
        reverse: bool = False,
        test: bool = False,
        shuffle_shards: bool = False,
        shuffle_lines: bool = False,
        seed: int = 0,
        key: Sequence[int | str] = (),
    ) -> None:
        self.shards = [Path(s) for s in shards]
        if not self.shards:
            raise DataError("a sentence stream needs at least one shard")
        self.reverse = reverse
        self.test = test
        self.shuffle_shards = shuffle_shards and not test
        self.shuffle_lines = shuffle_lines
        self._key = (int(seed), *key, "backward" if reverse else "forward")
        self._epoch = 0
        self._order = self._epoch_order(0)
        self._shard_pos = -1  # position in _order of the loaded shard; -1: none loaded yet
        self._lines: list[str] = []
        self._perm: list[int] | None = None
        self._line_pos = 0
        self._epoch_sentences = 0
        self._finished = False

    @property
    def epoch(self) -> int:
        """Passes over the shards completed so far."""
        return self._epoch

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.shards)))
        if self.shuffle_shards:
            random.Random(_derived_seed(*self._key, "shards", epoch)).shuffle(order)
        return order

    def _load(self) -> None:
        path = self.shards[self._order[self._shard_pos]]
        self._lines = read_lines(path)
        self._perm = None
        if self.shuffle_lines:
            self._perm = list(range(len(self._lines)))
            random.Random(_derived_seed(*self._key, "lines", self._epoch, self._shard_pos)).shuffle(
                self._perm
            )
        self._line_pos = 0

    def _next_shard(self) -> bool:
        self._shard_pos += 1
        if self._shard_pos == len(self._order):
            if self.test:
                self._finished = True
                self._lines, self._perm = [], None
                return False
            if self._epoch_sentences == 0:
                raise DataError(
                    f"{', '.join(map(str, self.shards[:3]))}{' ...' if len(self.shards) > 3 else ''}: "
                    "no sentences; the shards are empty"
                )
            self._epoch += 1
            self._epoch_sentences = 0
            self._order = self._epoch_order(self._epoch)
            self._shard_pos = 0
        self._load()
        return True

    def next_sentence(self) -> list[str] | None:
        """The next sentence with its markers, or ``None`` at the end of test-mode data."""
        while self._line_pos >= len(self._lines):
            if self._finished or not self._next_shard():
                return None
        index = self._perm[self._line_pos] if self._perm is not None else self._line_pos
        self._line_pos += 1
        self._epoch_sentences += 1
        path = self.shards[self._order[self._shard_pos]]
        tokens = split_line(self._lines[index], path, index + 1)
        if self.reverse:
            tokens.reverse()
            return [EOS_TOKEN, *tokens, BOS_TOKEN]
        return [BOS_TOKEN, *tokens, EOS_TOKEN]

    def __iter__(self) -> Iterator[list[str]]:
        while (sentence := self.next_sentence()) is not None:
            yield sentence

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is (JSON-serialisable); the shuffles are recomputed on load."""
        return {
            "epoch": self._epoch,
            "order": list(self._order),
            "shard": self._shard_pos,
            "line": self._line_pos,
            "lines_in_shard": len(self._lines),
            "epoch_sentences": self._epoch_sentences,
            "finished": self._finished,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output; re-reads the current shard."""
        order = [int(i) for i in state["order"]]
        if sorted(order) != list(range(len(self.shards))):
            raise DataError(f"saved shard order {order[:10]} does not fit {len(self.shards)} shard(s)")
        self._epoch = int(state["epoch"])
        self._order = order
        self._shard_pos = int(state["shard"])
        self._epoch_sentences = int(state["epoch_sentences"])
        self._finished = bool(state["finished"])
        self._lines, self._perm, self._line_pos = [], None, 0
        if 0 <= self._shard_pos < len(self._order) and not self._finished:
            self._load()
            if len(self._lines) != int(state["lines_in_shard"]):
                path = self.shards[self._order[self._shard_pos]]
                raise DataError(
                    f"{path}: has {len(self._lines)} lines but had {state['lines_in_shard']} when the state "
                    "was saved; the data changed, so the run cannot continue exactly"
                )
            self._line_pos = int(state["line"])


# --------------------------------------------------------------------------- batches
class _Pending:
    """What is left of the sentence a row is reading: tokens[offset:]."""

    __slots__ = ("chars", "ids", "offset", "tokens")

    def __init__(self, tokens: list[str], vocab: Vocabulary, max_chars: int | None) -> None:
        self.tokens = tokens
        self.ids = np.fromiter((vocab.word_to_id(t) for t in tokens), dtype=np.int64, count=len(tokens))
        self.chars = (
            np.asarray([word_to_char_ids(t, max_chars) for t in tokens], dtype=np.int64)
            if max_chars is not None
            else None
        )
        self.offset = 0

    @property
    def remaining(self) -> int:
        return len(self.tokens) - self.offset


class _Block:
    """One direction's rows of one partition for one batch."""

    __slots__ = ("chars", "complete", "inputs", "mask", "targets")

    def __init__(self, rows: int, steps: int, max_chars: int | None) -> None:
        self.inputs = np.zeros((rows, steps), dtype=np.int64)
        self.targets = np.zeros((rows, steps), dtype=np.int64)
        self.chars = np.zeros((rows, steps, max_chars), dtype=np.int64) if max_chars is not None else None
        self.mask = np.zeros((rows, steps), dtype=bool)
        self.complete = True


class _RowStreams:
    """bilm-tf's ``_get_batch`` for one direction: one continuous token stream per row."""

    def __init__(self, source: SentenceStream, vocab: Vocabulary, rows: int, max_chars: int | None) -> None:
        self.source = source
        self.vocab = vocab
        self.max_chars = max_chars
        self.pending: list[_Pending | None] = [None] * rows
        self.exhausted = False

    def fill(self, steps: int, stop_at_end: bool) -> _Block:
        block = _Block(len(self.pending), steps, self.max_chars)
        for i in range(len(self.pending)):
            pos = 0
            while pos < steps:
                cur = self.pending[i]
                if cur is None or cur.remaining <= 1:
                    sentence = None if self.exhausted else self.source.next_sentence()
                    if sentence is None:
                        self.exhausted = True
                        block.complete = False
                        break
                    cur = self.pending[i] = _Pending(sentence, self.vocab, self.max_chars)
                n = min(cur.remaining - 1, steps - pos)
                a = cur.offset
                block.inputs[i, pos : pos + n] = cur.ids[a : a + n]
                block.targets[i, pos : pos + n] = cur.ids[a + 1 : a + n + 1]
                if block.chars is not None and cur.chars is not None:
                    block.chars[i, pos : pos + n] = cur.chars[a : a + n]
                block.mask[i, pos : pos + n] = True
                cur.offset += n
                pos += n
            if not block.complete and stop_at_end:
                # bilm-tf stops at the first row that runs dry and drops the whole batch.
                break
        return block

    def state_dict(self) -> dict[str, Any]:
        return {
            "stream": self.source.state_dict(),
            "rows": [None if p is None else p.tokens[p.offset :] for p in self.pending],
            "exhausted": self.exhausted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state["stream"])
        self.pending = [
            None if tokens is None else _Pending([str(t) for t in tokens], self.vocab, self.max_chars)
            for tokens in state["rows"]
        ]
        self.exhausted = bool(state["exhausted"])


class _Partition:
    """The forward and backward row streams of one data partition."""

    def __init__(
        self, shards: list[Path], rows: int, streams: dict[str, Any], vocab: Vocabulary, max_chars: int | None
    ) -> None:
        self.shards = shards
        self.forward = _RowStreams(SentenceStream(shards, reverse=False, **streams), vocab, rows, max_chars)
        self.backward = _RowStreams(SentenceStream(shards, reverse=True, **streams), vocab, rows, max_chars)


_SETTINGS = ("rows_per_partition", "partitions", "seed", "test", "shuffle_shards", "shuffle_lines")


class LMBatches:
    """bilm-tf's ``BidirectionalLMDataset.iter_batches``, resumable and partitioned.

    An iterator of dicts of int64 arrays: ``token_ids``, ``next_token_id`` [B, T],
    ``tokens_characters`` [B, T, max_chars] (training char ids, no +1; left out when
    ``max_chars`` is None) and the same three with ``_reverse`` for the backward stream,
    plus bool ``mask`` and ``mask_reverse`` [B, T] when ``drop_last`` is False.

    ``shards`` are files or glob patterns (see :func:`find_shards`); empty files are
    skipped. ``batch_size`` is the global B, dealt equally to ``partitions``; the batch
    holds the rows of ``partition_ids`` (default: all), so its first dimension is
    ``batch_size // partitions * len(partition_ids)``. ``shuffle`` (default: not
    ``test``) shuffles the shard order of every training pass; ``shuffle_lines``
    (default: ``shuffle``) shuffles the lines of every shard, as ``bin/train_elmo.py``'s
    ``shuffle_on_load=True``. Training mode never ends; test mode reads every shard once
    and ends, dropping the batch in which the data runs out unless ``drop_last`` is False.
    With several partitions in test mode the iteration ends with the first selected
    partition to run dry (``drop_last``) or the last (not ``drop_last``); ranks holding
    different partitions may therefore see different numbers of batches and must agree
    among themselves when to stop.
    """

    def __init__(
        self,
        shards: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        vocab: Vocabulary,
        batch_size: int,
        unroll_steps: int,
        max_chars: int | None = 50,
        *,
        seed: int = 0,
        test: bool = False,
        shuffle: bool | None = None,
        shuffle_lines: bool | None = None,
        drop_last: bool = True,
        partitions: int = 1,
        partition_ids: Sequence[int] | None = None,
    ) -> None:
        if batch_size < 1 or unroll_steps < 1:
            raise ValueError(
                f"batch_size and unroll_steps must be positive, found {batch_size}, {unroll_steps}"
            )
        if max_chars is not None and max_chars < 3:
            raise ValueError(f"max_chars must be at least 3, found {max_chars}")
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, found {partitions}")
        if batch_size % partitions:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {partitions} data partitions")
        files = find_shards(shards)
        self.shards = [f for f in files if f.stat().st_size > 0]
        for f in files:
            if f.stat().st_size == 0:
                log.info("%s: empty, skipped", f)
        if not self.shards:
            raise DataError(f"{_describe(files)}: the corpus is empty (every file is empty)")
        if len(self.shards) < partitions:
            raise DataError(
                f"{len(self.shards)} non-empty shard(s) cannot feed {partitions} data partitions; "
                f"split the data into at least {partitions} files"
            )
        ids = list(range(partitions)) if partition_ids is None else [int(p) for p in partition_ids]
        if not ids or len(set(ids)) != len(ids) or not all(0 <= p < partitions for p in ids):
            raise ValueError(f"partition_ids {ids} must be distinct numbers in 0..{partitions - 1}")
        self.vocab = vocab
        self.batch_size = batch_size
        self.unroll_steps = unroll_steps
        self.max_chars = max_chars
        self.seed = int(seed)
        self.test = test
        shuffle = not test if shuffle is None else shuffle
        self.shuffle_shards = shuffle and not test
        self.shuffle_lines = shuffle if shuffle_lines is None else shuffle_lines
        self.drop_last = drop_last
        self.partitions = partitions
        self.partition_ids = sorted(ids)
        self.rows_per_partition = batch_size // partitions
        self._parts = {
            p: _Partition(
                self.shards[p::partitions],
                self.rows_per_partition,
                {
                    "test": test,
                    "shuffle_shards": self.shuffle_shards,
                    "shuffle_lines": self.shuffle_lines,
                    "seed": self.seed,
                    "key": (p,),
                },
                vocab,
                max_chars,
            )
            for p in self.partition_ids
        }
        self.batches_done = 0
        self._finished = False

    @property
    def rows(self) -> int:
        """Rows of each batch this iterator yields (the selected partitions' share of B)."""
        return self.rows_per_partition * len(self.partition_ids)

    @property
    def epoch(self) -> int:
        """Passes over its shards completed by the slowest of the selected streams."""
        return min(min(p.forward.source.epoch, p.backward.source.epoch) for p in self._parts.values())

    def partition_shards(self, partition: int) -> list[Path]:
        """The shards partition ``partition`` reads."""
        return self.shards[partition :: self.partitions]

    def __iter__(self) -> LMBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._finished:
            raise StopIteration
        forward: list[_Block] = []
        backward: list[_Block] = []
        for p in self.partition_ids:
            part = self._parts[p]
            forward.append(part.forward.fill(self.unroll_steps, self.drop_last))
            backward.append(part.backward.fill(self.unroll_steps, self.drop_last))
        blocks = forward + backward
        if (self.drop_last and not all(b.complete for b in blocks)) or not any(b.mask.any() for b in blocks):
            self._finished = True
            raise StopIteration
        batch: dict[str, np.ndarray] = {}
        for suffix, parts in (("", forward), ("_reverse", backward)):
            batch["token_ids" + suffix] = np.concatenate([b.inputs for b in parts])
            if self.max_chars is not None:
                batch["tokens_characters" + suffix] = np.concatenate([b.chars for b in parts])
            batch["next_token_id" + suffix] = np.concatenate([b.targets for b in parts])
            if not self.drop_last:
                batch["mask" + suffix] = np.concatenate([b.mask for b in parts])
        self.batches_done += 1
        return batch

    # ------------------------------------------------------------------ state
    def _settings(self) -> dict[str, Any]:
        return {
            "rows_per_partition": self.rows_per_partition,
            "partitions": self.partitions,
            "seed": self.seed,
            "test": self.test,
            "shuffle_shards": self.shuffle_shards,
            "shuffle_lines": self.shuffle_lines,
        }

    def state_dict(self) -> dict[str, Any]:
        """The position of every selected partition, JSON-serialisable.

        Holds, per partition and direction, the pass number and shard order, the shard
        and line reached and every row's pending tokens.
        """
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            **self._settings(),
            "batches": self.batches_done,
            "finished": self._finished,
            "partition_state": {
                str(p): {
                    "shards": [s.name for s in part.shards],
                    "forward": part.forward.state_dict(),
                    "backward": part.backward.state_dict(),
                }
                for p, part in self._parts.items()
            },
        }

    @staticmethod
    def merge_state_dicts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        """One state holding the partitions of both (e.g. gathered from two ranks)."""
        for key in ("format", "version", *_SETTINGS):
            if a.get(key) != b.get(key):
                raise DataError(f"cannot merge data states: '{key}' is {a.get(key)!r} and {b.get(key)!r}")
        both = set(a["partition_state"]) & set(b["partition_state"])
        if both:
            raise DataError(f"cannot merge data states: both hold partition(s) {sorted(both, key=int)}")
        merged = dict(a)
        merged["partition_state"] = {**a["partition_state"], **b["partition_state"]}
        merged["batches"] = max(int(a["batches"]), int(b["batches"]))
        merged["finished"] = bool(a["finished"]) or bool(b["finished"])
        return merged

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state_dict` was taken (possibly in another process).

        ``state`` must hold every selected partition (it may hold more: a state merged
        from all ranks resumes at another world size). The batch size per partition, the
        number of partitions, the seed and the shuffling must be the ones the state was
        saved with; ``unroll_steps`` and ``max_chars`` may differ (they do not change
        the streams). On error the iterator must not be used further.
        """
        if state.get("format") != STATE_FORMAT:
            raise DataError(f"not a data pipeline state (format {state.get('format')!r})")
        if state.get("version") != STATE_VERSION:
            raise DataError(f"data pipeline state version {state.get('version')!r}; expected {STATE_VERSION}")
        mine = self._settings()
        for key in _SETTINGS:
            if state.get(key) != mine[key]:
                raise DataError(
                    f"the data state was saved with {key} = {state.get(key)!r}, "
                    f"but this run has {mine[key]!r}"
                )
        saved = state["partition_state"]
        for p, part in self._parts.items():
            if str(p) not in saved:
                raise DataError(
                    f"the data state lacks partition {p} (it holds {sorted(saved, key=int)}); "
                    "merge the states of all ranks first"
                )
            names = [s.name for s in part.shards]
            if saved[str(p)]["shards"] != names:
                raise DataError(
                    f"partition {p} reads shards {names[:3]}{' ...' if len(names) > 3 else ''} but the data "
                    f"state was saved with {saved[str(p)]['shards'][:3]}; the data changed"
                )
            for direction in ("forward", "backward"):
                if len(saved[str(p)][direction]["rows"]) != self.rows_per_partition:
                    raise DataError(f"partition {p}: the saved rows do not match {self.rows_per_partition}")
        for p, part in self._parts.items():
            part.forward.load_state_dict(saved[str(p)]["forward"])
            part.backward.load_state_dict(saved[str(p)]["backward"])
        self.batches_done = int(state["batches"])
        self._finished = bool(state["finished"])


def _describe(files: Sequence[Path]) -> str:
    return f"{', '.join(map(str, files[:3]))}{' ...' if len(files) > 3 else ''}"
