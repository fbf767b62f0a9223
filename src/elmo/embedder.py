"""One-call embedding: sentences in, numpy arrays out, in input order.

Sentences are batched internally; in stateless mode each window of sentences is sorted
by length so that batches carry little padding (results do not depend on the batch, so
this is invisible). In stateful mode sentences are embedded in input order, as the
reference tools do, because the carried state makes results depend on the batching.

Each call keeps its own batches and buffers, so calls on one shared module may come from
many threads (the module's own calls are thread-safe, see :class:`elmo.ElmoModule`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from elmo.choices import LAYERS, Layers, check_choice
from elmo.config import ElmoConfig
from elmo.inputs import _as_str
from elmo.model import RaggedOutput, widen_token_layer

__all__ = [
    "LAYER_CHOICES",
    "WINDOW_BATCHES",
    "TokenEmbedder",
    "embed",
    "embed_iter",
    "split_outputs",
    "split_ragged",
]

LAYER_CHOICES = LAYERS


class TokenEmbedder(Protocol):
    """What embedding sentences needs of a model (:class:`elmo.ElmoModule` is one)."""

    @property
    def config(self) -> ElmoConfig: ...

    @property
    def stateful(self) -> bool: ...

    def embed_batch(self, batch: list[list[str]], layers: Layers = "all") -> list[np.ndarray]: ...


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


def split_ragged(
    out: RaggedOutput, layers: str, elmo: Callable[[], torch.Tensor] | None = None
) -> list[np.ndarray]:
    """Per-sentence arrays of one batch's unpadded layers (:class:`~elmo.model.RaggedOutput`),
    as :func:`embed` returns them for ``layers``; ``elmo`` gives the mixed layer ``[N, D]``
    for the choices that need it (``elmo``, ``default``). The same values as
    :func:`split_outputs` on padded outputs. The arrays are views of one array per batch."""
    if elmo is None and layers in ("elmo", "default"):
        raise ValueError(f"split_ragged: layers={layers!r} needs the mixed layer (elmo=)")
    lengths = out.lengths
    if not lengths:
        return []
    counts = torch.tensor(lengths, dtype=torch.long)
    if layers == "default":
        assert elmo is not None
        mixed = elmo()
        sentence = torch.repeat_interleave(torch.arange(len(lengths)), counts).to(mixed.device)
        sums = mixed.new_zeros(len(lengths), mixed.shape[1]).index_add_(0, sentence, mixed)
        data = (sums / counts.clamp(min=1).to(sums).unsqueeze(1)).detach().cpu().numpy()
        return [data[i] for i in range(len(lengths))]
    if layers == "all":
        # One gather into sentence-major order, [L, n, D] per sentence: no copy per sentence.
        full = out.full_width_layers()
        n_out, rows, width = len(full), out.layers[0].shape[0], full[0].shape[1]
        blocks = counts.repeat_interleave(n_out)  # (sentence, layer) blocks of n rows
        firsts = (torch.cumsum(counts, 0) - counts).unsqueeze(1) + torch.arange(n_out).unsqueeze(0) * rows
        within = torch.arange(int(blocks.sum())) - torch.repeat_interleave(
            torch.cumsum(blocks, 0) - blocks, blocks
        )
        index = torch.repeat_interleave(firsts.reshape(-1), blocks) + within
        stacked = torch.stack(full).view(n_out * rows, width)
        data = stacked.index_select(0, index.to(stacked.device)).detach().cpu().numpy()
        bounds = np.cumsum([n_out * n for n in lengths])[:-1]
        return [part.reshape(n_out, n, width) for part, n in zip(np.split(data, bounds), lengths)]
    if layers == "word_emb":
        flat = out.layers[0]
    elif layers == "elmo":
        assert elmo is not None
        flat = elmo()
    elif layers == "top":
        flat = out.layers[-1]
    else:  # average
        full = out.full_width_layers()
        flat = sum(full[1:], full[0]) / len(full)
    return np.split(flat.detach().cpu().numpy(), np.cumsum(lengths)[:-1])


def _batches_in_order(
    module: TokenEmbedder, sentences: Iterator[list[str]], layers: Layers, batch_size: int
) -> Iterator[np.ndarray]:
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
            for i, array in zip(rows, module.embed_batch([window[i] for i in rows], layers)):
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
