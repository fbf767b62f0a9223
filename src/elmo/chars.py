"""Tokens to character ids, exactly as the released ELMo models expect them.

A token is its UTF-8 bytes (0-255), cut to ``max_characters_per_token - 2`` bytes
(possibly in the middle of a multi-byte character, as the reference does), framed by
begin-of-word and end-of-word and padded with the padding character. The sentence
markers are single pseudo-characters inside such a frame. Every id is then shifted by
+1 so that 0 can mean "no token" (batch padding); the model's character embedding has
a zero row for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "BOS_CHAR",
    "BOS_TOKEN",
    "BOW_CHAR",
    "EOS_CHAR",
    "EOS_TOKEN",
    "EOW_CHAR",
    "PAD_CHAR",
    "batch_to_char_ids",
    "sentence_to_char_ids",
    "token_to_char_ids",
]

# Raw ids, before the +1 shift.
BOS_CHAR = 256  # inside <S>
EOS_CHAR = 257  # inside </S>
BOW_CHAR = 258
EOW_CHAR = 259
PAD_CHAR = 260

BOS_TOKEN = "<S>"
EOS_TOKEN = "</S>"


def _marker_ids(marker: int, max_chars: int) -> tuple[int, ...]:
    ids = [PAD_CHAR + 1] * max_chars
    ids[0], ids[1], ids[2] = BOW_CHAR + 1, marker + 1, EOW_CHAR + 1
    return tuple(ids)


@lru_cache(maxsize=200_000)
def token_to_char_ids(token: str, max_chars: int = 50) -> tuple[int, ...]:
    """The ``max_chars`` character ids (+1 shifted, so all in 1..261) of one token.

    A token spelled exactly ``<S>`` or ``</S>`` gets the sentence-marker ids, as in the
    reference implementations.
    """
    if token == BOS_TOKEN:
        return _marker_ids(BOS_CHAR, max_chars)
    if token == EOS_TOKEN:
        return _marker_ids(EOS_CHAR, max_chars)
    # "ignore" only drops lone surrogates, which UTF-8 cannot encode.
    data = token.encode("utf-8", "ignore")[: max_chars - 2]
    ids = [PAD_CHAR + 1] * max_chars
    ids[0] = BOW_CHAR + 1
    for k, byte in enumerate(data, start=1):
        ids[k] = byte + 1
    ids[len(data) + 1] = EOW_CHAR + 1
    return tuple(ids)


def _places(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For items laid out group after group (``counts[g]`` items in group g): each item's
    group and its place within the group."""
    groups = np.repeat(np.arange(len(counts)), counts)
    return groups, np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def _char_id_rows(tokens: Sequence[str], max_chars: int) -> np.ndarray:
    """``[len(tokens), max_chars]`` int64: :func:`token_to_char_ids` of every token, built
    for all tokens at once (their bytes joined, then placed by index arithmetic)."""
    n = len(tokens)
    # "ignore" only drops lone surrogates, which UTF-8 cannot encode.
    encoded = [t.encode("utf-8", "ignore")[: max_chars - 2] for t in tokens]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
    ids = np.full((n, max_chars), PAD_CHAR + 1, dtype=np.int64)
    ids[:, 0] = BOW_CHAR + 1
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    if data.size:
        row, place = _places(lengths)
        ids[row, place + 1] = data.astype(np.int64) + 1
    ids[np.arange(n), lengths + 1] = EOW_CHAR + 1
    for i, token in enumerate(tokens):
        if token in _MARKERS:
            ids[i] = token_to_char_ids(token, max_chars)
    return ids


_MARKERS = frozenset((BOS_TOKEN, EOS_TOKEN))


def sentence_to_char_ids(tokens: Sequence[str], max_chars: int = 50) -> torch.Tensor:
    """Character ids of one sentence, ``[len(tokens), max_chars]`` int64, no markers."""
    return torch.from_numpy(_char_id_rows(list(tokens), max_chars))


def batch_to_char_ids(batch: Sequence[Sequence[str]], max_chars: int = 50) -> torch.Tensor:
    """Character ids of a batch of token lists, ``[B, T, max_chars]``, padded with 0.

    T is the longest sentence; the sentence markers are not added (the model adds them).
    """
    lengths = [len(s) for s in batch]
    longest = max(lengths, default=0)
    out = np.zeros((len(batch), longest, max_chars), dtype=np.int64)
    tokens = [t for s in batch for t in s]
    if tokens:
        rows, positions = _places(np.asarray(lengths, dtype=np.int64))
        out[rows, positions] = _char_id_rows(tokens, max_chars)
    return torch.from_numpy(out)
