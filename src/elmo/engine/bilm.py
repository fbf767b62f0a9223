"""``FastBiLM``: the biLM's inference, fast, with the plain model's inputs and outputs.

It takes what :class:`elmo.model.ElmoBiLM` takes (character ids ``[B, T, C]``, an
optional list of :class:`~elmo.model.LayerState`, ``keep_boundaries``) and returns the
same :class:`~elmo.model.BiLMOutput`, always float32. Its weights are derived from a
plain model, which stays the reference: when that model's parameters change (loading,
``.to(device)``, in-place edits), the engine notices and rebuilds them, and empties its
token cache.

Where the time goes, and what is done about it:

- Token encoder (char CNN, highway, projection): each distinct token of a batch is
  encoded once, and a bounded LRU cache (:class:`~elmo.engine.cache.TokenCache`) keeps
  the results across batches; the convolutions are unfolded into matrix products.
- LSTMs: sequences are packed (no step is spent on padding or on finished sentences),
  short sentences back to back in lanes beside the long ones (see
  :mod:`elmo.engine.recurrent`); each step's gates, input part and recurrent part
  together, are one product per direction over a contiguous range of rows, with the
  bias fused in.
- Products: on CPUs, oneDNN inner products on weights reordered once (see
  :mod:`elmo.engine.precision`).

Threads: one engine may serve calls from many threads at once, and they give exactly
what the same calls give in sequence (int8: see :class:`FastBiLM`). What the engine keeps
between calls is shared and locked: the derived weights (rebuilt under a lock, then only
read: oneDNN's reordered and the quantized copies included) and the token cache (lookup
with gather, and store, each under the cache's lock; see :mod:`elmo.engine.cache`).
Everything a forward pass writes (the packed batch, the LSTM workspaces, the encoder's
outputs) is made per call. The token encoder and the LSTMs run outside any lock, so
threads compute in parallel.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import Tensor

from elmo.engine.cache import TokenCache
from elmo.engine.encoder import FastTokenEncoder
from elmo.engine.precision import PRECISIONS, activation_dtype, native_bfloat16
from elmo.engine.recurrent import LayerWeights, PackedBatch, run_layer
from elmo.model import BiLMOutput, ElmoBiLM, LayerState, LSTMLayer, RaggedOutput, has_skip_connection

__all__ = ["DEFAULT_CACHE_SIZE", "FastBiLM"]

# Distinct tokens kept by default: 32,768 rows of P floats (64 MB for the original model,
# 16 MB for the small one). Covers the frequent vocabulary of most corpora.
DEFAULT_CACHE_SIZE = 32768


class _Weights:
    """All of the engine's weights for one precision, derived from a plain model."""

    def __init__(self, plain: ElmoBiLM, precision: str) -> None:
        self.encoder = FastTokenEncoder(plain.token_encoder, precision)
        self.layers = [
            LayerWeights(cast(LSTMLayer, f), cast(LSTMLayer, b), precision)
            for f, b in zip(plain.forward_layers, plain.backward_layers)
        ]


