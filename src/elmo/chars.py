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


def sentence_to_char_ids(tokens: Sequence[str], max_chars: int = 50) -> torch.Tensor:
    """Character ids of one sentence, ``[len(tokens), max_chars]`` int64, no markers."""
    if not tokens:
        return torch.zeros((0, max_chars), dtype=torch.long)
    return torch.tensor([token_to_char_ids(t, max_chars) for t in tokens], dtype=torch.long)


def batch_to_char_ids(batch: Sequence[Sequence[str]], max_chars: int = 50) -> torch.Tensor:
    """Character ids of a batch of token lists, ``[B, T, max_chars]``, padded with 0.

    T is the longest sentence; the sentence markers are not added (the model adds them).
    """
    longest = max((len(s) for s in batch), default=0)
    out = torch.zeros((len(batch), longest, max_chars), dtype=torch.long)
    for row, tokens in enumerate(batch):
        if tokens:
            out[row, : len(tokens)] = sentence_to_char_ids(tokens, max_chars)
    return out
