"""bilm-tf's training vocabulary, training character ids and ``elmo vocab``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import BILMTF, needs_shared
from elmo.chars import token_to_char_ids
from elmo.commands.vocab import configure, run
from elmo.errors import DataError, VocabularyError
from elmo.train.vocab import (
    Vocabulary,
    build_vocab,
    token_counts,
    vocab_from_counts,
    word_to_char_ids,
)

DATA = BILMTF / "train" / "data.txt"
VOCAB = BILMTF / "train" / "vocab.txt"
needs_fixture_text = needs_shared(BILMTF / "train")


@needs_fixture_text
def test_reads_the_bilm_tf_fixture_vocabulary():
    lines = VOCAB.read_text(encoding="utf-8").split()
    vocab = Vocabulary.from_file(VOCAB)
    assert vocab.size == len(vocab) == 32
    assert vocab.words == lines
    assert (vocab.bos, vocab.eos, vocab.unk) == (0, 1, 2)
    assert vocab.word_to_id("of") == 3 and vocab.id_to_word(3) == "of"
    assert vocab.word_to_id("never-seen") == vocab.unk
    assert "the" in vocab and "nope" not in vocab


def test_ids_are_line_indices(tmp_path):
    path = tmp_path / "v.txt"
    # Specials may be anywhere; !!!MAXTERMID uses no id; lines are stripped.
    path.write_bytes(b"\xef\xbb\xbfthe\n  <UNK>  \n!!!MAXTERMID\n</S>\r\n<S>\nof")
    vocab = Vocabulary.from_file(path)
    assert vocab.words == ["the", "<UNK>", "</S>", "<S>", "of"]
    assert (vocab.bos, vocab.eos, vocab.unk) == (3, 2, 1)
    out = tmp_path / "saved.txt"
    vocab.save(out)
    assert out.read_text() == "the\n<UNK>\n</S>\n<S>\nof\n"
    assert Vocabulary.from_file(out).words == vocab.words


@needs_fixture_text
def test_encode_as_bilm_tf():
    vocab = Vocabulary.from_file(VOCAB)
    words = "the neural zebra net".split()
    ids = [vocab.word_to_id(w) for w in words]
    assert vocab.encode(words) == [0, *ids, 1]
    assert vocab.encode(" ".join(words)) == [0, *ids, 1]
    # As bilm-tf: the caller reverses the tokens, encode(reverse=True) swaps the markers.
    assert vocab.encode(words[::-1], reverse=True) == [1, *ids[::-1], 0]
    assert vocab.encode([]) == [0, 1]
    chars = vocab.encode_chars(words[::-1], max_chars=10, reverse=True)
    assert chars.shape == (6, 10) and chars.dtype == np.int32
    assert chars[0].tolist() == list(word_to_char_ids("</S>", 10))
    assert chars[1].tolist() == list(word_to_char_ids("net", 10))
    assert chars[-1].tolist() == list(word_to_char_ids("<S>", 10))


def test_training_char_ids():
    assert word_to_char_ids("<S>", 6) == (258, 256, 259, 260, 260, 260)
    assert word_to_char_ids("</S>", 6) == (258, 257, 259, 260, 260, 260)
    # <UNK> is spelled out (bilm-tf's "TODO: properly handle <UNK>"); so are OOV words.
    assert word_to_char_ids("<UNK>", 8) == (258, *b"<UNK>", 259, 260)
    assert word_to_char_ids("ab", 6) == (258, 97, 98, 259, 260, 260)
    # Cut to max_chars - 2 bytes, inside a multi-byte character if need be.
    assert word_to_char_ids("abcdéfghij", 10) == (258, *"abcdéfg".encode()[:8], 259)
    assert word_to_char_ids("é", 3) == (258, 0xC3, 259)
    for token in ("<S>", "</S>", "<UNK>", "naïve", "x" * 80, "日本語"):
        assert [c - 1 for c in token_to_char_ids(token, 50)] == list(word_to_char_ids(token, 50))
    with pytest.raises(ValueError, match="at least 3"):
        word_to_char_ids("a", 2)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("<S>\n</S>\nthe\n", r"lacks <UNK>"),
        ("the\nof\n", r"lacks <S>, </S>, <UNK>"),
        ("<S>\n</S>\n<UNK>\n\nthe\n", r"line 4: empty line"),
        ("<S>\n</S>\n<UNK>\nthe 12\n", r"line 4: 'the 12' has whitespace inside"),
    ],
)
def test_bad_vocabulary_files(tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(VocabularyError, match=match) as e:
        Vocabulary.from_file(path)
    assert str(path) in str(e.value)


def test_more_vocabulary_errors(tmp_path, caplog):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"<S>\n</S>\n<UNK>\ncaf\xe9\n")
    with pytest.raises(VocabularyError, match="line 4: not UTF-8"):
        Vocabulary.from_file(path)
    with pytest.raises(VocabularyError, match=r"missing\.txt: vocabulary not found"):
        Vocabulary.from_file(tmp_path / "missing.txt")
    # A repeated token is accepted as bilm-tf accepts it (the later id wins), with a warning.
    with caplog.at_level(logging.WARNING):
        vocab = Vocabulary(["<S>", "</S>", "<UNK>", "a", "b", "a"])
    assert vocab.word_to_id("a") == 5 and vocab.size == 6
    assert "ids 3 and 5" in caplog.text


# --------------------------------------------------------------------------- building
def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_build_vocab_order_and_cuts(tmp_path):
    a = _write(tmp_path / "a.txt", "b a c\nd b a\n\n")
    b = _write(tmp_path / "b.txt", "a e <UNK> <UNK> <UNK> <UNK>\n")
    # a: 3, b: 2, then c, d, e once each in order of first occurrence; <UNK> keeps its place.
    assert build_vocab([a, b]) == ["<S>", "</S>", "<UNK>", "a", "b", "c", "d", "e"]
    assert build_vocab([a, b], min_count=2) == ["<S>", "</S>", "<UNK>", "a", "b"]
    assert build_vocab([a, b], max_size=6) == ["<S>", "</S>", "<UNK>", "a", "b", "c"]
    assert build_vocab(a) == ["<S>", "</S>", "<UNK>", "b", "a", "c", "d"]
    counts = token_counts([a, b])
    assert counts["a"] == 3 and counts["<UNK>"] == 4
    with pytest.raises(ValueError, match="min_count"):
        vocab_from_counts(counts, min_count=0)
    with pytest.raises(ValueError, match="max_size"):
        vocab_from_counts(counts, max_size=2)


@needs_fixture_text
def test_build_vocab_matches_the_fixture_words():
    built = build_vocab([DATA], min_count=2)
    fixture = Vocabulary.from_file(VOCAB).words
    assert built[:3] == fixture[:3] and sorted(built) == sorted(fixture)
    counts = token_counts([DATA])
    # Descending frequency, as the sampler needs.
    assert [counts[w] for w in built[3:]] == sorted((counts[w] for w in built[3:]), reverse=True)


def test_build_vocab_errors(tmp_path):
    with pytest.raises(DataError, match="no text files"):
        build_vocab([])
    empty = _write(tmp_path / "empty.txt", "\n \n")
    with pytest.raises(DataError, match="no tokens"):
        build_vocab([empty])
    bad = _write(tmp_path / "bad.txt", "ok\nnot <S> ok\n")
    with pytest.raises(DataError, match=r"bad\.txt, line 2: holds the token <S>"):
        build_vocab([bad])


# --------------------------------------------------------------------------- CLI
def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    configure(p)
    return p.parse_args(argv)


def test_cli_writes_the_vocabulary(tmp_path, capsys):
    for k, text in enumerate(["x y y\nz y\n", "x q\n"]):
        _write(tmp_path / f"part-{k}.txt", text)
    out = tmp_path / "vocab.txt"
    out.write_text("old\n")
    assert run(_args(str(tmp_path / "part-*.txt"), "-o", str(out), "--min-count", "2")) == 0
    assert out.read_text() == "<S>\n</S>\n<UNK>\ny\nx\n"
    assert not list(tmp_path.glob(".vocab.txt*"))  # no temporary file left behind
    err = capsys.readouterr().err
    assert "7 tokens" in err and "4 distinct" in err and "2 file(s)" in err and "5 entries" in err
    assert "71.43%" in err  # x and y: 5 of 7 tokens
    assert Vocabulary.from_file(out).size == 5
    run(_args(str(tmp_path / "part-0.txt"), "-o", str(out), "--max-size", "4"))
    assert out.read_text().split() == ["<S>", "</S>", "<UNK>", "y"]


def test_cli_errors(tmp_path):
    with pytest.raises(DataError, match="matches no file"):
        run(_args(str(tmp_path / "none-*.txt"), "-o", str(tmp_path / "v.txt")))
    _write(tmp_path / "blank.txt", "\n")
    with pytest.raises(DataError, match="no tokens"):
        run(_args(str(tmp_path / "blank.txt"), "-o", str(tmp_path / "v.txt")))
    assert not (tmp_path / "v.txt").exists()
    with pytest.raises(SystemExit):
        _args("-o", "v.txt")


def test_vocabulary_size_cap_and_special_files(tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(10 * 2**30)  # sparse: refused from its size, without reading it
    with pytest.raises(VocabularyError, match=r"big\.txt: vocabulary of 10240 MiB, larger than the 1024 MiB"):
        Vocabulary.from_file(big)
    with pytest.raises(VocabularyError, match=r"^/dev/zero: is a character device; expected the vocabulary"):
        Vocabulary.from_file("/dev/zero")
    with pytest.raises(VocabularyError, match=r": is a directory; expected the vocabulary"):
        Vocabulary.from_file(tmp_path)
