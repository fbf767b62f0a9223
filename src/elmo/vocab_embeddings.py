"""Context-free token embeddings of a whole vocabulary, written to HDF5.

Each word's ``word_emb`` (character CNN, highway, projection; no LSTM, so no context)
depends only on its spelling, so it can be computed once per vocabulary entry. This is
what bilm-tf's ``dump_token_embeddings`` writes and what AllenNLP's
``ElmoTokenEmbedder(vocab_to_cache=...)`` computes: a file with a dataset ``embedding``
[V, P], row i for line i of the vocabulary. A word spelled ``<S>`` or ``</S>`` gets the
sentence-boundary character ids, hence the boundary embeddings, as in both references.

The vocabulary file is one token a line (bilm-tf's format). Lines are stripped of
surrounding whitespace; bilm-tf's ``!!!MAXTERMID`` marker line is skipped as bilm-tf
skips it. An empty line, or one with whitespace inside (a frequency column, say), is an
error naming the line. Duplicated tokens are kept: every line has its row, so row
numbers stay the line's position, which is how both references index the file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from elmo.atomic import atomic_path
from elmo.chars import token_to_char_ids
from elmo.errors import VocabEmbeddingsError
from elmo.files import VOCAB_CAP, read_bytes_capped
from elmo.model import MIN_ROWS, ElmoBiLM, TokenEncoder
from elmo.module import ElmoModule

__all__ = [
    "check_output",
    "iter_vocab_embeddings",
    "read_vocab",
    "vocab_embeddings",
    "write_vocab_embeddings",
]

# bilm-tf's vocabulary reader ignores this line (it marks the id range of old vocabularies).
_MAXTERMID = "!!!MAXTERMID"


def _bilm_of(model: Any) -> ElmoBiLM:
    if isinstance(model, ElmoModule):
        return model.bilm
    if isinstance(model, ElmoBiLM):
        return model
    # A training model (elmo.train.lm.TrainingBiLM) keeps its biLM as ``encoder``.
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, ElmoBiLM):
        return encoder
    raise TypeError(f"expected an ElmoModule or ElmoBiLM (e.g. from elmo.load), found {type(model).__name__}")


def iter_vocab_embeddings(
    model: ElmoModule | ElmoBiLM, words: Sequence[str], batch_size: int = 1024
) -> Iterator[np.ndarray]:
    """The ``word_emb`` of ``words``, one float32 array [<= batch_size, P] per batch, in order."""
    if batch_size < 1:
        raise ValueError(f"batch size must be a positive number of words, found {batch_size}")
    bilm = _bilm_of(model)
    encoder: TokenEncoder = bilm.token_encoder
    max_chars = bilm.config.char_cnn.max_characters_per_token
    device = encoder.proj_b.device
    for start in range(0, len(words), batch_size):
        batch = words[start : start + batch_size]
        # Inference character ids (+1 shifted); <S> and </S> become the boundary ids.
        ids = torch.tensor([token_to_char_ids(w, max_chars) for w in batch], dtype=torch.long)
        # Some CPU kernels round differently for row counts that are not a multiple of
        # MIN_ROWS; padding with empty tokens keeps every word's row independent of the
        # batch size and of its neighbours.
        pad = -len(batch) % MIN_ROWS
        if pad:
            ids = torch.cat([ids, ids.new_zeros(pad, max_chars)])
        with torch.no_grad():
            emb = encoder(ids.to(device))[: len(batch)]
        yield emb.float().cpu().numpy()


def vocab_embeddings(
    model: ElmoModule | ElmoBiLM, words: Sequence[str], batch_size: int = 1024
) -> np.ndarray:
    """Context-free token embeddings ``[len(words), P]`` float32 of every word.

    The same values as the ``word_emb`` output for that word anywhere in a sentence,
    and as AllenNLP's cached vocabulary embeddings.
    """
    bilm = _bilm_of(model)
    out = np.empty((len(words), bilm.config.lstm.projection_dim), dtype=np.float32)
    row = 0
    for emb in iter_vocab_embeddings(bilm, words, batch_size):
        out[row : row + len(emb)] = emb
        row += len(emb)
    return out


def read_vocab(path: str | os.PathLike[str]) -> list[str]:
    """The tokens of a vocabulary file, one a line, in file order (see the module notes).

    Raises :class:`VocabEmbeddingsError` naming the line for a line that is not UTF-8,
    empty, or holds more than one token, and for a file with no tokens.
    """
    path = Path(path)
    data = read_bytes_capped(path, VOCAB_CAP, "vocabulary", VocabEmbeddingsError)
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark is not part of the first token
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":  # the final newline does not start another line
        lines.pop()
    words: list[str] = []
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise VocabEmbeddingsError(f"{path}, line {number}: not UTF-8 ({e.reason})") from None
        word = text.strip()
        if not word:
            raise VocabEmbeddingsError(
                f"{path}, line {number}: empty line; the vocabulary must hold one token a line"
            )
        if len(word.split()) > 1:
            raise VocabEmbeddingsError(
                f"{path}, line {number}: {word[:60]!r} has whitespace inside; expected one token a "
                "line (remove any count column)"
            )
        if word != _MAXTERMID:
            words.append(word)
    if not words:
        raise VocabEmbeddingsError(f"{path}: the vocabulary holds no tokens")
    return words


def _duplicates(words: Sequence[str]) -> list[tuple[str, int, int]]:
    """(token, first row, repeated row) for every repeated token, 0-based rows."""
    first: dict[str, int] = {}
    repeats = []
    for row, word in enumerate(words):
        if word in first:
            repeats.append((word, first[word], row))
        else:
            first[word] = row
    return repeats


def write_vocab_embeddings(
    model: ElmoModule | ElmoBiLM,
    vocab_path: str | os.PathLike[str] | Sequence[str],
    out_path: str | os.PathLike[str],
    *,
    batch_size: int = 1024,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Embed every token of ``vocab_path`` (a file, or its words as read by
    :func:`read_vocab`) and write ``out_path`` (HDF5).

    The file holds ``embedding`` [V, P] float32 (row i = token i) and ``vocab`` [V]
    (UTF-8 strings, the tokens in row order), and the model's options as the JSON
    attribute ``options``. It is written under a temporary name, batch by batch (memory
    stays bounded by one batch), and renamed when complete, so ``out_path`` is never
    left half written. An existing ``out_path`` is refused unless ``overwrite``.
    Returns a summary: ``output``, ``words``, ``dim``, ``duplicates`` (list of
    (token, first row, repeated row)), ``seconds``.
    """
    t0 = time.monotonic()
    out = Path(out_path)
    check_output(out, overwrite)
    words = read_vocab(vocab_path) if isinstance(vocab_path, (str, os.PathLike)) else list(vocab_path)
    bilm = _bilm_of(model)
    dim = bilm.config.lstm.projection_dim
    from tqdm import tqdm

    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["options"] = json.dumps(bilm.config.to_dict())
        f.create_dataset("vocab", data=words, dtype=h5py.string_dtype("utf-8"))
        dataset = f.create_dataset("embedding", shape=(len(words), dim), dtype="float32")
        with tqdm(total=len(words), unit="word", desc="vocab embeddings", disable=quiet) as bar:
            row = 0
            for emb in iter_vocab_embeddings(bilm, words, batch_size):
                dataset[row : row + len(emb)] = emb
                row += len(emb)
                bar.update(len(emb))
    return {
        "output": str(out),
        "words": len(words),
        "dim": dim,
        "duplicates": _duplicates(words),
        "seconds": time.monotonic() - t0,
    }


def check_output(out_path: str | os.PathLike[str], overwrite: bool) -> None:
    """Raise :class:`VocabEmbeddingsError` for an output path that cannot be written as asked: a
    directory, an existing file without ``overwrite``, or a file in a missing directory."""
    out = Path(out_path)
    if out.is_dir():
        raise VocabEmbeddingsError(f"{out}: is a directory; expected an output file name")
    if out.exists() and not overwrite:
        raise VocabEmbeddingsError(f"{out}: already exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise VocabEmbeddingsError(f"{out}: the folder {out.parent} does not exist")
