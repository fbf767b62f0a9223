"""The training data pipeline: bilm-tf's batches exactly, exact resume, partitions, errors."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import BILMTF, needs_shared
from elmo.errors import DataError
from elmo.train import data as data_module
from elmo.train.data import LMBatches, SentenceStream
from elmo.train.text import count_tokens, read_sentences
from elmo.train.vocab import Vocabulary

DATA = BILMTF / "train" / "data.txt"
VOCAB = BILMTF / "train" / "vocab.txt"
PIPELINE = BILMTF / "generated" / "data_pipeline"
# Every test reads the bilm-tf training fixture text, vocabulary or batches.
pytestmark = needs_shared(BILMTF)
KEYS = (
    "token_ids",
    "tokens_characters",
    "next_token_id",
    "token_ids_reverse",
    "tokens_characters_reverse",
    "next_token_id_reverse",
)


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.from_file(VOCAB)


@pytest.fixture
def shards(tmp_path) -> list[Path]:
    """Five shards of sentences of mixed lengths (with OOV words and an empty line)."""
    words = DATA.read_text(encoding="utf-8").split()
    rng = np.random.default_rng(0)
    paths = []
    for k in range(5):
        lines = []
        for _ in range(4 + k):
            n = int(rng.integers(0, 9))
            lines.append(" ".join(words[int(i)] for i in rng.integers(0, len(words), n)))
        lines.append(f"oov-{k} zzz")
        path = tmp_path / f"shard-{k:02d}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def _take(it, n: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(it, n))


def _assert_same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"batch {k}, {key}")


def _roundtrip(state: dict) -> dict:
    # Through JSON text, as a checkpoint stores it: proves it is JSON-serialisable.
    return json.loads(json.dumps(state))


# --------------------------------------------------------------------------- bilm-tf fixtures
@pytest.mark.parametrize(
    ("name", "batch_size", "steps", "chars", "test"),
    [
        ("train_mode_bs3_unroll5_chars50", 3, 5, 50, False),
        ("train_mode_bs3_unroll5_chars10", 3, 5, 10, False),
        ("test_mode_bs3_unroll5_chars50", 3, 5, 50, True),
        ("test_mode_bs1_unroll1_chars50", 1, 1, 50, True),
    ],
)
def test_reproduces_bilm_tf_batches(vocab, name, batch_size, steps, chars, test):
    expected = np.load(PIPELINE / f"{name}.npz")
    meta = json.loads((PIPELINE / "batches_meta.json").read_text())[name]
    assert (meta["batch_size"], meta["unroll_steps"], meta["max_word_length"]) == (batch_size, steps, chars)
    n = expected["token_ids"].shape[0]
    it = LMBatches(DATA, vocab, batch_size, steps, chars, test=test, shuffle=False)
    got = _take(it, n + 5)
    # Training mode never ends; test mode ends where bilm-tf ends (incomplete batch dropped).
    assert len(got) == (n + 5 if not test else n)
    for key in KEYS:
        np.testing.assert_array_equal(np.stack([g[key] for g in got[:n]]), expected[key], err_msg=key)
    assert set(got[0]) == set(KEYS)
    assert got[0]["token_ids"].dtype == np.int64


def test_reproduces_training_run_batches(vocab):
    run = BILMTF / "generated" / "run_small_fullsoftmax_nodropout"
    options = json.loads((run / "options.json").read_text())
    expected = np.load(run / "train_batches.npz")
    batch_size, steps = options["batch_size"], options["unroll_steps"]
    chars = options["char_cnn"]["max_characters_per_token"]
    assert (batch_size, steps, chars) == (2, 10, 10)
    n = expected["token_ids"].shape[0]
    got = _take(LMBatches(DATA, vocab, batch_size, steps, chars, shuffle=False), n)
    for key in KEYS:
        np.testing.assert_array_equal(np.stack([g[key] for g in got]), expected[key], err_msg=key)


def test_bs1_test_mode_scores_every_target(vocab):
    got = list(LMBatches(DATA, vocab, 1, 1, 50, test=True))
    assert len(got) == count_tokens(DATA) + len(list(read_sentences([DATA]))) == 139
    assert [int(b["next_token_id"][0, 0]) for b in got].count(vocab.eos) == 5
    assert [int(b["next_token_id_reverse"][0, 0]) for b in got].count(vocab.bos) == 5


def test_without_chars(vocab):
    batch = next(LMBatches(DATA, vocab, 2, 3, None))
    assert set(batch) == {"token_ids", "next_token_id", "token_ids_reverse", "next_token_id_reverse"}


# --------------------------------------------------------------------------- streams
def test_sentence_stream_directions_and_passes(shards):
    lines = [line.split() for s in shards for line in s.read_text().splitlines()]
    fwd = SentenceStream(shards, shuffle_shards=True, shuffle_lines=True, seed=3)
    bwd = SentenceStream(shards, reverse=True, shuffle_shards=True, shuffle_lines=True, seed=3)
    first = [fwd.next_sentence() for _ in lines]
    second = [fwd.next_sentence() for _ in lines]
    back = [bwd.next_sentence() for _ in lines]
    assert fwd.epoch == 1
    expected = sorted(["<S>", *t, "</S>"] for t in lines)
    # Every pass reads every line once, in a new order.
    assert sorted(first) == sorted(second) == expected
    assert first != second
    assert sorted(back) == sorted(["</S>", *reversed(t), "<S>"] for t in lines)
    # The backward stream shuffles on its own.
    assert [s[1:-1] for s in first] != [list(reversed(s[1:-1])) for s in back]


def test_test_mode_reads_each_shard_once_in_order(shards):
    stream = SentenceStream(list(reversed(shards)), test=True, shuffle_lines=False)
    got = list(stream)
    expected = [
        ["<S>", *line.split(), "</S>"] for s in reversed(shards) for line in s.read_text().splitlines()
    ]
    assert got == expected
    assert stream.next_sentence() is None


def test_one_shard_in_memory_at_a_time(shards, monkeypatch):
    reads: list[Path] = []
    real = data_module.read_lines

    def spy(path: Path) -> list[str]:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(data_module, "read_lines", spy)
    stream = SentenceStream(shards, shuffle_shards=True, seed=1)
    stream.next_sentence()
    assert len(reads) == 1
    for _ in range(len(shards[0].read_text().splitlines()) + 1):
        stream.next_sentence()
    assert 1 < len(reads) <= 3


def test_shuffling_depends_on_seed_and_directions_differ(shards, vocab):
    a = _take(LMBatches(shards, vocab, 2, 4, 10, seed=1), 5)
    b = _take(LMBatches(shards, vocab, 2, 4, 10, seed=2), 5)
    assert any(not np.array_equal(x["token_ids"], y["token_ids"]) for x, y in zip(a, b))
    # Without shuffling, row 0 holds the same first sentence in both directions.
    plain = next(LMBatches(shards, vocab, 2, 4, 10, shuffle=False))
    words = shards[0].read_text().splitlines()[0].split()
    k = min(4, len(words) + 1)
    assert plain["next_token_id"][0, :k].tolist() == vocab.encode(words)[1 : k + 1]
    assert (
        plain["next_token_id_reverse"][0, :k].tolist() == vocab.encode(words[::-1], reverse=True)[1 : k + 1]
    )


# --------------------------------------------------------------------------- resume
def _resume_check(make, cut: int, more: int) -> LMBatches:
    full = make()
    expected = _take(full, cut + more)
    first = make()
    _take(first, cut)
    state = _roundtrip(first.state_dict())
    resumed = make()
    resumed.load_state_dict(state)
    _assert_same(_take(resumed, more), expected[cut:])
    return full


def test_exact_resume(shards, vocab):
    full = _resume_check(lambda: LMBatches(shards, vocab, 3, 4, 12, seed=7), cut=7, more=10)
    assert full.batches_done == 17


def test_exact_resume_across_epochs_with_shuffling(shards, vocab):
    def make():
        return LMBatches(shards[:2], vocab, 2, 5, 8, seed=11, shuffle=True)

    probe = make()
    epochs = []
    for _ in range(40):
        next(probe)
        epochs.append(probe.epoch)
    assert epochs[-1] >= 2
    boundary = epochs.index(1)
    # Cut before, at and after the first pass boundary, then well into the third pass.
    for cut in sorted({boundary - 1, boundary, boundary + 1, 7, 25}):
        _resume_check(make, cut=cut, more=10)


def test_exact_resume_with_partitions_and_test_mode(shards, vocab):
    _resume_check(lambda: LMBatches(shards, vocab, 4, 3, 6, seed=5, partitions=2), cut=7, more=10)
    _resume_check(lambda: LMBatches(shards, vocab, 2, 3, 6, test=True, drop_last=False), cut=7, more=5)


def test_resume_after_the_end(vocab):
    it = LMBatches(DATA, vocab, 3, 5, 50, test=True)
    list(it)
    again = LMBatches(DATA, vocab, 3, 5, 50, test=True)
    again.load_state_dict(_roundtrip(it.state_dict()))
    assert list(again) == []


def test_state_errors(shards, vocab, tmp_path):
    it = LMBatches(shards, vocab, 4, 3, 6, seed=5, partitions=2)
    _take(it, 3)
    state = _roundtrip(it.state_dict())
    with pytest.raises(DataError, match="seed"):
        LMBatches(shards, vocab, 4, 3, 6, seed=6, partitions=2).load_state_dict(state)
    with pytest.raises(DataError, match="rows_per_partition"):
        LMBatches(shards, vocab, 6, 3, 6, seed=5, partitions=2).load_state_dict(state)
    with pytest.raises(DataError, match="format"):
        LMBatches(shards, vocab, 4, 3, 6, seed=5, partitions=2).load_state_dict({"format": "x"})
    only0 = LMBatches(shards, vocab, 4, 3, 6, seed=5, partitions=2, partition_ids=[0])
    with pytest.raises(DataError, match="lacks partition 1"):
        LMBatches(shards, vocab, 4, 3, 6, seed=5, partitions=2, partition_ids=[1]).load_state_dict(
            only0.state_dict()
        )
    with pytest.raises(DataError, match="both hold"):
        LMBatches.merge_state_dicts(state, state)
    # Unroll steps and char width may change across a resume: they do not change the streams.
    wider = LMBatches(shards, vocab, 4, 7, 9, seed=5, partitions=2)
    wider.load_state_dict(state)
    assert next(wider)["tokens_characters"].shape == (4, 7, 9)
    # A shard that changed under the run is noticed.
    pos = state["partition_state"]["0"]["forward"]["stream"]
    changed = shards[0::2][pos["order"][pos["shard"]]]
    changed.write_text(changed.read_text() + "one more line\n")
    with pytest.raises(DataError, match="data changed"):
        LMBatches(shards, vocab, 4, 3, 6, seed=5, partitions=2).load_state_dict(state)


# --------------------------------------------------------------------------- partitions
def _rows(batch: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: v[start:stop] for k, v in batch.items()}


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_partitions_split_the_global_batch(shards, vocab):
    def make(ids=None, partitions=2, bs=4):
        return LMBatches(shards, vocab, bs, 3, 7, seed=9, partitions=partitions, partition_ids=ids)

    whole = _take(make(), 12)
    ranks = [_take(make([0]), 12), _take(make([1]), 12)]
    assert whole[0]["token_ids"].shape == (4, 3) and ranks[0][0]["token_ids"].shape == (2, 3)
    _assert_same(whole, [_concat([a, b]) for a, b in zip(*ranks)])
    # World size 2 with 4 partitions: rank r reads partitions r and r + 2.
    whole = _take(make(partitions=4, bs=8), 10)
    r0, r1 = _take(make([0, 2], 4, 8), 10), _take(make([1, 3], 4, 8), 10)
    glued = [
        _concat([_rows(a, 0, 2), _rows(b, 0, 2), _rows(a, 2, 4), _rows(b, 2, 4)]) for a, b in zip(r0, r1)
    ]
    _assert_same(whole, glued)
    # Shard i goes to partition i % P.
    it = make(partitions=4, bs=8)
    assert it.partition_shards(1) == [shards[1]] and it.partition_shards(0) == [shards[0], shards[4]]


def test_partition_states_merge_and_resume_at_another_world_size(shards, vocab):
    def make(ids=None):
        return LMBatches(shards, vocab, 4, 3, 7, seed=9, partitions=2, partition_ids=ids)

    expected = _take(make(), 15)
    ranks = [make([0]), make([1])]
    for r in ranks:
        _take(r, 6)
    merged = LMBatches.merge_state_dicts(_roundtrip(ranks[0].state_dict()), _roundtrip(ranks[1].state_dict()))
    single = make()
    single.load_state_dict(merged)
    _assert_same(_take(single, 9), expected[6:])
    # And back: one process's state split over two ranks.
    one = make()
    _take(one, 4)
    state = _roundtrip(one.state_dict())
    parts = []
    for p in (0, 1):
        rank = make([p])
        rank.load_state_dict(state)
        parts.append(_take(rank, 5))
    _assert_same([_concat([a, b]) for a, b in zip(*parts)], expected[4:9])


def test_partition_errors(shards, vocab):
    with pytest.raises(DataError, match="cannot feed 6 data partitions"):
        LMBatches(shards, vocab, 6, 3, 7, partitions=6)
    with pytest.raises(ValueError, match="not divisible"):
        LMBatches(shards, vocab, 5, 3, 7, partitions=2)
    with pytest.raises(ValueError, match="partition_ids"):
        LMBatches(shards, vocab, 4, 3, 7, partitions=2, partition_ids=[2])
    with pytest.raises(ValueError, match="partition_ids"):
        LMBatches(shards, vocab, 4, 3, 7, partitions=2, partition_ids=[0, 0])


# --------------------------------------------------------------------------- drop_last=False
def _scored_sentences(batches, suffix: str, start_id: int, end_id: int) -> Counter:
    """Per row, the targets at unmasked positions, cut into sentences after each end marker."""
    rows = batches[0]["next_token_id" + suffix].shape[0]
    found: Counter = Counter()
    for r in range(rows):
        stream = np.concatenate([b["next_token_id" + suffix][r][b["mask" + suffix][r]] for b in batches])
        inputs = np.concatenate([b["token_ids" + suffix][r][b["mask" + suffix][r]] for b in batches])
        # Within a row the stream is continuous: each input is the previous target, or a
        # new sentence's start marker after an end marker.
        assert inputs[0] == start_id
        np.testing.assert_array_equal(inputs[1:], np.where(stream[:-1] == end_id, start_id, stream[:-1]))
        current: list[int] = []
        for t in stream.tolist():
            current.append(t)
            if t == end_id:
                found[tuple(current)] += 1
                current = []
        assert current == []
    return found


@pytest.mark.parametrize(("batch_size", "steps", "partitions"), [(3, 5, 1), (2, 4, 1), (4, 3, 2), (1, 7, 1)])
def test_padded_test_mode_scores_every_target_once(shards, vocab, batch_size, steps, partitions):
    files = [DATA, *shards]
    batches = list(
        LMBatches(files, vocab, batch_size, steps, 10, test=True, drop_last=False, partitions=partitions)
    )
    sentences = list(read_sentences(files))
    forward = Counter(tuple(vocab.encode(s)[1:]) for s in sentences)
    backward = Counter(tuple(vocab.encode(s[::-1], reverse=True)[1:]) for s in sentences)
    assert _scored_sentences(batches, "", vocab.bos, vocab.eos) == forward
    assert _scored_sentences(batches, "_reverse", vocab.eos, vocab.bos) == backward
    total = count_tokens(files) + len(sentences)
    assert sum(int(b["mask"].sum()) for b in batches) == total
    assert sum(int(b["mask_reverse"].sum()) for b in batches) == total
    # Masked positions hold zeros; the last batch is not entirely masked.
    for b in batches:
        assert not b["token_ids"][~b["mask"]].any() and not b["tokens_characters"][~b["mask"]].any()
    assert batches[-1]["mask"].any() or batches[-1]["mask_reverse"].any()


def test_padded_test_mode_starts_like_bilm_tf(vocab):
    expected = np.load(PIPELINE / "test_mode_bs3_unroll5_chars50.npz")
    batches = list(LMBatches(DATA, vocab, 3, 5, 50, test=True, drop_last=False))
    assert len(batches) > 5
    for key in KEYS:
        np.testing.assert_array_equal(np.stack([b[key] for b in batches[:5]]), expected[key])
    assert all(b["mask"].all() and b["mask_reverse"].all() for b in batches[:5])
    assert sum(int(b["mask"].sum()) for b in batches) == 139


# --------------------------------------------------------------------------- files and errors
def test_empty_shards_are_skipped_and_empty_corpus_is_an_error(tmp_path, vocab):
    empty = tmp_path / "a-empty.txt"
    empty.write_text("")
    with_empty = _take(LMBatches([empty, DATA], vocab, 3, 5, 50, test=True), 10)
    _assert_same(with_empty, _take(LMBatches(DATA, vocab, 3, 5, 50, test=True), 10))
    other = tmp_path / "b-empty.txt"
    other.write_text("")
    with pytest.raises(DataError, match="corpus is empty"):
        LMBatches(str(tmp_path / "*-empty.txt"), vocab, 3, 5, 50)
    # A stream whose shards turn out empty does not loop forever.
    with pytest.raises(DataError, match="no sentences"):
        SentenceStream([empty, other]).next_sentence()


def test_blank_lines_are_empty_sentences(tmp_path, vocab):
    path = tmp_path / "blank.txt"
    path.write_text("\n  \nof\n")
    got = list(LMBatches(path, vocab, 1, 1, 5, test=True))
    assert [int(b["token_ids"][0, 0]) for b in got] == [
        vocab.bos,
        vocab.bos,
        vocab.bos,
        vocab.word_to_id("of"),
    ]
    assert list(read_sentences([path])) == [[], [], ["of"]]


def test_markers_in_text_are_errors(tmp_path, vocab):
    path = tmp_path / "markers.txt"
    path.write_text("fine line\nno <S>S> here\nthis has </S> inside\n")
    with pytest.raises(DataError, match=r"markers\.txt, line 3: holds the token </S>"):
        list(read_sentences([path]))
    with pytest.raises(DataError, match=r"line 3"):
        list(LMBatches(path, vocab, 1, 4, 8, test=True))


def test_not_utf8_is_an_error_naming_the_line(tmp_path, vocab):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"one\ntwo\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"latin1\.txt, line 3: not UTF-8"):
        count_tokens(path)
    with pytest.raises(DataError, match=r"line 3: not UTF-8"):
        next(LMBatches(path, vocab, 1, 4, 8))
