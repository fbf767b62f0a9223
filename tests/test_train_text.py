"""Training text files: finding shards and reading their tokenized lines (elmo.train.text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import BILMTF, needs_shared
from elmo.errors import DataError
from elmo.train.text import count_tokens, find_shards, iter_lines, read_sentences

DATA = BILMTF / "train" / "data.txt"


@pytest.fixture
def shards(tmp_path) -> list[Path]:
    paths = []
    for k in range(5):
        path = tmp_path / f"shard-{k:02d}.txt"
        path.write_text(f"sentence {k}\n", encoding="utf-8")
        paths.append(path)
    return paths


def test_find_shards(tmp_path, shards):
    assert find_shards(str(tmp_path / "shard-*.txt")) == shards
    assert find_shards([shards[3], str(tmp_path / "shard-0[01].txt"), shards[0]]) == [
        shards[0],
        shards[1],
        shards[3],
    ]
    odd = tmp_path / "odd[1].txt"
    odd.write_text("x\n")
    assert find_shards(odd) == [odd]
    with pytest.raises(DataError, match=r"nothing-\*\.txt: matches no file"):
        find_shards([str(shards[0]), str(tmp_path / "nothing-*.txt")])
    with pytest.raises(DataError, match="only directories"):
        find_shards(str(tmp_path))
    with pytest.raises(DataError, match="no data files"):
        find_shards([])


def test_iter_lines_numbers_lines_and_drops_the_byte_order_mark(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffa b\n\n  c  \n".encode())
    assert list(iter_lines(path)) == [(1, ["a", "b"]), (2, []), (3, ["c"])]


@needs_shared(DATA)
def test_count_tokens_and_read_sentences():
    assert count_tokens(DATA) == 134
    sentences = list(read_sentences(find_shards(DATA)))
    assert len(sentences) == 5 and sentences[1] == "these models make use of neural networks .".split()


def test_a_line_over_the_cap_is_refused_naming_file_and_line(tmp_path, monkeypatch):
    """A file with no line breaks (or a binary one) is not read into memory whole."""
    import elmo.train.text

    monkeypatch.setattr(elmo.train.text, "LINE_CAP", 100)
    path = tmp_path / "one-long-line.txt"
    path.write_text("a b\n" + "w " * 60 + "\nc\n", encoding="utf-8")
    message = r"one-long-line\.txt, line 2: longer than .*; expected one sentence a line"
    with pytest.raises(DataError, match=message):
        list(iter_lines(path))
    with pytest.raises(DataError, match=r"one-long-line\.txt, line 2: longer than"):
        elmo.train.text.read_lines(path)
    short = tmp_path / "short.txt"
    short.write_text("a b\n" + "w " * 49 + "\n", encoding="utf-8")  # 99 characters and the newline
    assert [n for n, _ in iter_lines(short)] == [1, 2]
    assert len(elmo.train.text.read_lines(short)) == 2
