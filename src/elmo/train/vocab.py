"""bilm-tf's training vocabulary, its character ids, and building one (what ``elmo vocab`` runs).

A vocabulary file holds one token a line; a token's id is its line index (each line is
stripped of surrounding whitespace). bilm-tf's ``!!!MAXTERMID`` marker line is skipped and
uses no id. ``<S>``, ``</S>`` and ``<UNK>`` must be present (anywhere; ``elmo vocab`` puts
them first) and give the ``bos``, ``eos`` and ``unk`` ids. The bilm-tf README also asks
for the other words to be sorted by descending frequency: its log-uniform negative
sampler assumes that order.

Stricter than bilm-tf, an empty line, a line with whitespace inside (a frequency column,
say: bilm-tf would take ``the 1234`` as one token and silently map every ``the`` to
``<UNK>``) and a line that is not UTF-8 are errors naming the line. A repeated token is
accepted as bilm-tf accepts it (the later line wins its id; the earlier id is never a
target) with a warning.

Training character ids are bilm-tf's ``UnicodeCharsVocabulary`` ids, *without* the +1
shift that inference (:mod:`elmo.chars`) adds: bytes 0-255, ``<S>`` char 256, ``</S>``
char 257, begin-of-word 258, end-of-word 259, padding 260 (so ``n_characters`` is 261).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from elmo.atomic import write_text_atomic
from elmo.chars import BOS_TOKEN, EOS_TOKEN, token_to_char_ids
from elmo.errors import DataError, VocabularyError
from elmo.files import VOCAB_CAP, read_bytes_capped
from elmo.train.text import iter_lines

__all__ = [
    "MAXTERMID",
    "SPECIAL_TOKENS",
    "UNK_TOKEN",
    "Vocabulary",
    "build_vocab",
    "token_counts",
    "vocab_from_counts",
    "word_to_char_ids",
    "write_vocab",
]

log = logging.getLogger(__name__)

UNK_TOKEN = "<UNK>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
MAXTERMID = "!!!MAXTERMID"


# --------------------------------------------------------------------------- chars
# Bounded: a long run meets millions of distinct (mostly rare) tokens; each entry is a
# tuple of max_chars ints, so 2**17 entries stay well under 100 MB at 50 chars.
@lru_cache(maxsize=2**17)
def word_to_char_ids(word: str, max_chars: int = 50) -> tuple[int, ...]:
    """The ``max_chars`` training character ids of ``word`` (bilm-tf's, no +1 shift).

    ``[258, bytes..., 259, 260, 260, ...]`` with the UTF-8 bytes cut to ``max_chars - 2``
    (possibly inside a multi-byte character, as bilm-tf cuts them). ``<S>`` and ``</S>``
    get the sentence-marker rows ``[258, 256|257, 259, 260...]``, as bilm-tf's vocabulary
    rows for them. ``<UNK>`` is spelled out like any word: bilm-tf leaves its row as the
    spelling of the string "<UNK>" (its "TODO: properly handle <UNK>"), and an
    out-of-vocabulary word keeps its own spelling (only its *target* id becomes ``unk``).
    """
    if max_chars < 3:
        raise ValueError(f"max_chars must be at least 3 (begin, one char, end of word), found {max_chars}")
    # The inference ids of elmo.chars, one lower: one spelling rule for both.
    return tuple(c - 1 for c in token_to_char_ids(word, max_chars))


# --------------------------------------------------------------------------- vocabulary
class Vocabulary:
    """bilm-tf's ``Vocabulary``: token ids by position, OOV tokens map to ``<UNK>``.

    ``words`` is the list of tokens by id. Construct with :meth:`from_file` or from a
    word list (``source`` only names it in error messages).
    """

    def __init__(self, words: Sequence[str], source: str = "vocabulary") -> None:
        self._words = [w for w in words if w != MAXTERMID]
        self._source = source
        self._ids: dict[str, int] = {}
        first: dict[str, int] = {}
        for i, word in enumerate(self._words):
            if word in self._ids:
                log.warning(
                    "%s: token %r appears at ids %d and %d; as in bilm-tf the later id is used",
                    source,
                    word,
                    first[word],
                    i,
                )
            else:
                first[word] = i
            self._ids[word] = i
        missing = [t for t in SPECIAL_TOKENS if t not in self._ids]
        if missing:
            raise VocabularyError(
                f"{source}: lacks {', '.join(missing)}; a bilm-tf vocabulary needs <S>, </S> and <UNK> "
                "(`elmo vocab` writes them on the first three lines)"
            )
        self.bos = self._ids[BOS_TOKEN]
        self.eos = self._ids[EOS_TOKEN]
        self.unk = self._ids[UNK_TOKEN]

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read a vocabulary file (see the module notes for what is accepted)."""
        path = Path(path)
        data = read_bytes_capped(path, VOCAB_CAP, "vocabulary", VocabularyError)
        if data.startswith(b"\xef\xbb\xbf"):  # a byte order mark is not part of the first token
            data = data[3:]
        # bilm-tf iterates the file's lines; a final newline does not start another one.
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        words = []
        for number, raw in enumerate(lines, start=1):
            try:
                word = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise VocabularyError(f"{path}, line {number}: not UTF-8 ({e.reason})") from None
            if not word:
                raise VocabularyError(f"{path}, line {number}: empty line; expected one token a line")
            if len(word.split()) > 1:
                raise VocabularyError(
                    f"{path}, line {number}: {word[:60]!r} has whitespace inside; expected one token a "
                    "line (remove any count column)"
                )
            words.append(word)
        return cls(words, source=str(path))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary, one token a line, atomically (a temporary file, then a rename)."""
        write_vocab(self._words, path)

    @property
    def words(self) -> list[str]:
        """The tokens by id (a copy)."""
        return list(self._words)

    @property
    def size(self) -> int:
        """Number of ids (the softmax size, bilm-tf's ``n_tokens_vocab``)."""
        return len(self._words)

    def __len__(self) -> int:
        return len(self._words)

    def __contains__(self, word: object) -> bool:
        return word in self._ids

    def __repr__(self) -> str:
        return f"Vocabulary({self._source!r}, size={self.size})"

    def word_to_id(self, word: str) -> int:
        """The id of ``word``; the ``<UNK>`` id for a word not in the vocabulary."""
        return self._ids.get(word, self.unk)

    def id_to_word(self, index: int) -> str:
        """The token with id ``index``."""
        return self._words[index]

    def encode(self, tokens: Sequence[str] | str, reverse: bool = False) -> list[int]:
        """Ids of a sentence with its markers, as bilm-tf's ``Vocabulary.encode``.

        ``[bos] + ids + [eos]``, or with ``reverse=True`` ``[eos] + ids + [bos]``. Like
        bilm-tf, ``reverse`` does **not** reverse the tokens: bilm-tf reverses the token
        list first and then encodes it with ``reverse=True``, so the backward stream of
        ``w1 .. wn`` is ``encode([wn, .., w1], reverse=True)`` = ``[eos, wn .. w1, bos]``.
        A string is split on whitespace.
        """
        if isinstance(tokens, str):
            tokens = tokens.split()
        ids = [self._ids.get(t, self.unk) for t in tokens]
        if reverse:
            return [self.eos, *ids, self.bos]
        return [self.bos, *ids, self.eos]

    def encode_chars(
        self, tokens: Sequence[str] | str, max_chars: int = 50, reverse: bool = False
    ) -> np.ndarray:
        """Training character ids of a sentence with its markers, ``[len + 2, max_chars]`` int32.

        Rows follow :meth:`encode` (``reverse`` swaps the marker rows; it does not reverse
        the tokens). Like bilm-tf's ``encode_chars`` the character ids do not depend on the
        vocabulary: an out-of-vocabulary word keeps its spelling.
        """
        if isinstance(tokens, str):
            tokens = tokens.split()
        first, last = (EOS_TOKEN, BOS_TOKEN) if reverse else (BOS_TOKEN, EOS_TOKEN)
        rows = [word_to_char_ids(t, max_chars) for t in (first, *tokens, last)]
        return np.asarray(rows, dtype=np.int32)


# --------------------------------------------------------------------------- building
def token_counts(paths: Iterable[str | os.PathLike[str]]) -> Counter[str]:
    """Occurrences of every token in ``paths`` (one tokenized sentence a line).

    Streams the files line by line, so memory holds the counter, not the text. Raises
    :class:`elmo.errors.DataError` for no files, for a file holding ``<S>`` or
    ``</S>`` as a token (bilm-tf adds those markers itself; the error names the file and
    line) and for text that is not UTF-8.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = list(paths)
    if not files:
        raise DataError("no text files given to count tokens in")
    counts: Counter[str] = Counter()
    for path in files:
        for _, tokens in iter_lines(path):
            counts.update(tokens)
    return counts


def vocab_from_counts(counts: Counter[str], min_count: int = 1, max_size: int | None = None) -> list[str]:
    """``<S>``, ``</S>``, ``<UNK>``, then the tokens seen ``min_count`` times or more.

    The special tokens are never counted: a literal ``<UNK>`` in the text keeps its
    fixed place.

    Tokens are sorted by descending count; equal counts keep the order in which the
    tokens were first counted (first occurrence in the corpus, for :func:`token_counts`),
    so the result is deterministic. ``max_size`` caps the whole list, the three special
    tokens included (it is the softmax size, ``n_tokens_vocab``).
    """
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, found {min_count}")
    if max_size is not None and max_size < len(SPECIAL_TOKENS):
        raise ValueError(f"max_size must be at least 3 (the special tokens), found {max_size}")
    # sorted() is stable and a Counter iterates in first-insertion order.
    kept = sorted(
        (w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS),
        key=lambda w: -counts[w],
    )
    words = [*SPECIAL_TOKENS, *kept]
    return words if max_size is None else words[:max_size]


def build_vocab(
    paths: Iterable[str | os.PathLike[str]], min_count: int = 1, max_size: int | None = None
) -> list[str]:
    """A bilm-tf vocabulary (word list) for the text files ``paths``.

    ``<S>``, ``</S>``, ``<UNK>`` first, then the tokens by descending frequency, ties in
    order of first occurrence (files in the given order). See :func:`token_counts` for
    the errors; an empty corpus (no token at all) is an error too.
    """
    files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    counts = token_counts(files)
    if not counts:
        raise DataError(f"{', '.join(map(str, files[:3]))}{' ...' if len(files) > 3 else ''}: no tokens")
    return vocab_from_counts(counts, min_count=min_count, max_size=max_size)


def write_vocab(words: Sequence[str], path: str | os.PathLike[str]) -> None:
    """Write ``words`` as a vocabulary file, one token a line, atomically."""
    write_text_atomic(path, "".join(w + "\n" for w in words))
