"""One-call embedding: sentences in, numpy arrays out, in input order.

Sentences are batched internally; in stateless mode each window of sentences is sorted
by length so that batches carry little padding (results do not depend on the batch, so
this is invisible). In stateful mode sentences are embedded in input order, as the
reference tools do, because the carried state makes results depend on the batching.

Each call keeps its own batches and buffers, so calls on one shared module may come from
many threads (the module's own calls are thread-safe, see :class:`elmo.ElmoModule`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from elmo.choices import LAYERS, Layers, check_choice
from elmo.config import ElmoConfig
from elmo.inputs import _as_str
from elmo.model import widen_token_layer

__all__ = ["LAYER_CHOICES", "WINDOW_BATCHES", "TokenEmbedder", "embed", "embed_iter", "split_outputs"]

LAYER_CHOICES = LAYERS


class TokenEmbedder(Protocol):
    """What embedding sentences needs of a model (:class:`elmo.ElmoModule` is one)."""

    @property
    def config(self) -> ElmoConfig: ...

    @property
    def stateful(self) -> bool: ...

    def embed_tokens(self, batch: list[list[str]]) -> dict[str, torch.Tensor]: ...


# Batches of sentences sorted together by length (a window); bounds the memory of the
# reordering buffer. `elmo embed-corpus` cuts its shards at whole windows, so that its
# batches are the same as `elmo embed`'s.
WINDOW_BATCHES = 16


def _as_tokens(sentence: Any, index: int) -> list[str]:
    if isinstance(sentence, (str, bytes)):
        return _as_str(sentence, f"sentences[{index}]").split()
    if isinstance(sentence, (list, tuple, np.ndarray)):
        return [_as_str(t, f"sentences[{index}][{k}]") for k, t in enumerate(sentence)]
    raise TypeError(
        f"sentences[{index}]: expected a string or a list of token strings, found {type(sentence).__name__}"
    )


def _check_layers(layers: str) -> None:
    check_choice("layers", layers, LAYERS)


def split_outputs(out: dict[str, torch.Tensor], layers: str, n_layers: int) -> list[np.ndarray]:
    """Per-sentence arrays (padding removed) of one batch's outputs (:meth:`ElmoModule.outputs`),
    as :func:`embed` returns them for ``layers``; also used by ``elmo serve``'s batcher."""
    lengths = out["mask"].sum(dim=1).tolist()
    if layers == "default":
        data = out["default"].detach().cpu().numpy()
        return [data[i] for i in range(len(lengths))]
    word = out["word_emb"]
    if layers == "word_emb":
        stacked = word
    elif layers == "elmo":
        stacked = out["elmo"]
    elif layers == "top":
        stacked = out[f"lstm_outputs{n_layers}"]
    else:
        all_layers = [widen_token_layer(word)] + [out[f"lstm_outputs{k}"] for k in range(1, n_layers + 1)]
        if layers == "average":
            stacked = sum(all_layers[1:], all_layers[0]) / len(all_layers)
        else:
            stacked = torch.stack(all_layers, dim=1)  # [B, L, T, D]
    data = stacked.detach().cpu().numpy()
    if layers == "all":
        return [np.ascontiguousarray(data[i, :, :n]) for i, n in enumerate(lengths)]
    return [np.ascontiguousarray(data[i, :n]) for i, n in enumerate(lengths)]


def _batches_in_order(
    module: TokenEmbedder, sentences: Iterator[list[str]], layers: str, batch_size: int
) -> Iterator[np.ndarray]:
    n_layers = module.config.lstm.n_layers
    sort = not module.stateful
    window_size = batch_size * WINDOW_BATCHES if sort else batch_size
    while True:
        window = [s for _, s in zip(range(window_size), sentences)]
        if not window:
            return
        order = (
            sorted(range(len(window)), key=lambda i: -len(window[i])) if sort else list(range(len(window)))
        )
        results: list[np.ndarray | None] = [None] * len(window)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            with torch.no_grad():
                out = module.embed_tokens([window[i] for i in rows])
            for i, array in zip(rows, split_outputs(out, layers, n_layers)):
                results[i] = array
        yield from results  # type: ignore[misc]


def embed_iter(
    module: TokenEmbedder,
    sentences: Iterable[Any],
    layers: Layers = "all",
    batch_size: int = 64,
) -> Iterator[np.ndarray]:
    """Like :func:`embed`, but lazily: reads and yields as it goes, with bounded memory."""
    _check_layers(layers)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, found {batch_size!r}")
    tokens = (_as_tokens(s, i) for i, s in enumerate(sentences))
    return _batches_in_order(module, tokens, layers, batch_size)


def embed(
    module: TokenEmbedder,
    sentences: Sequence[Any],
    layers: Layers = "all",
    batch_size: int = 64,
    progress: bool = False,
) -> list[np.ndarray]:
    """Embed sentences (strings or token lists) and return one float32 array each.

    ``layers``: ``"all"`` -> ``[L, n, D]`` (layer 0 is ``word_emb`` duplicated to D, as
    AllenNLP), ``"top"`` / ``"average"`` / ``"elmo"`` -> ``[n, D]``, ``"word_emb"`` ->
    ``[n, P]``, ``"default"`` -> ``[D]``. Arrays come back in input order.
    """
    if isinstance(sentences, (str, bytes)) or sentences is None:
        raise TypeError(
            f"sentences: expected a list of sentences, found {type(sentences).__name__}; "
            "wrap a single sentence in a list"
        )
    sentences = list(sentences)
    arrays: Iterable[np.ndarray] = embed_iter(module, sentences, layers, batch_size)
    if progress:
        from tqdm.auto import tqdm

        arrays = tqdm(arrays, total=len(sentences), unit="sent", desc="embedding")
    return list(arrays)
