"""Training text as bilm-tf reads it: finding the files ("shards") and their tokenized lines.

A shard holds one tokenized sentence a line, tokens split on any whitespace
(``str.split``), read as UTF-8 (a leading byte order mark dropped) with universal
newlines as bilm-tf's ``open(...).readlines()`` reads them. An empty line is a sentence
of no words. The text must not hold ``<S>`` or ``</S>`` as tokens: bilm-tf adds them
itself, and a file holding one is an error naming the file and line.

Both the batch pipeline (:mod:`elmo.train.data`) and the vocabulary builder
(:mod:`elmo.train.vocab`) read text through this module.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from elmo.chars import BOS_TOKEN, EOS_TOKEN
from elmo.errors import DataError
from elmo.files import LINE_CAP

__all__ = [
    "count_tokens",
    "find_shards",
    "iter_lines",
    "read_lines",
    "read_sentences",
    "split_line",
]


def find_shards(patterns: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The files matched by one or more glob patterns, without repeats, sorted by path.

    An existing file is taken as it is, even if its name holds glob characters.
    ``**`` matches directories recursively and ``~`` is expanded. Raises
    :class:`DataError` naming a pattern that matches no file.
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    patterns = list(patterns)
    if not patterns:
        raise DataError("no data files given")
    found: set[Path] = set()
    for pattern in patterns:
        text = os.path.expanduser(os.fspath(pattern))
        if os.path.isfile(text):
            matches = [text]
        else:
            hits = glob.glob(text, recursive=True)
            matches = [m for m in hits if os.path.isfile(m)]
            if not matches:
                if not hits:
                    why = "matches no file"
                elif all(os.path.isdir(m) for m in hits):
                    why = "matches only directories (give a pattern such as DIR/*.txt)"
                else:
                    why = "matches no regular file (a device, a pipe or a directory is not read)"
                raise DataError(f"{pattern}: {why}")
        found.update(Path(m) for m in matches)
    return sorted(found, key=str)


def _decode_error(path: Path, error: UnicodeDecodeError) -> DataError:
    # Text-mode reading decodes in chunks, so the failing line is found again byte-wise.
    number = 0
    try:
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):  # noqa: B007 - the number is the result
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    break
    except OSError:
        pass
    return DataError(f"{path}, line {number}: not UTF-8 text ({error.reason})")


def split_line(line: str, path: Path, number: int) -> list[str]:
    """The tokens of line ``number`` of ``path``; :class:`DataError` if it holds a sentence marker."""
    tokens = line.split()
    # The substring test is cheap and almost always false; only then look at the tokens.
    if "S>" in line and (BOS_TOKEN in tokens or EOS_TOKEN in tokens):
        marker = BOS_TOKEN if BOS_TOKEN in tokens else EOS_TOKEN
        raise DataError(
            f"{path}, line {number}: holds the token {marker}; the sentence markers <S> and </S> are added "
            "to every line, so the text must not contain them"
        )
    return tokens


def _lines(f: IO[str], path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of an open text file, each line at most LINE_CAP long."""
    for number, line in enumerate(iter(lambda: f.readline(LINE_CAP + 1), ""), start=1):
        if len(line) > LINE_CAP:
            raise DataError(
                f"{path}, line {number}: longer than {LINE_CAP // 2**20} MiB; expected one sentence a line"
            )
        yield number, line


def read_lines(path: Path) -> list[str]:
    """Every line of a text file as bilm-tf's ``readlines()`` gives it (not yet split)."""
    try:
        with path.open(encoding="utf-8-sig") as f:
            return [line for _, line in _lines(f, path)]
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def iter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, list[str]]]:
    """``(line number, tokens)`` of every line of a text file, streamed.

    Raises :class:`DataError` for a line that is not UTF-8, holds ``<S>``/``</S>`` or is
    longer than :data:`elmo.files.LINE_CAP`.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig") as f:
            for number, line in _lines(f, path):
                yield number, split_line(line, path, number)
    except UnicodeDecodeError as e:
        raise _decode_error(path, e) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def read_sentences(files: Iterable[str | os.PathLike[str]]) -> Iterator[list[str]]:
    """The token list of every line of ``files``, in order (an empty line gives ``[]``)."""
    for path in files:
        for _, tokens in iter_lines(path):
            yield tokens


def count_tokens(files: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> int:
    """Number of tokens (words, without sentence markers) in the files or glob patterns.

    This is what bilm-tf's ``n_train_tokens`` option means.
    """
    return sum(len(tokens) for path in find_shards(files) for _, tokens in iter_lines(path))