class FastBiLM:
    """Fast inference for an :class:`~elmo.model.ElmoBiLM` (no gradients).

    ``precision``: ``"float32"`` (within 1e-5 of the plain model), ``"bfloat16"`` or
    ``"int8"`` (dynamic quantization of the large products, CPU only); outputs are
    float32 in every precision. ``cache_size``: distinct tokens whose representations
    are kept (0 disables the cache).

    Thread-safe: concurrent calls give what sequential calls give. Locked: the weight
    sync (:meth:`_sync`, under the engine's lock) and the token cache (under its own
    lock, held briefly for each lookup and each store); per call: every workspace. In
    int8 a token's cached row is what its first encoding gave, and dynamic quantization
    makes that depend on the tokens encoded with it: with a cache, int8 results depend
    on which calls came first (within int8 rounding), whether calls are sequential or not.
    """

    def __init__(
        self, plain: ElmoBiLM, precision: str = "float32", cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"dtype: expected one of {', '.join(PRECISIONS)}, found {precision!r}")
        self.plain = plain
        self.precision = precision
        self.dtype = activation_dtype(precision)
        self.cache = TokenCache(cache_size)
        # Token rows looked up (sentence markers included, once per call); with
        # ``cache.misses`` (rows encoded) this says how much encoder work the cache saves.
        # Counted under the cache's lock.
        self.tokens_seen = 0
        # The derived weights and the parameter signature they were made from: replaced
        # together under _lock, only read by calls.
        self._lock = threading.Lock()
        self._weights: _Weights | None = None
        self._signature: tuple | None = None

    @property
    def config(self):
        return self.plain.config

    def __getstate__(self) -> dict:
        """For copies and pickles: the derived state (the weights in the engine's formats,
        some of them opaque oneDNN tensors, and the token cache) is left out and rebuilt
        from the plain model at the next call."""
        state = self.__dict__.copy()
        state["_weights"] = state["_signature"] = None
        state["cache"] = TokenCache(self.cache.capacity)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _sync(self) -> _Weights:
        """The engine's weights, rebuilt if the plain model's parameters changed.

        Under the engine's lock: concurrent first calls build the weights once, and a
        rebuild empties the token cache before any call can use the new weights.
        """
        signature = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in self.plain.parameters())
        with self._lock:
            if self._weights is None or signature != self._signature:
                self._weights = None  # free the old copies before making new ones
                # Calls still running on the old weights store nothing from now on (their
                # check in _tokens fails), so the emptied cache gets the new weights' rows only.
                self.cache.clear()
                device = self.plain.token_encoder.proj_b.device
                if self.precision == "bfloat16" and not native_bfloat16(device):
                    warnings.warn(
                        f"dtype='bfloat16': this {device.type.upper()} has no bfloat16 matrix units "
                        "(AVX-512 BF16, AMX); its bfloat16 products are emulated and slower than float32",
                        stacklevel=4,
                    )
                with torch.no_grad():
                    self._weights = _Weights(self.plain, self.precision)
                self._signature = signature
            return self._weights

    def __call__(
        self, char_ids: Tensor, state: list[LayerState] | None = None, keep_boundaries: bool = False
    ) -> BiLMOutput:
        # Normal tensors even when called under torch.inference_mode(): the engine keeps
        # tensors between calls (weights, cache) and updates them in place, which
        # inference tensors do not allow outside inference mode.
        with torch.inference_mode(False), torch.no_grad():
            return self._forward(char_ids, state, keep_boundaries)

    # ------------------------------------------------------------------ internals
    def _tokens(self, weights: _Weights, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Representations of the distinct rows of ``tokens`` [N, C] and each row's index.

        Returns ``table`` [U, P] (activation dtype) and ``inverse`` [N] (long, device).
        Thread-safe: the cache is read (lookup and gather together) and written under its
        lock, and only while ``weights`` are still the engine's current ones; the encoder
        runs outside the lock.
        """
        device = tokens.device
        host = tokens.cpu().numpy().astype(np.uint16)
        rows = np.ascontiguousarray(host).view(np.dtype((np.void, host.shape[1] * 2))).ravel()
        unique, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
        keys = [u.tobytes() for u in unique]
        cache = self.cache
        with cache.lock:
            self.tokens_seen += tokens.shape[0]
            if self._weights is weights:
                hit_pos, hit_rows, miss_pos = cache.fetch(keys)
            else:  # the weights were rebuilt since this call began: the cache holds others
                hit_pos, hit_rows, miss_pos = [], None, list(range(len(keys)))
        encoder = weights.encoder
        table = torch.empty(len(keys), encoder.width, dtype=encoder.dtype, device=device)
        if hit_rows is not None:
            table[torch.tensor(hit_pos, device=device)] = hit_rows
        if miss_pos:
            miss_rows = torch.from_numpy(first[miss_pos]).to(device)
            encoded = encoder(tokens.index_select(0, miss_rows))
            table[torch.tensor(miss_pos, device=device)] = encoded
            with cache.lock:
                if self._weights is weights:
                    cache.store([keys[i] for i in miss_pos], encoded)
        return table, torch.from_numpy(inverse.reshape(-1).astype(np.int64)).to(device)

    def _empty(self, device: torch.device, steps: int, keep_boundaries: bool) -> BiLMOutput:
        """The output for a batch of no rows."""
        proj = self.config.lstm.projection_dim
        width = steps + 2 if keep_boundaries else steps
        layers = [torch.zeros(0, width, proj, device=device)]
        layers += [torch.zeros(0, width, 2 * proj, device=device) for _ in self.plain.forward_layers]
        return BiLMOutput(
            layers=layers,
            mask=torch.zeros(0, width, dtype=torch.bool, device=device),
            state=self.plain.zero_state(0),
        )

    def ragged(
        self, tokens: Tensor, lengths: list[int], state: list[LayerState] | None = None
    ) -> RaggedOutput:
        """The layers of sentences given as their tokens' character ids one after another
        (``tokens`` [N, C], sentence b's ``lengths[b]`` tokens in order): each layer
        ``[N, D]`` with the tokens in the same order, no padding anywhere (the sentence
        markers' positions left out). The same values as :meth:`__call__` gives at the
        real positions, without building, filling or reading any padded tensor."""
        with torch.inference_mode(False), torch.no_grad():
            if tokens.shape[0] != sum(lengths) or any(n < 0 for n in lengths):
                raise ValueError(
                    f"tokens: expected {sum(lengths)} rows (the sum of lengths), found {tokens.shape[0]}"
                )
            device = self.plain.token_encoder.proj_b.device
            tokens = tokens.to(device)
            if (tokens == 0).all(dim=1).any():
                raise ValueError(
                    "tokens: a token's character ids are all zero (padding), expected a real token"
                )
            if not lengths:
                empty = self._empty(device, 0, keep_boundaries=False)
                layers = [layer.view(0, layer.shape[-1]) for layer in empty.layers]
                return RaggedOutput(layers=layers, lengths=[], state=empty.state)
            run = self._run(tokens, lengths, max(lengths), state, device)
            # The real positions, sentence after sentence.
            layers = run.gather([table[:, 1:-1][run.mask] for table in (run.index, *run.positions)])
            return RaggedOutput(layers=layers, lengths=list(lengths), state=run.final)

    def _run(
        self,
        tokens: Tensor,
        lengths: list[int],
        steps: int,
        state: list[LayerState] | None,
        device: torch.device,
    ) -> _Run:
        """The biLSTM over sentences given as their tokens' character ids one after another
        (``tokens`` [N, C]) and their ``lengths`` (at least one sentence); the per-position
        tables are ``steps`` (at least the longest length) plus the two markers wide."""
        weights = self._sync()
        plain = self.plain
        batch = len(lengths)
        proj = self.config.lstm.projection_dim
        lengths_t = torch.tensor(lengths, dtype=torch.long, device=device)
        mask = torch.arange(steps, device=device) < lengths_t.unsqueeze(1)
        markers = plain._marker_ids.to(device)

        # Distinct tokens (sentence markers included) and their representations.
        table, inverse = self._tokens(weights, torch.cat([tokens, markers]))
        n_tok = tokens.shape[0]
        bos, eos = inverse[n_tok], inverse[n_tok + 1]
        zero_row = table.shape[0]
        table = torch.cat([table, table.new_zeros(1, proj)])  # index zero_row: padding

        # Table index of every position of <S> w_1 .. w_n </S>, per original row.
        width = steps + 2
        index = torch.full((batch, width), zero_row, dtype=torch.long, device=device)
        index[:, 1 : steps + 1][mask] = inverse[:n_tok]
        index[:, 0] = bos
        index.scatter_(1, (lengths_t + 1).unsqueeze(1), eos.expand(batch, 1).contiguous())

        packed = PackedBatch.build([n + 2 for n in lengths], device)
        positions = packed.positions(width, device)
        fwd_tokens, bwd_tokens = packed.gather_order(index, positions)
        # The first layer's packed input: each packed row's token representation.
        layer_input = torch.stack([table.index_select(0, fwd_tokens), table.index_select(0, bwd_tokens)])

        lstm = self.config.lstm
        outputs: list[Tensor] = []
        final: list[LayerState] = []
        for k, layer in enumerate(weights.layers):
            h0 = c0 = None
            if state is not None:
                s = state[k]
                h0 = torch.stack([s.forward_h, s.backward_h]).to(device)
                c0 = torch.stack([s.forward_c, s.backward_c]).to(device)
            out, h_last, c_last = run_layer(layer, packed, layer_input, h0, c0, self.dtype)
            if has_skip_connection(lstm, k):
                out[:, : packed.total] += layer_input
            final.append(LayerState(h_last[0], c_last[0], h_last[1], c_last[1]))
            outputs.append(out)
            layer_input = out[:, : packed.total]
        return _Run(table, zero_row, index, mask, packed, positions, outputs, final)

    def _forward(self, char_ids: Tensor, state: list[LayerState] | None, keep_boundaries: bool) -> BiLMOutput:
        device = self.plain.token_encoder.proj_b.device
        char_ids = char_ids.to(device)
        batch, steps, _ = char_ids.shape
        mask = (char_ids > 0).any(dim=2)
        lengths_t = mask.sum(dim=1)
        if not torch.equal(mask, torch.arange(steps, device=device) < lengths_t.unsqueeze(1)):
            raise ValueError(
                "character ids: padding tokens (all zero) must come after the real tokens of a row"
            )
        if batch == 0:
            return self._empty(device, steps, keep_boundaries)
        run = self._run(char_ids[mask], lengths_t.tolist(), steps, state, device)
        packed = run.packed

        # Unpack: original row order, positions in reading order, padding exactly zero.
        width = steps + 2
        if keep_boundaries:
            keep = torch.arange(width, device=device) < (lengths_t + 2).unsqueeze(1)
            first, last = 0, width
        else:
            keep = mask
            first, last = 1, steps + 1
        # Every position of the rows, those not kept pointing at the zero rows.
        indices = [
            torch.where(keep, table[:, first:last], zero)
            for table, zero in zip((run.index, *run.positions), (run.zero_row, packed.total, packed.total))
        ]
        layers = [layer.view(batch, last - first, layer.shape[-1]) for layer in run.gather(indices)]
        return BiLMOutput(layers=layers, mask=keep, state=run.final)


@dataclass
class _Run:
    """What :meth:`FastBiLM._run` leaves for unpacking: the token table (row ``zero_row``
    is zero), each row's table index per position ``[B, steps + 2]`` (markers included),
    the real tokens' ``mask`` [B, steps], the packing and its positions, each layer's
    packed outputs, and the final states."""

    table: Tensor
    zero_row: int
    index: Tensor
    mask: Tensor
    packed: PackedBatch
    positions: tuple[Tensor, Tensor]
    outputs: list[Tensor]
    final: list[LayerState]

    def gather(self, indices: list[Tensor]) -> list[Tensor]:
        """The layers (float32) at the positions picked by ``indices``: the table index, the
        forward and the backward packed index of each (any shape, the same for the three);
        ``[M, P]`` then ``[M, 2P]`` per LSTM layer, M positions in the indices' order. Each
        position's forward and backward rows come side by side from one gather of both
        directions' packed outputs seen as one ``[2 (total + 1), P]`` table (row ``total``
        of each direction is zero)."""
        word, fwd, bwd = (i.reshape(-1) for i in indices)
        layers = [self.table.index_select(0, word).float()]
        total = self.packed.total
        both = torch.stack([fwd, bwd + (total + 1)], dim=-1).reshape(-1)
        for out in self.outputs:
            width = out.shape[-1]
            pairs = out.reshape(2 * (total + 1), width).index_select(0, both)
            layers.append(pairs.float().view(-1, 2 * width))
        return layers
