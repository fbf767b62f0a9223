"""Checking and normalising the two input signatures of the TF Hub module.

``default``: a list of sentence strings, split on the space character as the hub module
splits them (TensorFlow's ``tf.string_split`` with its default delimiter ``" "``): tabs,
newlines and no-break spaces stay inside tokens, and runs of spaces give no empty tokens.
``tokens``: a list of token lists (ragged, or padded with ``""`` and given
``sequence_len``). Both become a list of token lists; malformed calls raise
``TypeError`` (wrong kinds) or ``ValueError`` (wrong values) saying what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["padded_width", "split_sentences", "tokens_to_lists"]


def _as_str(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{where}: bytes are not valid UTF-8 ({e.reason} at byte {e.start})") from None
    raise TypeError(f"{where}: expected a string, found {type(value).__name__} {value!r:.60}")


def _as_list(value: Any, what: str) -> list[Any]:
    if value is None:
        raise TypeError(f"{what}: expected a list, found None")
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{what}: expected a list, found a single {type(value).__name__} "
            f"{value!r:.60}; wrap it in a list to embed one sentence"
        )
    if isinstance(value, np.ndarray):
        return list(value)
    if isinstance(value, Sequence):
        return list(value)
    raise TypeError(f"{what}: expected a list, found {type(value).__name__}")


def split_sentences(sentences: Any) -> list[list[str]]:
    """The ``default`` signature: sentence strings to token lists, split on ``" "`` only
    (as the hub module: other whitespace is part of a token). Runs of spaces collapse; an
    empty string or one of spaces is a sentence of zero tokens.
    """
    items = _as_list(sentences, "sentences")
    out = []
    for i, s in enumerate(items):
        if isinstance(s, (list, tuple, np.ndarray)):
            raise TypeError(
                f"sentences[{i}]: expected a string, found a {type(s).__name__}; "
                "pass token lists as tokens=[[...], ...]"
            )
        out.append([t for t in _as_str(s, f"sentences[{i}]").split(" ") if t])
    return out


def _lengths(sequence_len: Any, batch: int) -> list[int]:
    if isinstance(sequence_len, torch.Tensor):
        sequence_len = sequence_len.tolist()
    values = _as_list(sequence_len, "sequence_len")
    if len(values) != batch:
        raise ValueError(
            f"sequence_len: expected {batch} lengths (one per row of tokens), found {len(values)}"
        )
    lengths = []
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"sequence_len[{i}]: expected an integer, found {type(v).__name__} {v!r:.40}")
        if v < 0:
            raise ValueError(f"sequence_len[{i}]: expected a length >= 0, found {int(v)}")
        lengths.append(int(v))
    return lengths


def tokens_to_lists(tokens: Any, sequence_len: Any = None) -> list[list[str]]:
    """The ``tokens`` signature: rows of token strings to token lists.

    With ``sequence_len``, row b keeps its first ``sequence_len[b]`` tokens (which must
    exist) and the rest is padding. Without it, trailing ``""`` entries are padding.
    A ``""`` inside a row's length is embedded as an empty word.
    """
    rows = _as_list(tokens, "tokens")
    lengths = None if sequence_len is None else _lengths(sequence_len, len(rows))
    out = []
    for b, row in enumerate(rows):
        if isinstance(row, (str, bytes)):
            raise TypeError(
                f"tokens[{b}]: expected a list of token strings, found a {type(row).__name__}; "
                "tokens must be nested: [[token, ...], ...] (pass sentence strings positionally)"
            )
        row = _as_list(row, f"tokens[{b}]")
        words = [_as_str(t, f"tokens[{b}][{i}]") for i, t in enumerate(row)]
        if lengths is not None:
            if lengths[b] > len(words):
                raise ValueError(
                    f"sequence_len[{b}]: {lengths[b]} is longer than row {b} of tokens ({len(words)} entries)"
                )
            words = words[: lengths[b]]
        else:
            while words and words[-1] == "":
                words.pop()
        out.append(words)
    return out


def padded_width(tokens: Any) -> int:
    """The width of a padded ``tokens`` input (its longest row, padding included): the time
    dimension of the hub module's outputs when ``sequence_len`` is given."""
    if isinstance(tokens, (np.ndarray, torch.Tensor)) and tokens.ndim == 2:
        return int(tokens.shape[1])
    return max((len(_as_list(row, "tokens row")) for row in _as_list(tokens, "tokens")), default=0)
